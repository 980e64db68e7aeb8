"""Spectral normalisation of a field's linear maps: exact norms, or power iteration with state.

A layer used as ``W min(1, c / sigma(W))`` has spectral norm at most c when sigma is the exact
norm. Two ways to get sigma:

- ``"exact"``: a singular-value decomposition of a dense weight, or, for a convolution, the
  largest singular value of its kernel's Fourier symbol on a grid (Sedghi, Gupta & Long, "The
  Singular Values of Convolutional Layers", ICLR 2019): exact for the circular convolution on
  that grid, and an upper bound for the zero-padded 'same' convolution on every input up to the
  grid size minus the kernel size plus one. Certified at every step; costs an SVD per call.
- ``"power"``: one power iteration per call from a stored left singular vector u (Miyato et al.,
  "Spectral Normalization for Generative Adversarial Networks", ICLR 2018). sigma = u'ᵀ W v with
  v = Wᵀu/|Wᵀu|, u' = Wv/|Wv| (u, u', v held constant for the gradient). sigma never exceeds the
  true norm, so the bound is approximate; the training loop keeps u across steps
  ([`update_spectral_state`][]), where one iteration per step tracks the slowly changing W.
  Certify a trained model with [`resode.analysis.lipschitz_constant`][], which takes exact norms.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

SPECTRAL_METHODS = ("exact", "power")
"""Values of a field's `spectral_method` (and of the config key ``model.body.spectral_method``)."""


def check_spectral(owner: str, bound, method: str) -> float | None:
    """Validate `spectral_bound` / `spectral_method` of field `owner`; the bound as a float."""
    if method not in SPECTRAL_METHODS:
        raise ValueError(
            f"{owner}: unknown `spectral_method` {method!r}. Valid: {', '.join(SPECTRAL_METHODS)}."
        )
    if bound is None:
        return None
    if not bound > 0:
        raise ValueError(f"{owner}: `spectral_bound` must be > 0, got {bound!r}.")
    return float(bound)


def _unit(v: Array, axes) -> Array:
    return v / jnp.maximum(jnp.sqrt(jnp.sum(jnp.square(v), axis=axes, keepdims=True)), 1e-30)


def scaled(w: Array, sigma: Array, c: float) -> Array:
    """``w min(1, c / sigma)``; `sigma` broadcasts against `w`."""
    return w * jnp.minimum(1.0, c / jnp.maximum(sigma, 1e-30))


def dense_power_sigma(w: Array, u: Array) -> tuple[Array, Array]:
    """(sigma, u') of one power iteration on ``w`` (..., out, in) from ``u`` (..., out).

    sigma (shape (..., 1, 1)) is differentiable in `w` with u', v held constant; u' is the next
    state (no gradient)."""
    dtype = u.dtype
    u = jax.lax.stop_gradient(u).astype(w.dtype)
    wc = jax.lax.stop_gradient(w)
    v = _unit(jnp.einsum("...oi,...o->...i", wc, u), -1)
    u_next = _unit(jnp.einsum("...oi,...i->...o", wc, v), -1)
    sigma = jnp.einsum("...o,...oi,...i->...", u_next, w, v)
    return sigma[..., None, None], u_next.astype(dtype)


def conv_symbol_norm(weight: Array, grid: tuple[int, ...]) -> Array:
    """Largest singular value of a convolution kernel's Fourier symbol on `grid`.

    `weight`: ``(out, in, *kernel)``, as in `eqx.nn.Conv`. This is exactly the spectral norm of the
    circular convolution on `grid` (Sedghi et al. 2019) and bounds the norm of the zero-padded
    convolution on any input whose spatial sizes are at most ``grid - kernel + 1``.
    Differentiable (through an SVD of one ``out x in`` matrix per frequency).
    """
    nd = weight.ndim - 2
    if len(grid) != nd:
        raise ValueError(f"conv_symbol_norm: grid {grid} has {len(grid)} axes, kernel has {nd}.")
    for n, k in zip(grid, weight.shape[2:], strict=True):
        if n < k:
            raise ValueError(f"conv_symbol_norm: grid {grid} is smaller than the kernel.")
    symbol = jnp.fft.fftn(
        weight.astype(jnp.promote_types(weight.dtype, jnp.float32)),
        s=grid,
        axes=tuple(range(2, 2 + nd)),
    )
    symbol = jnp.moveaxis(symbol.reshape(weight.shape[0], weight.shape[1], -1), -1, 0)
    return jnp.max(jnp.linalg.norm(symbol, ord=2, axis=(-2, -1)))


def conv_grid(spatial_shape: tuple[int, ...], kernel: tuple[int, ...]) -> tuple[int, ...]:
    """The smallest circular grid whose symbol norm bounds a 'same' convolution on
    `spatial_shape`."""
    return tuple(int(n) + int(k) - 1 for n, k in zip(spatial_shape, kernel, strict=True))


def correlate(weight: Array, x: Array) -> Array:
    """The bias-free, stride-1, zero-padded 'same' cross-correlation of one example
    ``x`` (in, *spatial) with ``weight`` (out, in, *kernel) (the linear part of `conv_same`)."""
    nd = weight.ndim - 2
    pads = [((k - 1) // 2, k - 1 - (k - 1) // 2) for k in weight.shape[2:]]
    return jax.lax.conv_general_dilated(x[None], weight.astype(x.dtype), (1,) * nd, pads)[0]


def conv_power_sigma(weight: Array, u: Array, in_shape: tuple[int, ...]) -> tuple[Array, Array]:
    """(sigma, u') of one power iteration on the zero-padded convolution with `weight` from a
    left vector ``u`` (out, *spatial); `in_shape` is the input's (in, *spatial) shape."""
    dtype = u.dtype
    wc = jax.lax.stop_gradient(weight)
    u = jax.lax.stop_gradient(u).astype(weight.dtype)
    op = lambda x: correlate(wc, x)
    (v,) = jax.linear_transpose(op, jnp.zeros(in_shape, weight.dtype))(u)
    axes = tuple(range(v.ndim))
    v = _unit(v, axes)
    u_next = _unit(op(v), axes)
    sigma = jnp.vdot(u_next, correlate(weight, v))
    return sigma, u_next.astype(dtype)


def init_vector(key, shape, dtype=jnp.float32) -> Array:
    """A random unit vector (the first state of a power iteration)."""
    return _unit(jax.random.normal(key, shape, dtype), tuple(range(len(shape))))


def vmap_leading(fn, extra: int):
    """`fn` mapped over `extra` leading axes of every argument (stacked untied fields)."""
    for _ in range(extra):
        fn = eqx.filter_vmap(fn)
    return fn


def spectral_fields(model):
    """Every field of `model` that keeps a power-iteration state (pre-order)."""
    is_sn = lambda m: getattr(m, "spectral_state", None) is not None and isinstance(m, eqx.Module)
    return [m for m in jax.tree_util.tree_leaves(model, is_leaf=is_sn) if is_sn(m)]


def update_spectral_state(model):
    """`model` with every power-iteration state advanced by one iteration from the current
    weights (fields with ``spectral_method="power"``; others unchanged).

    The training loop ([`resode.train.Trainer`][]) calls this after every optimiser step, so that
    the stored singular vectors follow the weights; call it yourself in a hand-written loop. A
    forward pass never changes the state: within one solve or stack every call of a field uses the
    same normalised weights.
    """
    is_sn = lambda m: getattr(m, "spectral_state", None) is not None and isinstance(m, eqx.Module)
    return jax.tree_util.tree_map(
        lambda m: m.advanced_spectral_state() if is_sn(m) else m, model, is_leaf=is_sn
    )


def buffer_mask(model):
    """A pytree like `model` with True at its buffers, the arrays that are data or state rather
    than parameters (power-iteration vectors of spectrally normalised fields, a graph field's
    Laplacian), and False elsewhere. The training loop never optimises buffers, and
    [`resode.nn.count_params`][] does not count them."""
    from ._fields import GraphField

    is_sn = lambda m: getattr(m, "spectral_state", None) is not None and isinstance(m, eqx.Module)
    is_buffer_owner = lambda m: is_sn(m) or isinstance(m, GraphField)

    def mark(m):
        mask = jax.tree_util.tree_map(lambda _: False, m)
        if not is_buffer_owner(m):
            return mask
        where = (
            (lambda f: f.laplacian) if isinstance(m, GraphField) else (lambda f: f.spectral_state)
        )
        return eqx.tree_at(
            where, mask, replace_fn=lambda s: jax.tree_util.tree_map(lambda _: True, s)
        )

    return jax.tree_util.tree_map(mark, model, is_leaf=is_buffer_owner)
