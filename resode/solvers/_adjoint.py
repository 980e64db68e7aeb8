"""How gradients flow through a fixed point: adjoint strategies and the one custom VJP.

`solve_fixed_point` is the primitive the rest of resode builds on: the implicit Runge--Kutta
stages call it, and so does `resode.fixed_point`. The map is closure-converted first, so arrays it
closes over (weights, the stage's base point, the step size) receive gradients like `args` does.
"""

import abc
import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
from jaxtyping import Array

from .. import _tree
from .._custom_types import Args, PyTree
from ._iterate import check_map, iterate, residual_test, resolve_tol
from ._linear import linear_solve
from ._solution import FixedPointSolution
from ._solvers import AbstractFixedPointSolver, Newton


class AbstractAdjoint(eqx.Module):
    """How the gradient of a fixed-point solve is computed (a strategy object)."""

    @abc.abstractmethod
    def solve(
        self,
        solver: AbstractFixedPointSolver,
        fn,
        z0: PyTree,
        args: Args,
        tol: float,
        max_steps: int,
        probe: Array | None,
    ) -> FixedPointSolution:
        """Run `solver` and return a solution whose `value` carries this adjoint's gradient.

        `fn` is already closure-converted; `z0` receives no gradient. `probe` is the optional
        backward-statistics probe (see [`backward_probe`][]); adjoints without a backward solve
        give it a zero cotangent.
        """


def _stop(tree: PyTree) -> PyTree:
    return jtu.tree_map(lambda x: jax.lax.stop_gradient(x) if eqx.is_inexact_array(x) else x, tree)


def _straight_through(z_star: PyTree, phi: PyTree) -> PyTree:
    """Value z_star exactly, gradient that of phi: ``z* + (phi - stop_gradient(phi))``."""
    return jtu.tree_map(lambda z, p: z + (p - jax.lax.stop_gradient(p)), z_star, phi)


def _forward_only(solver, fn, z0, args, tol, max_steps) -> FixedPointSolution:
    return iterate(solver, _stop(fn), z0, _stop(args), tol=tol, max_steps=max_steps)


class JFB(AbstractAdjoint):
    r"""Jacobian-free backpropagation: the gradient of one application of f at the solution.

    The backward pass differentiates $f(z^*, \theta)$ with $z^*$ held constant, i.e. it drops
    the $(I - J)^{-1}$ factor of the exact gradient. Cheap (one VJP) and a descent direction for
    contractive layers (Fung et al., 2022). The returned value is exactly $z^*$.
    """

    def solve(self, solver, fn, z0, args, tol, max_steps, probe):
        sol = _forward_only(solver, fn, z0, args, tol, max_steps)
        value = _straight_through(sol.value, fn(sol.value, args))
        return eqx.tree_at(lambda s: s.value, sol, value)


class Phantom(AbstractAdjoint):
    r"""Phantom gradients: backpropagate through `steps` damped iterations started at $z^*$.

    $z_{j+1} = (1 - \lambda) z_j + \lambda f(z_j)$ for $j < k$ from $z_0 = z^*$ (held constant);
    the gradient is that of $z_k$ (Geng et al., 2021). Approaches the exact gradient as `steps`
    grows for a contractive map; memory grows with `steps`, not with the forward iterations. The
    returned value is exactly $z^*$.

    **Arguments:** `steps` (k, default 5), `damping` ($\lambda$ in (0, 1], default 1).
    """

    steps: int = eqx.field(default=5, static=True)
    damping: float = eqx.field(default=1.0, static=True)

    def __check_init__(self):
        if not (isinstance(self.steps, int) and self.steps >= 1):
            raise ValueError(f"Phantom: `steps` must be an integer >= 1, got {self.steps!r}.")
        if not 0.0 < self.damping <= 1.0:
            raise ValueError(f"Phantom: `damping` must be in (0, 1], got {self.damping!r}.")

    def solve(self, solver, fn, z0, args, tol, max_steps, probe):
        sol = _forward_only(solver, fn, z0, args, tol, max_steps)
        z = sol.value
        for _ in range(self.steps):
            fz = fn(z, args)
            z = fz if self.damping == 1.0 else _tree.axpy(self.damping, _tree.sub(fz, z), z)
        return eqx.tree_at(lambda s: s.value, sol, _straight_through(sol.value, z))


class Unrolled(AbstractAdjoint):
    """Backpropagation through every forward iteration (the reference and baseline).

    The solve runs as a scan of exactly `max_steps` iterations (finished ones leave the state
    unchanged) and autodiff stores all of them: memory grows with `max_steps`. Use it to check the
    other adjoints, not to train. Newton's Krylov solves go through lineax's GMRES here (it is
    differentiable), unless Newton was given another linear solver.
    """

    def solve(self, solver, fn, z0, args, tol, max_steps, probe):
        if isinstance(solver, Newton) and solver.linear_solver is None:
            # Autodiff cannot go through resode's GMRES (a while loop); lineax's linear_solve
            # carries its own derivative rule. With the unit-norm right-hand side of
            # `linear_solve`, rtol=0, atol=tol and the 2-norm give the same test ||r|| <= tol ||b||.
            gmres = lx.GMRES(rtol=0.0, atol=solver.linear_rtol or tol, norm=_tree.norm)
            solver = dataclasses.replace(solver, linear_solver=gmres)
        return iterate(solver, fn, z0, args, tol=tol, max_steps=max_steps, differentiable=True)


class ImplicitAdjoint(AbstractAdjoint):
    r"""Exact gradients by the implicit function theorem, independent of the forward iterations.

    At the solution $z^* = f(z^*, \theta)$ the backward pass solves $u = \bar z + J^\top u$
    ($J = \partial f / \partial z$ at $z^*$, applied matrix-free by vector-Jacobian products) and
    returns $(\partial f/\partial\theta)^\top u$. Only $z^*$ is stored, so backward memory does
    not grow with the number of forward iterations.

    **Arguments:**

    - `solver`: how to solve for $u$.
        - `None` (default): mirror the forward solve. After Picard, Anderson or Broyden the same
          solver object (same options) iterates $u \leftarrow \bar z + J^\top u$: $J^\top$ has
          the spectrum of $J$, so what converged forward converges backward, at one VJP per step.
          After Newton (the default for implicit Runge--Kutta stages, which may be stiff), a
          Krylov solve of $(I - J^\top) u = \bar z$ with Newton's own linear solver (GMRES
          unless Newton was given another).
        - A fixed-point solver object (`Picard()`, `Anderson()`, ...): that iteration.
        - A lineax solver (e.g. ``lx.GMRES(rtol, atol)``): used as it is on $(I - J^\top)$.
    - `tol`: relative tolerance of that solve; `None` uses the forward solve's tolerance.
    - `max_steps`: iteration bound of that solve; `None` uses the forward solve's.

    Whether the backward solve converged is observable through [`backward_probe`][].
    """

    solver: AbstractFixedPointSolver | lx.AbstractLinearSolver | None = eqx.field(
        default=None, static=True
    )
    tol: float | None = eqx.field(default=None, static=True)
    max_steps: int | None = eqx.field(default=None, static=True)

    def solve(self, solver, fn, z0, args, tol, max_steps, probe):
        sol = _forward_only(solver, fn, z0, args, tol, max_steps)
        z_star = sol.value
        # One differentiable application of f at z* (value z* exactly): autodiff turns a
        # cotangent u into (df/dtheta)^T u through it, and the identity below turns the incoming
        # cotangent into u = (I - J^T)^{-1} zbar. Under vmap the parameter gradient is then one
        # batched product over the examples, where a custom VJP returning per-example parameter
        # cotangents made JAX materialise and sum one (64 x 64) outer product per example (3.4 ms
        # of a 4 ms forward+backward on a batch of 256).
        # Rematerialised: the backward pass recomputes f at z* instead of keeping its
        # intermediates, so a stack of implicit steps stores only each step's z* and inputs
        # (training memory of a 64-step backward-Euler stack, batch 256: 42.0 -> 26.0 MiB).
        # prevent_cse=False lets XLA merge the recomputation with the backward's own evaluation
        # of f at z* where no loop separates them: a single DEQ's program keeps its FLOP count.
        y = _straight_through(z_star, _apply_remat(fn, z_star, args))
        frozen = (_stop(fn), _stop(args), z_star)
        value = _adjoint_identity((y, probe), frozen, solver, self, tol, max_steps)
        return eqx.tree_at(lambda s: s.value, sol, value)

    def solve_adjoint(self, vjp_z, cotangent: PyTree, forward_solver, tol: float, max_steps: int):
        """Solve ``u = cotangent + J^T u`` given ``vjp_z(u) = J^T u``.

        **Returns:** ``(u, num_steps, relative_residual, converged)``; the residual is that of
        the fixed-point form, ``||cotangent + J^T u - u|| / ||cotangent + J^T u||``, and
        `converged` says whether it met the tolerance.
        """
        tol = tol if self.tol is None else self.tol
        max_steps = max_steps if self.max_steps is None else self.max_steps
        method = self.solver
        if method is None:
            method = (
                forward_solver.linear_solver
                if isinstance(forward_solver, Newton)
                else forward_solver
            )
        adjoint_map = lambda u: jtu.tree_map(jnp.add, cotangent, vjp_z(u))
        if isinstance(method, AbstractFixedPointSolver):
            sol = iterate(
                method, lambda u, _: adjoint_map(u), cotangent, None, tol=tol, max_steps=max_steps
            )
            return sol.value, sol.num_steps, sol.residual, sol.converged
        u, steps = linear_solve(
            lambda u: jtu.tree_map(jnp.subtract, u, vjp_z(u)),
            cotangent,
            rtol=tol,
            max_steps=max_steps,
            solver=method,
        )
        converged, residual = residual_test(adjoint_map(u), u, tol)
        return u, steps, residual, converged


# --- the backward-statistics probe ----------------------------------------------------------

_PROBE_SIZE = 4  # num_solves, num_steps, residual, num_failed


class BackwardStats(eqx.Module):
    """What the backward solves did, read from a probe's cotangent (see [`backward_probe`][]).

    Every field is summed over all the solves that used the probe (a vmapped batch counts each
    example), so divide by `num_solves` for means.

    **Fields:** `num_solves`, `num_steps` (iterations of the adjoint solves), `residual` (sum of
    their relative residuals), `num_failed` (solves that did not meet their tolerance).
    """

    num_solves: Array
    num_steps: Array
    residual: Array
    num_failed: Array

    @classmethod
    def from_cotangent(cls, cotangent: Array) -> "BackwardStats":
        cotangent = jnp.asarray(cotangent)
        return cls(
            num_solves=cotangent[..., 0],
            num_steps=cotangent[..., 1],
            residual=cotangent[..., 2],
            num_failed=cotangent[..., 3],
        )


def backward_probe(dtype=jnp.float32) -> Array:
    """A zero array to pass as ``fixed_point(..., probe=probe)`` to observe the backward solve.

    Its value is never used. Differentiate the loss with respect to it as well, and its
    "gradient" is the backward statistics: ``BackwardStats.from_cotangent(grad_probe)``.

    ```python
    probe = resode.backward_probe()
    def loss(params, probe):
        sol = resode.fixed_point(f, z0, params, probe=probe)
        return jnp.sum(sol.value ** 2)
    grads, grad_probe = jax.grad(loss, argnums=(0, 1))(params, probe)
    stats = resode.BackwardStats.from_cotangent(grad_probe)
    ```
    """
    return jnp.zeros(_PROBE_SIZE, dtype)


def solve_fixed_point(
    fn,
    z0: PyTree,
    args: Args,
    solver: AbstractFixedPointSolver,
    adjoint: AbstractAdjoint,
    *,
    tol: float | None = None,
    max_steps: int | None = None,
    probe: Array | None = None,
) -> FixedPointSolution:
    """Solve ``z = fn(z, args)`` from `z0` with `solver`; differentiate with `adjoint`.

    `tol` and `max_steps` default to the solver's own. `z0` gets no gradient; `args` and any arrays
    that `fn` closes over do. `probe` (optional) receives the backward statistics as its
    cotangent (see [`backward_probe`][]).
    """
    check_map(fn, z0, args)
    tol = resolve_tol(solver.tol if tol is None else tol, z0)
    max_steps = solver.max_steps if max_steps is None else max_steps
    z0 = jax.lax.stop_gradient(z0)
    fn = eqx.filter_closure_convert(fn, z0, args)
    return adjoint.solve(solver, fn, z0, args, tol, max_steps, probe)


@eqx.filter_checkpoint(prevent_cse=False)
def _apply_remat(fn, z, args):
    return fn(z, args)


@eqx.filter_custom_vjp
def _adjoint_identity(y_probe, frozen, solver, adjoint, tol, max_steps):
    del frozen, solver, adjoint, tol, max_steps
    return y_probe[0]


@_adjoint_identity.def_fwd
def _adjoint_identity_fwd(perturbed, y_probe, frozen, solver, adjoint, tol, max_steps):
    del perturbed, frozen, solver, adjoint, tol, max_steps
    return y_probe[0], None


@_adjoint_identity.def_bwd
def _adjoint_identity_bwd(
    residuals, grad_y, perturbed, y_probe, frozen, solver, adjoint, tol, max_steps
):
    """zbar -> u = (I - J^T)^{-1} zbar, J = df/dz at z*, by the adjoint's backward solve."""
    del residuals, perturbed
    y, probe = y_probe
    fn, args, z_star = frozen
    if grad_y is None:
        cotangent = jtu.tree_map(jnp.zeros_like, y)
    else:
        cotangent = jtu.tree_map(
            lambda g, z: jnp.zeros_like(z) if g is None else g,
            grad_y,
            y,
            is_leaf=lambda x: x is None,
        )
    _, vjp_z = jax.vjp(lambda z: fn(z, args), z_star)
    u, steps, residual, converged = adjoint.solve_adjoint(
        lambda v: vjp_z(v)[0], cotangent, solver, tol, max_steps
    )
    if probe is None:
        grad_probe = None
    else:
        fields = (jnp.ones(()), steps, residual, ~converged)
        grad_probe = jnp.stack([jnp.asarray(x, probe.dtype) for x in fields])
    return u, grad_probe
