"""`resode.fixed_point`: solve z = f(z, args) and choose how gradients flow back."""

import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array

from .._custom_types import Args, PyTree
from ._adjoint import JFB, AbstractAdjoint, ImplicitAdjoint, Phantom, Unrolled, solve_fixed_point
from ._solution import FixedPointSolution
from ._solvers import AbstractFixedPointSolver, Anderson, Broyden, Newton, Picard

SOLVERS = {"picard": Picard, "anderson": Anderson, "broyden": Broyden, "newton": Newton}
"""Solver names accepted by `solver=` (and `root=`), mapped to their classes."""
ADJOINTS = {"implicit": ImplicitAdjoint, "jfb": JFB, "phantom": Phantom, "unrolled": Unrolled}
"""Adjoint names accepted by `adjoint=`, mapped to their classes."""


def _resolve(value, registry: dict, base: type, what: str, example: str):
    if isinstance(value, base):
        return value
    if isinstance(value, str):
        try:
            return registry[value]()
        except KeyError:
            raise ValueError(
                f"Unknown {what} {value!r}. Valid names: {', '.join(registry)}; or pass an object "
                f"such as {example}."
            ) from None
    raise TypeError(
        f"`{what}` must be a name or an instance of {base.__name__}, got {type(value).__name__}."
    )


def resolve_solver(solver) -> AbstractFixedPointSolver:
    """A solver name (picard, anderson, broyden, newton) or a solver object, as an object."""
    example = "resode.Anderson(memory=8)"
    return _resolve(solver, SOLVERS, AbstractFixedPointSolver, "solver", example)


def resolve_adjoint(adjoint) -> AbstractAdjoint:
    """An adjoint name (implicit, jfb, phantom, unrolled) or an adjoint object, as an object."""
    return _resolve(adjoint, ADJOINTS, AbstractAdjoint, "adjoint", "resode.Phantom(steps=10)")


def fixed_point(
    f,
    z0: PyTree,
    args: Args = None,
    *,
    solver: "str | AbstractFixedPointSolver" = "anderson",
    adjoint: "str | AbstractAdjoint" = "implicit",
    tol: float = 1e-6,
    max_steps: int = 50,
    probe: Array | None = None,
) -> FixedPointSolution:
    """Solve ``z = f(z, args)`` starting from `z0`.

    **Arguments:**

    - `f`: the map, ``f(z, args)``, returning a pytree with the structure, shapes and dtypes of z.
    - `z0`: the starting point (any pytree of floating or complex arrays). It gets no gradient.
    - `args`: passed to `f`. Arrays in it, and arrays `f` closes over, are differentiable.
    - `solver`: ``"picard"``, ``"anderson"`` (default), ``"broyden"``, ``"newton"``, or a solver
      object with options ([`Picard`][], [`Anderson`][], [`Broyden`][], [`Newton`][]). This
      function's `tol` and `max_steps` replace the object's own.
    - `adjoint`: ``"implicit"`` (default: exact implicit-function-theorem gradient), ``"jfb"``,
      ``"phantom"``, ``"unrolled"``, or an object with options ([`ImplicitAdjoint`][],
      [`JFB`][], [`Phantom`][], [`Unrolled`][]).
    - `tol`: relative tolerance: stop when ``||f(z) - z|| <= tol * ||f(z)||``. Per solve, so under
      `jax.vmap` every example stops on its own.
    - `max_steps`: static bound on iterations.
    - `probe`: optional; see [`backward_probe`][] to observe the backward solve.

    **Returns:** a [`FixedPointSolution`][] with `value`, `num_steps`, `residual` (relative),
    `converged` and `stats`. A solve that does not converge returns its best iterate with
    ``converged=False``; nothing is raised, under jit or not.
    """
    solver = resolve_solver(solver)
    adjoint = resolve_adjoint(adjoint)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
        raise ValueError(f"fixed_point: `tol` must be a number >= 0, got {tol!r}.")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"fixed_point: `max_steps` must be an integer >= 1, got {max_steps!r}.")
    z0 = jtu.tree_map(jnp.asarray, z0)
    return solve_fixed_point(
        f, z0, args, solver, adjoint, tol=float(tol), max_steps=max_steps, probe=probe
    )
