"""Fixed-point solvers: small strategy objects run by one generic loop (`_iterate.py`).

Each solver finds z with z = fn(z, args). A solver says how to evaluate the map at the current
iterate (`evaluate`, which may also linearise it) and how to propose the next iterate (`update`);
the loop owns stopping, best-iterate tracking and the non-finite safeguard.
"""

import abc
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx

from .. import _tree
from .._custom_types import Args, PyTree
from ._linear import linear_solve


class AbstractFixedPointSolver(eqx.Module):
    """Base class of resode's fixed-point solvers.

    Every solver has the fields `tol` (relative: stop when ``||f(z) - z|| <= atol + tol ||f(z)||``;
    `None` means 100 machine epsilons of the state's dtype), `atol` (default 0) and `max_steps` (a
    static bound on iterations). [`resode.fixed_point`][] replaces `tol` and `max_steps` with its
    own arguments; [`resode.step`][] and [`resode.integrate`][] use the solver's own.
    """

    tol: eqx.AbstractVar[float | None]
    atol: eqx.AbstractVar[float]
    max_steps: eqx.AbstractVar[int]

    def __check_init__(self):
        if self.tol is not None and not self.tol >= 0:
            raise ValueError(f"{type(self).__name__}: `tol` must be >= 0, got {self.tol!r}.")
        if not self.atol >= 0:
            raise ValueError(f"{type(self).__name__}: `atol` must be >= 0, got {self.atol!r}.")
        if not (isinstance(self.max_steps, int) and self.max_steps >= 1):
            raise ValueError(
                f"{type(self).__name__}: `max_steps` must be an integer >= 1, "
                f"got {self.max_steps!r}."
            )

    def init(self, z: PyTree, args: Args) -> Any:
        """The solver's own state (history, counters) before the first iteration."""
        return None

    def evaluate(self, fn, z: PyTree, args: Args) -> tuple[PyTree, Any]:
        """``(fn(z, args), aux)``; `aux` is passed on to `update`."""
        return fn(z, args), None

    @abc.abstractmethod
    def update(self, z: PyTree, fz: PyTree, aux: Any, state: Any, tol: float) -> tuple[PyTree, Any]:
        """The next iterate, given the current one, its image ``fz = fn(z)`` and the resolved
        relative tolerance of the solve."""

    def stats(self, state: Any) -> dict[str, jax.Array]:
        """Counters reported in `FixedPointSolution.stats`."""
        return {}


class Picard(AbstractFixedPointSolver):
    """Damped fixed-point iteration ``z <- (1 - damping) z + damping f(z)``.

    Converges when the map is a contraction (after damping). Cheapest per step; the right choice
    for non-stiff implicit stages and well-conditioned equilibria.

    **Arguments:** `damping` in (0, 1] (default 1: plain iteration); `tol`, `atol`, `max_steps`
    (default 100) as in [`AbstractFixedPointSolver`][].
    """

    damping: float = eqx.field(default=1.0, static=True)
    tol: float | None = eqx.field(default=None, static=True)
    atol: float = eqx.field(default=0.0, static=True)
    max_steps: int = eqx.field(default=100, static=True)

    def __check_init__(self):
        if not 0.0 < self.damping <= 1.0:
            raise ValueError(f"Picard: `damping` must be in (0, 1], got {self.damping!r}.")

    def update(self, z, fz, aux, state, tol):
        if self.damping == 1.0:
            return fz, state
        return _tree.axpy(self.damping, _tree.sub(fz, z), z), state


class Newton(AbstractFixedPointSolver):
    """Newton--Krylov on ``g(z) = f(z) - z``: each step solves ``(I - df/dz) dz = f(z) - z``.

    The Jacobian is never formed: the linear solve is matrix-free restarted GMRES (lineax) on
    Jacobian-vector products from one `jax.linearize` per step. Quadratic convergence near the
    solution, whatever the stiffness: the default for implicit Runge--Kutta stages.

    **Arguments:**

    - `tol`, `atol`, `max_steps` (default 20): as in [`AbstractFixedPointSolver`][].
    - `linear_rtol`: relative tolerance of each linear solve (the forcing term of inexact Newton);
      `None` uses the resolved `tol`, so a linear map converges in one step.
    - `linear_max_steps`: Krylov iterations per linear solve (default 50).
    - `restart`: GMRES restart length (default 20).
    - `linear_solver`: any lineax solver instead of GMRES (e.g. ``lx.LU()`` for small states; it
      materialises the Jacobian).
    """

    tol: float | None = eqx.field(default=None, static=True)
    atol: float = eqx.field(default=0.0, static=True)
    max_steps: int = eqx.field(default=20, static=True)
    linear_rtol: float | None = eqx.field(default=None, static=True)
    linear_max_steps: int = eqx.field(default=50, static=True)
    restart: int = eqx.field(default=20, static=True)
    linear_solver: lx.AbstractLinearSolver | None = eqx.field(default=None, static=True)

    def init(self, z, args):
        return jnp.array(0, dtype=jnp.int32)

    def evaluate(self, fn, z, args):
        return jax.linearize(lambda w: fn(w, args), z)

    def update(self, z, fz, jvp, state, tol):
        rtol = tol if self.linear_rtol is None else self.linear_rtol
        delta, steps = linear_solve(
            lambda v: _tree.sub(v, jvp(v)),
            _tree.sub(fz, z),
            rtol=rtol,
            max_steps=self.linear_max_steps,
            restart=self.restart,
            solver=self.linear_solver,
        )
        return _tree.add(z, delta), state + steps

    def stats(self, state):
        return {"num_linear_steps": state}
