"""Fixed-point solvers: small strategy objects run by one generic loop (`_iterate.py`).

Each solver finds z with z = fn(z, args). A solver says how to evaluate the map at the current
iterate (`evaluate`, which may also linearise it) and how to propose the next iterate (`update`);
the loop owns stopping, best-iterate tracking and the non-finite safeguard.
"""

import abc
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg
import lineax as lx
from jax.flatten_util import ravel_pytree

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

    #: Whether `update` can return a non-finite iterate from a finite one (the loop then checks,
    #: and replaces such an iterate by f(z)). False only where the update is f(z) itself.
    may_blow_up: ClassVar[bool] = True

    #: Whether the while loop may call `update` on the iteration that met the tolerance (its result
    #: is then discarded). True for cheap updates whose state holds no counters (Picard,
    #: Anderson, Broyden): it spares XLA a conditional around `update`, which copies the whole
    #: solver state (Anderson's and Broyden's histories) on every iteration. False (the default,
    #: and Newton's) skips the update once converged.
    update_when_done: ClassVar[bool] = False

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

    may_blow_up: ClassVar[bool] = False  # a convex combination of z and f(z)
    update_when_done: ClassVar[bool] = True

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
    - `line_search` (default False): backtrack along each Newton direction, halving the step
      until the residual ``||f(z) - z||`` falls by the Armijo factor ``1 - 1e-4 alpha`` (at most
      `max_backtracks` halvings, default 20; the last trial is taken if none does). The Newton
      direction is a descent direction of that residual, so this globalises Newton on problems
      where full steps oscillate, e.g. backward-Euler stages of a saturating field at large step
      sizes. Costs one evaluation of `f` per trial (counted in the stats as
      ``num_line_search_evals``).
    """

    tol: float | None = eqx.field(default=None, static=True)
    atol: float = eqx.field(default=0.0, static=True)
    max_steps: int = eqx.field(default=20, static=True)
    linear_rtol: float | None = eqx.field(default=None, static=True)
    linear_max_steps: int = eqx.field(default=50, static=True)
    restart: int = eqx.field(default=20, static=True)
    linear_solver: lx.AbstractLinearSolver | None = eqx.field(default=None, static=True)
    line_search: bool = eqx.field(default=False, static=True)
    max_backtracks: int = eqx.field(default=20, static=True)

    def __check_init__(self):
        if not (isinstance(self.max_backtracks, int) and self.max_backtracks >= 1):
            raise ValueError(
                f"Newton: `max_backtracks` must be an integer >= 1, got {self.max_backtracks!r}."
            )

    def init(self, z, args):
        zero = jnp.array(0, dtype=jnp.int32)
        return (zero, zero)

    def evaluate(self, fn, z, args):
        fz, jvp = jax.linearize(lambda w: fn(w, args), z)
        return fz, (jvp, lambda w: fn(w, args))

    def update(self, z, fz, aux, state, tol):
        jvp, fn = aux
        linear_steps, search_evals = state
        rtol = tol if self.linear_rtol is None else self.linear_rtol
        delta, steps = linear_solve(
            lambda v: _tree.sub(v, jvp(v)),
            _tree.sub(fz, z),
            rtol=rtol,
            max_steps=self.linear_max_steps,
            restart=self.restart,
            solver=self.linear_solver,
        )
        if not self.line_search:
            return _tree.add(z, delta), (linear_steps + steps, search_evals)
        r0 = _tree.norm(_tree.sub(fz, z))

        def residual(alpha):
            w = _tree.axpy(alpha, delta, z)
            return _tree.norm(_tree.sub(fn(w), w))

        def cond(carry):
            alpha, r, k = carry
            decreased = r <= (1 - 1e-4 * alpha) * r0  # NaN residuals never count as decreased
            return (~decreased) & (k < self.max_backtracks)

        def body(carry):
            alpha, _, k = carry
            alpha = alpha / 2
            return alpha, residual(alpha), k + 1

        one = jnp.asarray(1.0, r0.dtype)
        alpha, _, k = jax.lax.while_loop(cond, body, (one, residual(one), jnp.array(0, jnp.int32)))
        return _tree.axpy(alpha, delta, z), (linear_steps + steps, search_evals + k + 1)

    def stats(self, state):
        linear_steps, search_evals = state
        out = {"num_linear_steps": linear_steps}
        if self.line_search:
            out["num_line_search_evals"] = search_evals
        return out


def _flat(tree: PyTree):
    return ravel_pytree(tree)[0]


_UNROLL_SPD = 8


def _spd_solve(a, b):
    """Solve ``a x = b`` for a small symmetric positive definite `a` (m x m, m static).

    For m <= 8 by an unrolled Cholesky factorisation and two triangular sweeps: O(m^2) scalar
    XLA operations, which stay cheap under `vmap` (a batched LAPACK call per example does not);
    larger m through `jax.scipy.linalg.cho_solve`. A breakdown (a non-positive pivot) gives
    non-finite entries, for the caller's safeguard to catch."""
    m = a.shape[0]
    if m > _UNROLL_SPD:
        return jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(a), b)
    cols = []  # columns of the Cholesky factor L (a = L L^T)
    for j in range(m):
        c = a[:, j]
        for k in range(j):
            c = c - cols[k] * cols[k][j]
        c = jnp.where(jnp.arange(m) >= j, c / jnp.sqrt(c[j]), 0.0)
        cols.append(c)
    y = []  # L y = b
    for i in range(m):
        r = b[i]
        for k in range(i):
            r = r - cols[k][i] * y[k]
        y.append(r / cols[i][i])
    x = [None] * m  # L^T x = y
    for i in reversed(range(m)):
        r = y[i]
        for k in range(i + 1, m):
            r = r - cols[i][k] * x[k]
        x[i] = r / cols[i][i]
    return jnp.stack(x)


class Anderson(AbstractFixedPointSolver):
    r"""Anderson acceleration (type II) with memory `memory`.

    Keeps the last m iterates $x_i$ and residuals $g_i = f(x_i) - x_i$, finds the affine
    combination $\alpha$ ($\sum\alpha_i = 1$) minimising $\|\sum \alpha_i g_i\|$ from the small
    Gram system $(G G^\top + \lambda I)\alpha \propto \mathbf{1}$, and moves to
    $\sum\alpha_i (x_i + \beta g_i)$. Converges on many maps where plain iteration diverges or
    crawls.

    Safeguard: the regularisation $\lambda$ is relative (`regularisation` times the largest
    diagonal entry of $GG^\top$), and when the coefficients are not finite or larger than
    `max_coefficient` in sum of magnitudes (an ill-conditioned system), the step falls back to the
    damped Picard step $x + \beta g$ instead of producing NaN.

    **Arguments:** `memory` (m, default 5), `mixing` ($\beta$ in (0, 1], default 1),
    `regularisation` (default 1e-8), `max_coefficient` (default 1e4); `tol`, `atol`, `max_steps`
    (default 50) as in [`AbstractFixedPointSolver`][].
    """

    memory: int = eqx.field(default=5, static=True)
    mixing: float = eqx.field(default=1.0, static=True)
    regularisation: float = eqx.field(default=1e-8, static=True)
    max_coefficient: float = eqx.field(default=1e4, static=True)
    tol: float | None = eqx.field(default=None, static=True)
    atol: float = eqx.field(default=0.0, static=True)
    max_steps: int = eqx.field(default=50, static=True)
    update_when_done: ClassVar[bool] = True
    # The update guards itself: its proposal is the accelerated point when the weights pass the
    # safeguard, else the mixed Picard point, finite whenever f(z) is.
    may_blow_up: ClassVar[bool] = False

    def __check_init__(self):
        if not (isinstance(self.memory, int) and self.memory >= 1):
            raise ValueError(f"Anderson: `memory` must be an integer >= 1, got {self.memory!r}.")
        if not 0.0 < self.mixing <= 1.0:
            raise ValueError(f"Anderson: `mixing` must be in (0, 1], got {self.mixing!r}.")
        if not self.regularisation >= 0:
            raise ValueError(
                f"Anderson: `regularisation` must be >= 0, got {self.regularisation!r}."
            )

    def init(self, z, args):
        x = _flat(z)
        hist = jnp.zeros((self.memory,) + x.shape, x.dtype)
        # The Gram matrix, the small solve and the weights are kept in at least float32: in a
        # 16-bit state the weights would otherwise carry errors of 1e-2 into every step.
        gram = jnp.zeros(
            (self.memory, self.memory), jnp.promote_types(jnp.real(x).dtype, "float32")
        )
        return hist, hist, gram, jnp.array(0, jnp.int32)

    def update(self, z, fz, aux, state, tol):
        # ys holds the mixed points x_i + beta g_i (all the step needs of the iterates), gs the
        # residuals g_i, gram their Gram matrix.
        ys, gs, gram, k = state
        x, unravel = ravel_pytree(z)
        g = _flat(fz) - x
        picard = x + self.mixing * g
        slot = k % self.memory
        ys = ys.at[slot].set(picard)
        gs = gs.at[slot].set(g)
        # The Gram matrix of the stored residuals is kept in the state: only the new residual's
        # row and column are computed (m inner products, not m^2).
        # (Accumulated in at least float32, and for a complex state in its complex dtype: a
        # complex product with a real result type is a complex-to-real convert, which XLA's
        # elemental emitters refuse.)
        acc = jnp.promote_types(gs.dtype, gram.dtype)
        row = jnp.real(jnp.matmul(gs.conj(), g, preferred_element_type=acc)).astype(gram.dtype)
        gram = gram.at[slot, :].set(row).at[:, slot].set(row)
        filled = jnp.arange(self.memory) < jnp.minimum(k + 1, self.memory)
        both = filled[:, None] & filled[None, :]
        gram_k = jnp.where(both, gram, 0.0)
        scale = jnp.max(jnp.diagonal(gram_k))
        reg = self.regularisation * jnp.where(scale > 0, scale, 1.0)
        gram_k = gram_k + jnp.diag(jnp.where(filled, reg, 1.0))
        # Symmetric positive definite (a Gram matrix plus a positive diagonal): Cholesky. A
        # breakdown gives non-finite weights, caught by the safeguard below.
        weights = _spd_solve(gram_k, filled.astype(gram_k.dtype))
        alpha = weights / jnp.sum(weights)
        alpha = jnp.where(filled, alpha, 0.0)
        # The safeguard tests the m weights only: finite weights, bounded in sum of magnitudes,
        # combine finite points into a finite point. (The stored points are finite: a residual
        # that is not finite reaches the Gram matrix and from it the weights, which then fail
        # this test.) A test of the whole combination would cost two passes over the state per
        # iteration, a third of the solver's overhead on a 256 x 64 batch. The fallback, the
        # Picard point, is the newest stored point: weights one-hot at its slot, so one
        # combination serves both cases and no select over the state is needed.
        ok = jnp.sum(jnp.abs(alpha)) <= self.max_coefficient  # False for NaN or inf
        alpha = jnp.where(ok, alpha, jnp.arange(self.memory) == slot)
        x_next = (alpha.astype(jnp.promote_types(ys.dtype, gram.dtype)) @ ys).astype(ys.dtype)
        return unravel(x_next), (ys, gs, gram, k + 1)


class Broyden(AbstractFixedPointSolver):
    r"""Limited-memory ("good") Broyden on $g(z) = f(z) - z$.

    Keeps an approximation $H \approx (\partial g/\partial z)^{-1}$ as $-I$ plus at most `memory`
    rank-one corrections (Sherman--Morrison updates of the inverse) and steps
    $z \leftarrow z - H g(z)$. The first step is a Picard step. When `memory` corrections are
    stored the method restarts from $H = -I$ (overwriting the oldest correction instead breaks the
    secant conditions of the later ones, which were built on it, and stalls the iteration on slowly
    contracting maps). An update whose denominator is tiny or not finite is skipped. Each step
    makes two passes over the stored corrections.

    **Arguments:** `memory` (default 10); `tol`, `atol`, `max_steps` (default 50) as in
    [`AbstractFixedPointSolver`][].
    """

    memory: int = eqx.field(default=10, static=True)
    tol: float | None = eqx.field(default=None, static=True)
    atol: float = eqx.field(default=0.0, static=True)
    max_steps: int = eqx.field(default=50, static=True)
    update_when_done: ClassVar[bool] = True

    def __check_init__(self):
        if not (isinstance(self.memory, int) and self.memory >= 1):
            raise ValueError(f"Broyden: `memory` must be an integer >= 1, got {self.memory!r}.")

    def init(self, z, args):
        x = _flat(z)
        # memory + 1 rows: the last is a scratch row that a skipped update is written to (as
        # zeros) and that is never active. Writing there instead of writing the old row back
        # spares reading that row first, which under vmap is a gather per example (a sixth of
        # a vmapped iteration on a 256 x 64 batch).
        us = jnp.zeros((self.memory + 1,) + x.shape, x.dtype)
        # (us, vs, x_prev, g_prev, H g_prev, k, n); H g_prev is kept so that H dg = H g - H g_prev
        # costs no extra pass over the history.
        return us, us, x, x, jnp.zeros_like(x), jnp.array(0, jnp.int32), jnp.array(0, jnp.int32)

    def update(self, z, fz, aux, state, tol):
        us, vs, x_prev, g_prev, hg_prev, k, n = state
        x, unravel = ravel_pytree(z)
        g = _flat(fz) - x
        dx, dg = x - x_prev, g - g_prev
        # Restarted when full: the history is dropped (H = -I) and the new pair is built on -I.
        # Overwriting the oldest pair instead breaks the secant conditions of the pairs built on
        # it, and the iteration stalls on slowly contracting maps.
        restart = n == self.memory
        n = jnp.where(restart, 0, n)
        active = jnp.arange(self.memory + 1) < n  # never the scratch row (n <= memory)
        # Two passes over the history per step: H g is computed once and serves both the secant
        # update (H dg = H g - H g_prev, the latter kept from the last step) and the step.
        hg = jnp.where(active, vs.conj() @ g, 0.0) @ us - g
        h_dg = jnp.where(restart, -dg, hg - hg_prev)
        denom = jnp.vdot(dx, h_dg)
        # Skip the update when |dx^H H dg| is tiny against |dx| |H dg| (compared squared: no sqrt
        # at zero), and divide by a safe denominator so that a skipped update cannot leak NaN
        # into gradients (the unrolled adjoint differentiates through this).
        scale_sq = jnp.real(jnp.vdot(dx, dx)) * jnp.real(jnp.vdot(h_dg, h_dg))
        ok = (k > 0) & (jnp.abs(denom) ** 2 > 1e-24 * scale_sq) & jnp.isfinite(denom)
        u = (dx - h_dg) / jnp.where(ok, denom, 1.0)
        v = jnp.where(active, us.conj() @ dx, 0.0) @ vs - dx  # H^H dx
        ok = ok & jnp.all(jnp.isfinite(u)) & jnp.all(jnp.isfinite(v))
        # Write one row: the new pair at row n, or zeros into the scratch row when the update is
        # skipped (zeros: the scratch row meets the passes above with weight 0, and 0 times a
        # skipped non-finite pair would be NaN). Selecting between whole histories would copy
        # them every iteration.
        row = jnp.where(ok, n, self.memory)
        us = jax.lax.dynamic_update_index_in_dim(us, jnp.where(ok, u, 0.0), row, 0)
        vs = jax.lax.dynamic_update_index_in_dim(vs, jnp.where(ok, v, 0.0), row, 0)
        n = n + ok.astype(n.dtype)
        # (H + u v^H) g, without another pass over the history.
        hg = hg + jnp.where(ok, u * jnp.vdot(v, g), 0.0)
        x_next = x - hg
        return unravel(x_next), (us, vs, x, g, hg, k + 1, n)
