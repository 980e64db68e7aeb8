"""DEQ: a deep-equilibrium layer z* = f(z*, x) through resode.fixed_point."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray

from ..solvers import fixed_point, resolve_adjoint, resolve_solver
from ._diagnostics import Diagnostics
from ._fields import AbstractVectorField


def solve_budget(layer, inference: bool) -> tuple[float, int]:
    """``(tol, max_steps)`` of an equilibrium layer: its eval values when called with
    ``inference=True`` and set, its training values otherwise."""
    tol = layer.eval_tol if inference and layer.eval_tol is not None else layer.tol
    max_steps = (
        layer.eval_max_steps if inference and layer.eval_max_steps is not None else layer.max_steps
    )
    return tol, max_steps


class DEQ(eqx.Module):
    """The equilibrium ``z* = field(0, z*, x)`` of a weight-tied layer with injected input x.

    **Arguments:**

    - `field`: the layer (any [`AbstractVectorField`][]; x is injected as ``field(0, z, x)``).
    - `solver`, `adjoint`: names or objects, as in [`resode.fixed_point`][] (defaults
      ``"anderson"`` and ``"implicit"``).
    - `tol` (relative, default 1e-4), `max_steps` (default 30): training-time solve.
    - `eval_tol`, `eval_max_steps`: used instead when called with ``inference=True`` (e.g. a
      tighter tolerance or more iterations at test time); `None` keeps the training values.

    Call as ``deq(x, z0=None, *, inference=False, probe=None) -> (z, Diagnostics)``; `z0`
    defaults to zeros shaped like x, and `probe` observes the backward solve
    ([`resode.backward_probe`][]).
    """

    field: AbstractVectorField
    solver: object = eqx.field(static=True)
    adjoint: object = eqx.field(static=True)
    tol: float = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    eval_tol: float | None = eqx.field(static=True)
    eval_max_steps: int | None = eqx.field(static=True)

    def __init__(
        self,
        field: AbstractVectorField,
        *,
        solver="anderson",
        adjoint="implicit",
        tol: float = 1e-4,
        max_steps: int = 30,
        eval_tol: float | None = None,
        eval_max_steps: int | None = None,
    ):
        self.field = field
        self.solver = resolve_solver(solver)
        self.adjoint = resolve_adjoint(adjoint)
        self.tol = tol
        self.max_steps = max_steps
        self.eval_tol = eval_tol
        self.eval_max_steps = eval_max_steps

    def __call__(self, x: Array, z0: Array | None = None, *, inference: bool = False, probe=None):
        tol, max_steps = solve_budget(self, inference)
        z0 = jnp.zeros_like(x) if z0 is None else z0
        field = self.field
        sol = fixed_point(
            lambda z, a: field(0.0, z, a),
            z0,
            x,
            solver=self.solver,
            adjoint=self.adjoint,
            tol=tol,
            max_steps=max_steps,
            probe=probe,
        )
        jvps = sol.stats.get("num_linear_steps", jnp.array(0, jnp.int32))
        diag = Diagnostics(
            num_fevals=sol.num_steps + sol.stats.get("num_line_search_evals", 0),
            num_jvps=jvps,
            solver_steps=sol.num_steps,
            residual=sol.residual,
            converged=sol.converged,
        )
        return sol.value, diag

    def jacobian_penalty(
        self, z: Array, x: Array, *, key: PRNGKeyArray, num_samples: int = 1
    ) -> Array:
        r"""Hutchinson estimate of $\|\partial f/\partial z\|_F^2$ at ``(z, x)``, for the loss.

        $\mathbb{E}_v \|v^\top J\|^2$ with $v \sim N(0, I)$, averaged over `num_samples` VJPs;
        unbiased. Add ``gamma * penalty`` to the loss to keep the equilibrium well conditioned
        (Bai et al., 2021). Differentiable with respect to the field's parameters.
        """
        _, vjp = jax.vjp(lambda w: self.field(0.0, w, x), z)
        vs = jax.random.normal(key, (num_samples,) + z.shape, z.dtype)
        return jnp.mean(jax.vmap(lambda v: jnp.sum(vjp(v)[0] ** 2))(vs))
