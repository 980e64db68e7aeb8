"""How gradients flow through a fixed point: adjoint strategies and the one custom VJP.

`solve_fixed_point` is the primitive the rest of resode builds on: the implicit Runge--Kutta
stages call it, and so does `resode.fixed_point`. The map is closure-converted first, so arrays it
closes over (weights, the stage's base point, the step size) receive gradients like `args` does.
"""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx

from .._custom_types import Args, PyTree
from ._iterate import check_map, iterate, resolve_tol
from ._linear import linear_solve
from ._solution import FixedPointSolution
from ._solvers import AbstractFixedPointSolver


class AbstractAdjoint(eqx.Module):
    """How the gradient of a fixed-point solve is computed."""

    @abc.abstractmethod
    def solve(
        self,
        solver: AbstractFixedPointSolver,
        fn,
        z0: PyTree,
        args: Args,
        tol: float,
        max_steps: int,
    ) -> FixedPointSolution:
        """Run `solver` and return a solution whose `value` carries this adjoint's gradient.

        `fn` is already closure-converted; `z0` receives no gradient.
        """


class ImplicitAdjoint(AbstractAdjoint):
    r"""Exact gradients by the implicit function theorem, independent of the forward iterations.

    At the solution $z^* = f(z^*, \theta)$ the backward pass solves $u = \bar z + J^\top u$
    ($J = \partial f / \partial z$ at $z^*$, applied matrix-free by vector-Jacobian products) and
    returns $(\partial f/\partial\theta)^\top u$. Only $z^*$ is stored, so backward memory does
    not grow with the number of forward iterations.

    **Arguments:**

    - `solver`: how to solve for $u$. `None` (default): restarted GMRES, which handles any
      non-singular $I - J$ (stiff stages included). A lineax solver: used as it is. A fixed-point
      solver object (e.g. `Picard()`): iterates $u \leftarrow \bar z + J^\top u$, which needs the
      spectral radius of $J$ below 1 but costs one VJP per step.
    - `tol`: relative tolerance of that solve; `None` uses the forward solve's tolerance.
    - `max_steps`: iteration bound of that solve (default 100).
    """

    solver: AbstractFixedPointSolver | lx.AbstractLinearSolver | None = eqx.field(
        default=None, static=True
    )
    tol: float | None = eqx.field(default=None, static=True)
    max_steps: int = eqx.field(default=100, static=True)

    def solve(self, solver, fn, z0, args, tol, max_steps):
        return _implicit_solve((fn, args), z0, solver, self, tol, max_steps)

    def solve_adjoint(self, vjp_z, cotangent: PyTree, tol: float) -> PyTree:
        """Solve ``u = cotangent + J^T u`` given ``vjp_z(u) = J^T u``."""
        tol = tol if self.tol is None else self.tol
        if isinstance(self.solver, AbstractFixedPointSolver):
            sol = iterate(
                self.solver,
                lambda u, _: jtu.tree_map(jnp.add, cotangent, vjp_z(u)),
                cotangent,
                None,
                tol=tol,
                max_steps=self.max_steps,
            )
            return sol.value
        u, _ = linear_solve(
            lambda u: jtu.tree_map(jnp.subtract, u, vjp_z(u)),
            cotangent,
            rtol=tol,
            max_steps=self.max_steps,
            solver=self.solver,
        )
        return u


def solve_fixed_point(
    fn,
    z0: PyTree,
    args: Args,
    solver: AbstractFixedPointSolver,
    adjoint: AbstractAdjoint,
    *,
    tol: float | None = None,
    max_steps: int | None = None,
) -> FixedPointSolution:
    """Solve ``z = fn(z, args)`` from `z0` with `solver`; differentiate with `adjoint`.

    `tol` and `max_steps` default to the solver's own. `z0` gets no gradient; `args` and any arrays
    that `fn` closes over do.
    """
    check_map(fn, z0, args)
    tol = resolve_tol(solver.tol if tol is None else tol, z0)
    max_steps = solver.max_steps if max_steps is None else max_steps
    z0 = jax.lax.stop_gradient(z0)
    fn = eqx.filter_closure_convert(fn, z0, args)
    return adjoint.solve(solver, fn, z0, args, tol, max_steps)


@eqx.filter_custom_vjp
def _implicit_solve(fn_args, z0, solver, adjoint, tol, max_steps):
    fn, args = fn_args
    return iterate(solver, fn, z0, args, tol=tol, max_steps=max_steps)


@_implicit_solve.def_fwd
def _implicit_solve_fwd(perturbed, fn_args, z0, solver, adjoint, tol, max_steps):
    del perturbed
    fn, args = fn_args
    sol = iterate(solver, fn, z0, args, tol=tol, max_steps=max_steps)
    return sol, sol.value


@_implicit_solve.def_bwd
def _implicit_solve_bwd(z_star, grad_sol, perturbed, fn_args, z0, solver, adjoint, tol, max_steps):
    del perturbed, z0, solver, max_steps
    if grad_sol.value is None:
        cotangent = jtu.tree_map(jnp.zeros_like, z_star)
    else:
        cotangent = jtu.tree_map(
            lambda g, z: jnp.zeros_like(z) if g is None else g,
            grad_sol.value,
            z_star,
            is_leaf=lambda x: x is None,
        )
    fn, args = fn_args
    _, vjp_z = jax.vjp(lambda z: fn(z, args), z_star)
    u = adjoint.solve_adjoint(lambda v: vjp_z(v)[0], cotangent, tol)
    _, vjp_theta = eqx.filter_vjp(lambda fa: fa[0](z_star, fa[1]), fn_args)
    (grad,) = vjp_theta(u)
    return grad
