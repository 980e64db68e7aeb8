r"""Monotone equilibria: z = relu(W z + b) with W = (1 - m) I - A^T A + B - B^T.

Winston & Kolter (NeurIPS 2020, "Monotone operator equilibrium networks"). Because
$I - W = mI + A^\top A + (B^\top - B)$ has symmetric part $\succeq mI$, the equilibrium exists and
is unique for every input, and operator-splitting methods find it:

- forward--backward: $z \leftarrow \mathrm{relu}((1 - \alpha) z + \alpha (W z + b))$, converging
  for $0 < \alpha < 2m / \|I - W\|_2^2$;
- Peaceman--Rachford: $u_{1/2} = 2z - u$, $z_{1/2} = V^{-1}(u_{1/2} + \alpha b)$ with
  $V = I + \alpha (I - W)$, $u \leftarrow 2 z_{1/2} - u_{1/2}$, $z = \mathrm{relu}(u)$,
  converging for every $\alpha > 0$.

The gradient comes from the implicit function theorem, and its linear equation is solved by the
same splitting: with $D = \mathrm{diag}(\mathrm{relu}'(W z^* + b))$ the adjoint $w$ is the fixed
point of $w = D (W^\top w + \bar z)$, a monotone problem of the same form ($W^\top$ has the same
margin; the "nonlinearity" is the mask $D$).

Two parameterisations of W are provided: [`DenseMonotone`][] (matrices A, B) and
[`ConvMonotone`][] (circular convolutions, whose resolvent is exact through the FFT). Any module
implementing [`AbstractMonotoneLinear`][] works with [`monotone_fixed_point`][].
"""

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg
from jaxtyping import Array, PRNGKeyArray

from ._adjoint import _stop
from ._fixed_point import _resolve
from ._iterate import iterate, precision_floor
from ._linear import linear_solve
from ._solution import FixedPointSolution
from ._solvers import AbstractFixedPointSolver

# --- the linear part W ---------------------------------------------------------------------


class AbstractMonotoneLinear(eqx.Module):
    r"""The linear part W of a monotone equilibrium, with $\mathrm{sym}(I - W) \succeq mI$.

    Subclasses provide `monotonicity` (m), `state_shape`, `matvec` (W z for one example), a dense
    `matrix()` (for tests and small states), `resolvent(alpha)` (a factorisation of
    $V = I + \alpha(I - W)$ that solves $Vx = r$ and $V^\top x = r$), `lipschitz()`
    ($\|I - W\|_2$) and `min_eig()` ($\lambda_{\min}(\mathrm{sym}(I - W))$). `rmatvec`
    ($W^\top z$) defaults to the exact transpose of `matvec`.
    """

    monotonicity: eqx.AbstractVar[float]

    @property
    @abc.abstractmethod
    def state_shape(self) -> tuple[int, ...]:
        """Shape of one example's state z."""

    @abc.abstractmethod
    def matvec(self, z: Array) -> Array:
        """W z."""

    def rmatvec(self, z: Array) -> Array:
        """W^T z (the exact transpose of `matvec`)."""
        (out,) = jax.linear_transpose(self.matvec, z)(z)
        return out

    @abc.abstractmethod
    def matrix(self) -> Array:
        """W as an (n, n) matrix over the flattened state."""

    @abc.abstractmethod
    def resolvent(self, alpha) -> "AbstractResolvent":
        r"""A factorisation of $V = I + \alpha (I - W)$, computed once and reused."""

    @abc.abstractmethod
    def lipschitz(self) -> Array:
        r"""$\|I - W\|_2$ (exact)."""

    @abc.abstractmethod
    def min_eig(self) -> Array:
        r"""$\lambda_{\min}((I - W) + (I - W)^\top) / 2$ (exact); at least m up to rounding."""

    def prepared(self) -> "AbstractMonotoneLinear":
        """The operator in the form cheapest to apply many times (e.g. W formed once)."""
        return self


class AbstractResolvent(eqx.Module):
    """Solves ``(I + alpha (I - W)) x = r`` (or its transpose) for one example."""

    @abc.abstractmethod
    def solve(self, r: Array, transpose: bool) -> tuple[Array, Array]:
        """``(x, linear_steps)``; factorised resolvents report 0 steps."""


class _LUResolvent(AbstractResolvent):
    lu: Array
    pivots: Array

    def solve(self, r, transpose):
        rhs = r.reshape(-1).astype(self.lu.dtype)  # a 16-bit state is solved in float32
        x = jax.scipy.linalg.lu_solve((self.lu, self.pivots), rhs, trans=int(transpose))
        return x.reshape(r.shape).astype(r.dtype), jnp.array(0, jnp.int32)


class _KrylovResolvent(AbstractResolvent):
    """Matrix-free: GMRES on V (or V^T) at every use."""

    op: AbstractMonotoneLinear
    alpha: Array
    rtol: float = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)

    def solve(self, r, transpose):
        apply = self.op.rmatvec if transpose else self.op.matvec
        alpha = self.alpha.astype(r.dtype)
        matvec = lambda x: (1 + alpha) * x - alpha * apply(x)
        rtol = max(self.rtol, precision_floor(r.dtype))
        x, steps = linear_solve(matvec, r, rtol=rtol, max_steps=self.max_steps)
        return x, jnp.asarray(steps, jnp.int32)


class _DenseMatrix(AbstractMonotoneLinear):
    """W formed once (what `DenseMonotone.prepared` returns)."""

    weight: Array
    monotonicity: float = eqx.field(static=True)

    @property
    def state_shape(self):
        return (self.weight.shape[0],)

    def matvec(self, z):
        return self.weight @ z

    def rmatvec(self, z):
        return self.weight.T @ z

    def matrix(self):
        return self.weight

    def resolvent(self, alpha):
        w = _wide(self.weight)  # factorisations in at least float32
        v = (1 + alpha) * jnp.eye(w.shape[0], dtype=w.dtype) - alpha * w
        return _LUResolvent(*jax.scipy.linalg.lu_factor(v))

    def lipschitz(self):
        w = _wide(self.weight)
        return jnp.linalg.norm(jnp.eye(w.shape[0], dtype=w.dtype) - w, ord=2)

    def min_eig(self):
        w = _wide(self.weight)
        m = jnp.eye(w.shape[0], dtype=w.dtype) - w
        return jnp.linalg.eigvalsh((m + m.T) / 2)[0]


def _check_margin(name: str, monotonicity) -> float:
    if isinstance(monotonicity, bool) or not isinstance(monotonicity, (int, float)):
        raise TypeError(f"{name}: `monotonicity` must be a number, got {monotonicity!r}.")
    if not 0.0 < monotonicity <= 1.0:
        raise ValueError(f"{name}: `monotonicity` (m) must be in (0, 1], got {monotonicity!r}.")
    return float(monotonicity)


class DenseMonotone(AbstractMonotoneLinear):
    r"""$W = (1 - m) I - A^\top A + B - B^\top$ with dense (n, n) parameters A and B.

    **Arguments:** `features` (n), `monotonicity` (m in (0, 1], default 0.1 as in Winston &
    Kolter's experiments), `key`. A and B start uniform in $\pm 1/\sqrt{n}$ (the default of a
    linear layer). The resolvent is an LU factorisation of the (n, n) matrix, made once per call
    of [`monotone_fixed_point`][].
    """

    a: Array
    b: Array
    monotonicity: float = eqx.field(static=True)

    def __init__(self, features: int, *, monotonicity: float = 0.1, key: PRNGKeyArray, dtype=None):
        if not (isinstance(features, int) and features >= 1):
            raise ValueError(
                f"DenseMonotone: `features` must be an integer >= 1, got {features!r}."
            )
        self.monotonicity = _check_margin("DenseMonotone", monotonicity)
        dtype = jnp.result_type(float) if dtype is None else dtype
        lim = 1.0 / math.sqrt(features)
        ka, kb = jax.random.split(key)
        self.a = jax.random.uniform(ka, (features, features), dtype, -lim, lim)
        self.b = jax.random.uniform(kb, (features, features), dtype, -lim, lim)

    @property
    def state_shape(self):
        return (self.a.shape[0],)

    def matrix(self):
        n = self.a.shape[0]
        eye = jnp.eye(n, dtype=self.a.dtype)
        return (1 - self.monotonicity) * eye - self.a.T @ self.a + self.b - self.b.T

    def matvec(self, z):
        return self.matrix() @ z

    def prepared(self):
        return _DenseMatrix(self.matrix(), self.monotonicity)

    def resolvent(self, alpha):
        return self.prepared().resolvent(alpha)

    def lipschitz(self):
        return self.prepared().lipschitz()

    def min_eig(self):
        return self.prepared().min_eig()


def _op_dtype(op: AbstractMonotoneLinear):
    return jnp.result_type(*[x for x in jax.tree_util.tree_leaves(op) if eqx.is_inexact_array(x)])


def _wide(x: Array) -> Array:
    """`x` in at least float32: 16-bit states (mixed precision) have no LU, SVD, eigh or FFT."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _circular_conv(kernel: Array, x: Array) -> Array:
    """Circular ("wrap") convolution of x (channels, *spatial) with (out, in, *window)."""
    pads = [(0, 0)] + [(k // 2, k // 2) for k in kernel.shape[2:]]
    xp = jnp.pad(x, pads, mode="wrap")
    out = jax.lax.conv_general_dilated(
        xp[None], kernel, window_strides=(1,) * (x.ndim - 1), padding="VALID"
    )
    return out[0]


class _FFTResolvent(AbstractResolvent):
    """Circular operators are diagonalised by the FFT: one (c, c) inverse per frequency."""

    inverse: Array  # (*spatial, c, c) complex

    def solve(self, r, transpose):
        axes = tuple(range(1, r.ndim))
        rh = jnp.moveaxis(jnp.fft.fftn(_wide(r), axes=axes), 0, -1)  # (*spatial, c)
        inv = jnp.conj(jnp.swapaxes(self.inverse, -1, -2)) if transpose else self.inverse
        xh = jnp.einsum("...ij,...j->...i", inv, rh)
        x = jnp.fft.ifftn(jnp.moveaxis(xh, -1, 0), axes=axes).real
        return x.astype(r.dtype), jnp.array(0, jnp.int32)


class ConvMonotone(AbstractMonotoneLinear):
    r"""$W = (1 - m) I - A^\top A + B - B^\top$ with A, B circular convolutions.

    The state is (channels, *spatial_shape) (1 or 2 spatial dims); A and B are
    ``channels -> channels`` convolutions with an odd `kernel_size` and circular ("wrap") padding,
    and $A^\top$, $B^\top$ are their exact adjoints. A circular operator is diagonalised by the
    discrete Fourier transform, so the resolvent is exact and cheap: one (c, c) inverse per
    frequency, computed once per call, applied by FFTs (Winston & Kolter do the same); the norms
    `lipschitz` and `min_eig` are exact maxima / minima over frequencies.

    **Arguments:** `channels`, `spatial_shape`, `kernel_size` (default 3), `monotonicity` (m,
    default 0.1), `key`.
    """

    a: Array
    b: Array
    monotonicity: float = eqx.field(static=True)
    spatial_shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(
        self,
        channels: int,
        spatial_shape: tuple[int, ...],
        *,
        kernel_size: int = 3,
        monotonicity: float = 0.1,
        key: PRNGKeyArray,
        dtype=None,
    ):
        spatial_shape = tuple(spatial_shape)
        if len(spatial_shape) not in (1, 2) or not all(
            isinstance(s, int) and s >= 1 for s in spatial_shape
        ):
            raise ValueError(
                f"ConvMonotone: `spatial_shape` must be 1 or 2 positive sizes, got {spatial_shape}."
            )
        if not (isinstance(kernel_size, int) and kernel_size >= 1 and kernel_size % 2 == 1):
            raise ValueError(
                f"ConvMonotone: `kernel_size` must be an odd integer >= 1, got {kernel_size!r}."
            )
        if any(kernel_size > s for s in spatial_shape):
            raise ValueError(
                f"ConvMonotone: `kernel_size` {kernel_size} exceeds the spatial shape "
                f"{spatial_shape}."
            )
        self.monotonicity = _check_margin("ConvMonotone", monotonicity)
        self.spatial_shape = spatial_shape
        dtype = jnp.result_type(float) if dtype is None else dtype
        shape = (channels, channels) + (kernel_size,) * len(spatial_shape)
        lim = 1.0 / math.sqrt(channels * kernel_size ** len(spatial_shape))
        ka, kb = jax.random.split(key)
        self.a = jax.random.uniform(ka, shape, dtype, -lim, lim)
        self.b = jax.random.uniform(kb, shape, dtype, -lim, lim)

    @property
    def state_shape(self):
        return (self.a.shape[0],) + self.spatial_shape

    def _conv_t(self, kernel, z):
        (out,) = jax.linear_transpose(lambda x: _circular_conv(kernel, x), z)(z)
        return out

    def _apply(self, z, sign):
        # (1 - m) z - A^T A z + sign (B z - B^T z): sign +1 is W, -1 its transpose.
        az = _circular_conv(self.a, z)
        skew = _circular_conv(self.b, z) - self._conv_t(self.b, z)
        return (1 - self.monotonicity) * z - self._conv_t(self.a, az) + sign * skew

    def matvec(self, z):
        return self._apply(z, 1.0)

    def rmatvec(self, z):
        return self._apply(z, -1.0)

    def matrix(self):
        n = math.prod(self.state_shape)
        eye = jnp.eye(n, dtype=self.a.dtype).reshape((n,) + self.state_shape)
        cols = jax.vmap(self.matvec)(eye).reshape(n, n)
        return cols.T

    def transfer(self) -> Array:
        r"""$\hat W(k)$, shape (*spatial, c, c): $\widehat{Wz}(k) = \hat W(k) \hat z(k)$."""
        c = self.a.shape[0]
        impulses = jnp.zeros((c, c) + self.spatial_shape, self.a.dtype)
        origin = (0,) * len(self.spatial_shape)
        impulses = impulses.at[(jnp.arange(c), jnp.arange(c)) + origin].set(1.0)
        responses = _wide(jax.vmap(self.matvec)(impulses))  # [j] = W e_j delta: (c, *spatial)
        axes = tuple(range(2, responses.ndim))
        spectrum = jnp.fft.fftn(responses, axes=axes)  # (j, i, *spatial)
        return jnp.moveaxis(jnp.moveaxis(spectrum, 0, -1), 0, -2)  # (*spatial, i, j)

    def _i_minus_w(self):
        what = self.transfer()
        c = what.shape[-1]
        return jnp.eye(c, dtype=what.dtype) - what

    def resolvent(self, alpha):
        what = self.transfer()
        c = what.shape[-1]
        v = (1 + alpha) * jnp.eye(c, dtype=what.dtype) - alpha * what
        return _FFTResolvent(jnp.linalg.inv(v))

    def lipschitz(self):
        return jnp.max(jnp.linalg.norm(self._i_minus_w(), ord=2, axis=(-2, -1)))

    def min_eig(self):
        m = self._i_minus_w()
        sym = (m + jnp.conj(jnp.swapaxes(m, -1, -2))) / 2
        return jnp.min(jnp.linalg.eigvalsh(sym)[..., 0])


# --- splitting methods -----------------------------------------------------------------------


def _check_alpha(name: str, alpha) -> None:
    """A concrete step must be > 0; a traced one (a sweep over steps in `jit`) is taken as is."""
    if alpha is None or isinstance(alpha, jax.core.Tracer):
        return
    if not float(alpha) > 0:
        raise ValueError(f"{name}: `alpha` must be > 0, got {alpha!r}.")


class AbstractSplitting(eqx.Module):
    """How a monotone equilibrium is found (forward and backward pass alike).

    The step `alpha` is a pytree leaf: pass it as a JAX array (``PeacemanRachford(alpha=
    jnp.asarray(0.5))``) through `eqx.filter_jit` to try many steps with one compilation.
    """

    @abc.abstractmethod
    def step_size(self, op: AbstractMonotoneLinear) -> Array:
        """The alpha used for operator `op`."""

    def make_resolvent(
        self, op: AbstractMonotoneLinear, alpha, tol: float
    ) -> "AbstractResolvent | None":
        """The resolvent of ``I + alpha (I - W)`` the iteration applies, or `None` (no solve)."""
        return None


class ForwardBackward(AbstractSplitting):
    r"""Forward--backward splitting: $z \leftarrow \mathrm{relu}((1-\alpha) z + \alpha(Wz + b))$.

    One application of W per iteration and no linear solve. Converges for
    $0 < \alpha < 2m / \|I - W\|_2^2$ (the map is then a contraction with factor at most
    $\sqrt{1 - 2\alpha m + \alpha^2 \|I - W\|^2}$); larger steps may diverge.

    **Arguments:** `alpha`: the step; `None` (default) uses $m / \|I - W\|_2^2$, the step that
    minimises that contraction bound, computed exactly from the current W at every call.
    """

    alpha: float | Array | None = None

    def __check_init__(self):
        _check_alpha("ForwardBackward", self.alpha)

    def step_size(self, op):
        if self.alpha is not None:
            return jnp.asarray(self.alpha)
        lip = jax.lax.stop_gradient(op.lipschitz())
        return op.monotonicity / lip**2


class PeacemanRachford(AbstractSplitting):
    r"""Peaceman--Rachford splitting: converges for every $\alpha > 0$.

    Each iteration applies $V^{-1}$, $V = I + \alpha(I - W)$, and one W (for the residual test).

    **Arguments:**

    - `alpha`: the step (default 1.0, as in Winston & Kolter).
    - `resolvent`: ``"factor"`` (default: factorise V once per call, exactly: LU for
      [`DenseMonotone`][], per-frequency inverses for [`ConvMonotone`][]) or ``"gmres"``
      (matrix-free GMRES at every iteration, for states too large to factorise).
    - `linear_rtol` (default: the solve's tolerance / 10) and `linear_max_steps` (default 50):
      the GMRES solves.
    """

    alpha: float | Array = 1.0
    resolvent: str = eqx.field(default="factor", static=True)
    linear_rtol: float | None = eqx.field(default=None, static=True)
    linear_max_steps: int = eqx.field(default=50, static=True)

    def __check_init__(self):
        _check_alpha("PeacemanRachford", self.alpha)
        if self.resolvent not in ("factor", "gmres"):
            raise ValueError(
                f"PeacemanRachford: `resolvent` must be 'factor' or 'gmres', got "
                f"{self.resolvent!r}."
            )

    def step_size(self, op):
        return jnp.asarray(self.alpha)

    def make_resolvent(self, op: AbstractMonotoneLinear, alpha, tol: float) -> AbstractResolvent:
        if self.resolvent == "factor":
            return op.resolvent(alpha)
        rtol = tol / 10 if self.linear_rtol is None else self.linear_rtol
        return _KrylovResolvent(op, alpha, rtol, self.linear_max_steps)


SPLITTINGS = {"forward_backward": ForwardBackward, "peaceman_rachford": PeacemanRachford}
"""Splitting names accepted by [`monotone_fixed_point`][] and [`resode.nn.MonotoneDEQ`][]."""


def resolve_splitting(splitting) -> AbstractSplitting:
    """A splitting name (forward_backward, peaceman_rachford) or object, as an object."""
    example = "resode.PeacemanRachford(alpha=0.5)"
    return _resolve(splitting, SPLITTINGS, AbstractSplitting, "splitting", example)


# --- one problem, one iteration loop ---------------------------------------------------------


class _Problem(eqx.Module):
    """z = prox(W z + bias) (forward: prox = relu) or w = mask (W^T w + bias) (backward)."""

    op: AbstractMonotoneLinear
    bias: Array
    mask: Array | None
    transpose: bool = eqx.field(static=True)

    def apply(self, z):
        # The state may be wider than the operator (a float32 state for bfloat16 weights, see
        # `monotone_fixed_point`): W is applied in its own dtype, the result kept in the state's.
        zc = z.astype(_op_dtype(self.op))
        out = self.op.rmatvec(zc) if self.transpose else self.op.matvec(zc)
        return out.astype(z.dtype)

    def prox(self, v):
        return jax.nn.relu(v) if self.mask is None else self.mask * v

    def __call__(self, z, args=None):
        return self.prox(self.apply(z) + self.bias)


class _SplitIteration(AbstractFixedPointSolver):
    """A splitting as a solver of resode's fixed-point loop (best iterate, stopping, safeguard)."""

    problem: _Problem
    alpha: Array
    resolvent: AbstractResolvent | None
    tol: float | None = eqx.field(static=True)
    atol: float = eqx.field(default=0.0, static=True)
    max_steps: int = eqx.field(default=50, static=True)

    @property
    def update_when_done(self) -> bool:
        # A discarded extra update is harmless unless it counts Krylov steps (GMRES resolvent).
        return not isinstance(self.resolvent, _KrylovResolvent)

    def init(self, z, args):
        if self.resolvent is None:
            return None
        return z, jnp.array(0, jnp.int32)  # (u, linear steps)

    def evaluate(self, fn, z, args):
        v = self.problem.apply(z) + self.problem.bias
        return self.problem.prox(v), v

    def update(self, z, fz, v, state, tol):
        a = self.alpha.astype(z.dtype)
        if self.resolvent is None:  # forward-backward
            return self.problem.prox((1 - a) * z + a * v), state
        u, steps = state
        u_half = 2 * z - u
        z_half, k = self.resolvent.solve(u_half + a * self.problem.bias, self.problem.transpose)
        u = 2 * z_half - u_half
        return self.problem.prox(u), (u, steps + k)

    def stats(self, state):
        if state is None:
            return {}
        return {"num_linear_steps": state[1]}


def _solve(problem, alpha, resolvent, z0, tol, max_steps) -> FixedPointSolution:
    it = _SplitIteration(problem, alpha, resolvent, tol=tol, max_steps=max_steps)
    sol = iterate(it, problem, z0, None, tol=tol, max_steps=max_steps)
    stats = dict(sol.stats)
    stats["alpha"] = alpha
    return eqx.tree_at(lambda s: s.stats, sol, stats)


@eqx.filter_custom_vjp
def _adjoint_identity(y_probe, problem_parts, tol, max_steps):
    del problem_parts, tol, max_steps
    return y_probe[0]


@_adjoint_identity.def_fwd
def _adjoint_identity_fwd(perturbed, y_probe, problem_parts, tol, max_steps):
    del perturbed, problem_parts, tol, max_steps
    return y_probe[0], None


@_adjoint_identity.def_bwd
def _adjoint_identity_bwd(residuals, grad_y, perturbed, y_probe, problem_parts, tol, max_steps):
    del residuals, perturbed
    y, probe = y_probe
    op, mask, alpha, resolvent = problem_parts
    g = jnp.zeros_like(y) if grad_y is None else grad_y
    gw = _wide(g)  # the splitting's state is at least float32, like the forward solve's
    problem = _Problem(op, gw, mask.astype(gw.dtype), transpose=True)
    sol = _solve(problem, alpha, resolvent, jnp.zeros_like(gw), tol, max_steps)
    # u = (I - W^T D)^{-1} g = g + W^T w, with w = D u the splitting's fixed point.
    u = g + op.rmatvec(sol.value.astype(g.dtype))
    if probe is None:
        grad_probe = None
    else:
        fields = (jnp.ones(()), sol.num_steps, sol.residual, ~sol.converged)
        grad_probe = jnp.stack([jnp.asarray(x, probe.dtype) for x in fields])
    return u, grad_probe


def monotone_fixed_point(
    linear: AbstractMonotoneLinear,
    bias: Array,
    z0: Array | None = None,
    *,
    solver: "str | AbstractSplitting" = "peaceman_rachford",
    tol: float = 1e-6,
    max_steps: int = 50,
    backward_tol: float | None = None,
    backward_max_steps: int | None = None,
    probe: Array | None = None,
) -> FixedPointSolution:
    r"""Solve $z = \mathrm{relu}(W z + b)$ for one example; W is `linear` (monotone).

    **Arguments:**

    - `linear`: an [`AbstractMonotoneLinear`][] ([`DenseMonotone`][], [`ConvMonotone`][]).
    - `bias`: b, shaped like the state (e.g. ``U x + b0``: the injected input).
    - `z0`: the starting point (default zeros); it gets no gradient.
    - `solver`: ``"peaceman_rachford"`` (default), ``"forward_backward"`` or an object
      ([`PeacemanRachford`][], [`ForwardBackward`][]).
    - `tol`, `max_steps`: as in [`resode.fixed_point`][] (relative residual
      ``||f(z) - z|| <= tol ||f(z)||``).
    - `backward_tol`, `backward_max_steps`: the backward splitting solve (default: the forward
      ones).
    - `probe`: observe the backward solve (see [`backward_probe`][]).

    **Mixed precision.** With a 16-bit `bias` (bfloat16 training) W is applied in the operator's
    dtype but the splitting's state, resolvent and residuals are float32, and `tol` and
    `backward_tol` are never below the 16-bit epsilon
    ([`precision_floor`][resode.solvers.precision_floor]); the value is returned in the bias's
    dtype.

    **Returns:** a [`FixedPointSolution`][]; `stats` holds ``alpha`` (the step used) and, for
    Peaceman--Rachford with GMRES, ``num_linear_steps``. Differentiable with respect to the
    arrays of `linear` and to `bias` (exact implicit gradient, solved by the same splitting);
    under `jax.vmap` with shared weights the weight gradient is one batched product, not one per
    example.
    """
    if not isinstance(linear, AbstractMonotoneLinear):
        raise TypeError(
            "monotone_fixed_point: `linear` must be an AbstractMonotoneLinear (DenseMonotone, "
            f"ConvMonotone), got {type(linear).__name__}."
        )
    splitting = resolve_splitting(solver)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol > 0:
        raise ValueError(f"monotone_fixed_point: `tol` must be a number > 0, got {tol!r}.")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(
            f"monotone_fixed_point: `max_steps` must be an integer >= 1, got {max_steps!r}."
        )
    bias = jnp.asarray(bias)
    if bias.shape != tuple(linear.state_shape):
        raise ValueError(
            f"monotone_fixed_point: `bias` has shape {bias.shape}, the operator's state has shape "
            f"{tuple(linear.state_shape)}."
        )
    z0 = jnp.zeros_like(bias) if z0 is None else jax.lax.stop_gradient(jnp.asarray(z0, bias.dtype))
    if z0.shape != bias.shape:
        raise ValueError(f"monotone_fixed_point: `z0` has shape {z0.shape}, expected {bias.shape}.")
    live = linear.prepared()  # W formed once: differentiable here, frozen for the solves
    frozen = _stop(live)
    # A 16-bit bias (mixed precision): the splitting's state is float32 and W is applied in its
    # own dtype, so that small steps (forward-backward) are not rounded away; the tolerances are
    # never below the 16-bit epsilon, the accuracy of each application of W.
    floor = precision_floor(bias.dtype)
    tol = max(tol, floor)
    backward_tol = max(tol if backward_tol is None else backward_tol, floor)
    wide = _wide(bias).dtype
    alpha = jnp.asarray(splitting.step_size(frozen), wide)
    resolvent = splitting.make_resolvent(frozen, alpha, tol)
    problem = _Problem(frozen, jax.lax.stop_gradient(bias).astype(wide), None, False)
    sol = _solve(problem, alpha, resolvent, z0.astype(wide), tol, max_steps)
    z_star = sol.value.astype(bias.dtype)
    # One differentiable application at z*: its gradient is D dv/dtheta; the identity below
    # turns the incoming cotangent into (I - W^T D)^{-1} zbar. Value: exactly z*.
    v = live.matvec(z_star) + bias
    fz = jax.nn.relu(v)
    y = z_star + (fz - jax.lax.stop_gradient(fz))
    mask = (jax.lax.stop_gradient(v) > 0).astype(bias.dtype)
    value = _adjoint_identity(
        (y, probe),
        (frozen, mask, alpha, resolvent),
        backward_tol,
        max_steps if backward_max_steps is None else backward_max_steps,
    )
    return eqx.tree_at(lambda s: s.value, sol, value)
