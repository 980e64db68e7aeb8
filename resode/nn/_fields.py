"""Vector fields f(t, y, args) as equinox modules.

Every field acts on one example (vmap over a batch), returns an array shaped like `y`, accepts an
optional injected input `args` with the shape of `y` (added to the state first: the input
injection of a deep-equilibrium layer, ``f(z + x)``), and with ``time_dependent=True`` sees the
time `t` as an extra input feature or channel.
"""

import abc
import itertools
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._spectral import (
    check_spectral,
    conv_grid,
    conv_power_sigma,
    conv_symbol_norm,
    dense_power_sigma,
    init_vector,
    scaled,
    vmap_leading,
)


def _zero_last(layer):
    """The same layer with zero weight and bias, so that a residual block starts as the identity."""
    layer = eqx.tree_at(lambda m: m.weight, layer, jnp.zeros_like(layer.weight))
    if getattr(layer, "bias", None) is None:
        return layer
    return eqx.tree_at(lambda m: m.bias, layer, jnp.zeros_like(layer.bias))


def _inject(y, args):
    return y if args is None else y + args


class AbstractVectorField(eqx.Module):
    """A learnable vector field ``f(t, y, args)``; `args` is an optional injection (shape of y)."""

    @abc.abstractmethod
    def __call__(self, t, y: Array, args: Array | None = None) -> Array: ...


def soft_threshold(u: Array, threshold: float) -> Array:
    r"""The soft-thresholding (shrinkage) nonlinearity ``sign(u) max(|u| - threshold, 0)``.

    Exactly zero on ``[-threshold, threshold]`` (a dead zone), 1-Lipschitz. As the activation of a
    bias-free [`MLPField`][] (``activation=functools.partial(soft_threshold, threshold=tau)``,
    ``use_bias=False``) the block ``x + W_2 soft(W_1 x)`` is exactly the identity wherever every
    pre-activation lies in the dead zone.
    """
    return jnp.sign(u) * jnp.maximum(jnp.abs(u) - threshold, 0.0)


class MLPField(AbstractVectorField):
    """``f(t, y) = W_L act(... act(W_1 [y + x, t] + b_1) ...) + b_L`` on vectors of size `dim`.

    **Arguments:** `dim` (state size), `hidden` (width), `depth` (hidden layers, default 1),
    `activation` (default tanh), `time_dependent` (append t as an input), `zero_init` (zero last
    layer: a residual step starts as the identity), `use_bias` (default True; False gives
    ``W_L act(... act(W_1 y))``), `key` (keyword-only).

    `spectral_bound` (default `None`): spectral normalisation with a target bound K. Every
    layer's weight is used as ``W min(1, c / sigma(W))`` with ``c = K^(1/L)`` over the L layers,
    so that with a 1-Lipschitz activation the field is K-Lipschitz in y, and a residual step
    ``y + h f(y)`` is (1 + hK)-Lipschitz (certified: [`resode.analysis.lipschitz_bound`][]).
    `spectral_method` chooses sigma: ``"exact"`` (default; a singular-value decomposition per layer
    and call, differentiated through: the bound holds at every step) or ``"power"`` (one power
    iteration per call from a stored singular vector, `spectral_state`, which
    [`resode.nn.update_spectral_state`][] advances after each optimiser step, as the training loop
    does; cheaper, and the bound holds up to the power iteration's error: certify with
    [`resode.analysis.lipschitz_constant`][]).
    """

    layers: tuple[eqx.nn.Linear, ...]
    activation: Callable = eqx.field(static=True)
    time_dependent: bool = eqx.field(static=True)
    spectral_bound: float | None = eqx.field(default=None, static=True)
    spectral_method: str = eqx.field(default="exact", static=True)
    spectral_state: tuple[Array, ...] | None = None

    def __init__(
        self,
        dim: int,
        hidden: int,
        depth: int = 1,
        *,
        activation: Callable = jax.nn.tanh,
        time_dependent: bool = False,
        zero_init: bool = False,
        use_bias: bool = True,
        spectral_bound: float | None = None,
        spectral_method: str = "exact",
        key: PRNGKeyArray,
    ):
        if depth < 1:
            raise ValueError(f"MLPField: `depth` must be >= 1, got {depth}.")
        spectral_bound = check_spectral("MLPField", spectral_bound, spectral_method)
        keys = jax.random.split(key, depth + 1)
        sizes = [dim + int(time_dependent)] + [hidden] * depth + [dim]
        layers = [
            eqx.nn.Linear(a, b, use_bias=use_bias, key=k)
            for a, b, k in zip(sizes[:-1], sizes[1:], keys, strict=True)
        ]
        if zero_init:
            layers[-1] = _zero_last(layers[-1])
        self.layers = tuple(layers)
        self.activation = activation
        self.time_dependent = time_dependent
        self.spectral_bound = spectral_bound
        self.spectral_method = spectral_method
        self.spectral_state = None
        if spectral_bound is not None and spectral_method == "power":
            ks = jax.random.split(jax.random.fold_in(key, 1), len(layers))
            self.spectral_state = tuple(
                init_vector(k, (layer.weight.shape[0],), layer.weight.dtype)
                for k, layer in zip(ks, layers, strict=True)
            )

    def _sigmas(self, ws):
        """sigma per layer and the power iteration's next state (None for exact norms)."""
        if self.spectral_method == "exact":
            return [jnp.linalg.norm(w, ord=2, axis=(-2, -1), keepdims=True) for w in ws], None
        pairs = [dense_power_sigma(w, u) for w, u in zip(ws, self.spectral_state, strict=True)]
        return [p[0] for p in pairs], tuple(p[1] for p in pairs)

    def weights(self) -> tuple[Array, ...]:
        """The weight matrices as the field uses them (spectrally normalised when
        `spectral_bound` is set; for a stacked untied field, with the leading step axis)."""
        ws = tuple(layer.weight for layer in self.layers)
        if self.spectral_bound is None:
            return ws
        c = self.spectral_bound ** (1.0 / len(ws))
        sigmas, _ = self._sigmas(ws)
        return tuple(scaled(w, sigma, c) for w, sigma in zip(ws, sigmas, strict=True))

    def advanced_spectral_state(self) -> "MLPField":
        """This field with its power-iteration state one iteration further (see
        [`resode.nn.update_spectral_state`][])."""
        _, state = self._sigmas(tuple(layer.weight for layer in self.layers))
        return eqx.tree_at(lambda f: f.spectral_state, self, state)

    def __call__(self, t, y: Float[Array, " dim"], args=None) -> Float[Array, " dim"]:
        h = _inject(y, args)
        if self.time_dependent:
            h = jnp.concatenate([h, jnp.reshape(jnp.asarray(t, h.dtype), (1,))])
        if self.spectral_bound is None:
            for layer in self.layers[:-1]:
                h = self.activation(layer(h))
            return self.layers[-1](h)
        ws = self.weights()
        for i, (layer, w) in enumerate(zip(self.layers, ws, strict=True)):
            h = w @ h
            if layer.bias is not None:
                h = h + layer.bias
            if i < len(ws) - 1:
                h = self.activation(h)
        return h


CONV_IMPLS = ("auto", "lax", "matmul")


def conv_same(conv: eqx.nn.Conv, x: Array, impl: str = "auto") -> Array:
    """Apply a stride-1, 'same'-padded `eqx.nn.Conv` to one example ``(channels, *spatial)``.

    ``impl="lax"`` calls the layer (``lax.conv_general_dilated``); ``impl="matmul"`` computes the
    same cross-correlation as one matrix product over the kernel's shifted windows (im2col), which
    XLA:CPU runs an order of magnitude faster than a convolution inside a loop (``lax.scan`` or
    ``while``: a tied or untied stack, a DEQ solve; jax-ml/jax#12868). ``"auto"`` (default) picks
    matmul on the CPU backend and lax elsewhere. Both give the same values to rounding.
    """
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv_same: unknown impl {impl!r}. Valid: {', '.join(CONV_IMPLS)}.")
    if impl == "auto":
        impl = "matmul" if jax.default_backend() == "cpu" else "lax"
    if impl == "lax":
        return conv(x)
    w = conv.weight  # (out, in, *kernel)
    kernel = w.shape[2:]
    spatial = x.shape[1:]
    pads = [(0, 0)] + [((k - 1) // 2, k - 1 - (k - 1) // 2) for k in kernel]
    xp = jnp.pad(x, pads)
    windows = [
        xp[(slice(None),) + tuple(slice(o, o + n) for o, n in zip(offset, spatial, strict=True))]
        for offset in itertools.product(*(range(k) for k in kernel))
    ]
    cols = jnp.stack(windows, axis=1)  # (in, prod(kernel), *spatial)
    out = jnp.tensordot(w.reshape(w.shape[0], w.shape[1], -1), cols, axes=([1, 2], [0, 1]))
    return out if conv.bias is None else out + conv.bias


class ConvField(AbstractVectorField):
    """A convolutional field: ``conv(hidden -> C)(act(conv(C -> hidden)(y + x)))``, 'same' padding.

    `num_spatial_dims=2` for images of shape ``(channels, height, width)``; `num_spatial_dims=1`
    for signals of shape ``(channels, length)`` such as MNIST-1D. With `time_dependent`, t is an
    extra constant input channel; `zero_init` zeroes the second convolution. `conv_impl` chooses
    how the convolutions run (see [`resode.nn.conv_same`][]): the default ``"auto"`` uses a
    matrix product on CPU, where XLA's convolution inside a stack's loop is slow.

    `spectral_bound` K (default `None`) with `spectral_shape` (the state's spatial shape, e.g.
    ``(28, 28)``; required with a bound): each convolution's kernel is used as
    ``w min(1, sqrt(K) / sigma(w))``, so that with a 1-Lipschitz activation the field is
    K-Lipschitz on states of that shape. `spectral_method`: ``"exact"`` (default; sigma is the
    largest singular value of the kernel's Fourier symbol on the grid ``spectral_shape + kernel -
    1``, which bounds the zero-padded convolution's norm, Sedghi et al. 2019) or ``"power"`` (one
    power iteration per call on the convolution itself from a stored vector, `spectral_state`, as
    for [`MLPField`][]).
    """

    conv_in: eqx.nn.Conv
    conv_out: eqx.nn.Conv
    activation: Callable = eqx.field(static=True)
    time_dependent: bool = eqx.field(static=True)
    conv_impl: str = eqx.field(static=True)
    spectral_bound: float | None = eqx.field(default=None, static=True)
    spectral_method: str = eqx.field(default="exact", static=True)
    spectral_shape: tuple[int, ...] | None = eqx.field(default=None, static=True)
    spectral_state: tuple[Array, Array] | None = None

    def __init__(
        self,
        channels: int,
        hidden: int,
        *,
        num_spatial_dims: int = 2,
        kernel_size: int = 3,
        activation: Callable = jax.nn.relu,
        time_dependent: bool = False,
        zero_init: bool = False,
        conv_impl: str = "auto",
        spectral_bound: float | None = None,
        spectral_method: str = "exact",
        spectral_shape: tuple[int, ...] | None = None,
        key: PRNGKeyArray,
    ):
        if num_spatial_dims not in (1, 2, 3):
            raise ValueError(
                f"ConvField: `num_spatial_dims` must be 1, 2 or 3, got {num_spatial_dims}."
            )
        if conv_impl not in CONV_IMPLS:
            raise ValueError(
                f"ConvField: unknown `conv_impl` {conv_impl!r}. Valid: {', '.join(CONV_IMPLS)}."
            )
        spectral_bound = check_spectral("ConvField", spectral_bound, spectral_method)
        if spectral_bound is not None:
            if spectral_shape is None or len(tuple(spectral_shape)) != num_spatial_dims:
                raise ValueError(
                    f"ConvField: `spectral_bound` needs `spectral_shape`, the state's "
                    f"{num_spatial_dims} spatial sizes, got {spectral_shape!r}."
                )
            spectral_shape = tuple(int(n) for n in spectral_shape)
        k1, k2 = jax.random.split(key)
        c_in = channels + int(time_dependent)
        conv = lambda a, b, k: eqx.nn.Conv(
            num_spatial_dims, a, b, kernel_size, padding="SAME", key=k
        )
        self.conv_in = conv(c_in, hidden, k1)
        self.conv_out = (
            _zero_last(conv(hidden, channels, k2)) if zero_init else conv(hidden, channels, k2)
        )
        self.activation = activation
        self.time_dependent = time_dependent
        self.conv_impl = conv_impl
        self.spectral_bound = spectral_bound
        self.spectral_method = spectral_method
        self.spectral_shape = spectral_shape if spectral_bound is not None else None
        self.spectral_state = None
        if spectral_bound is not None and spectral_method == "power":
            ka, kb = jax.random.split(jax.random.fold_in(key, 1))
            self.spectral_state = (
                init_vector(ka, (hidden, *spectral_shape), self.conv_in.weight.dtype),
                init_vector(kb, (channels, *spectral_shape), self.conv_out.weight.dtype),
            )

    def _sigmas(self):
        """(sigma_in, sigma_out) and the power iteration's next state (None for exact norms) of
        an unstacked field."""
        convs = (self.conv_in, self.conv_out)
        if self.spectral_method == "exact":
            grids = [conv_grid(self.spectral_shape, c.weight.shape[2:]) for c in convs]
            return [conv_symbol_norm(c.weight, g) for c, g in zip(convs, grids, strict=True)], None
        pairs = [
            conv_power_sigma(c.weight, u, (c.weight.shape[1], *self.spectral_shape))
            for c, u in zip(convs, self.spectral_state, strict=True)
        ]
        return [p[0] for p in pairs], tuple(p[1] for p in pairs)

    def _extra_axes(self) -> int:
        return self.conv_in.weight.ndim - 2 - len(self.spectral_shape)

    def kernels(self) -> tuple[Array, Array]:
        """The two kernels as the field uses them (spectrally normalised when `spectral_bound`
        is set; for a stacked untied field, with the leading step axis)."""
        ws = (self.conv_in.weight, self.conv_out.weight)
        if self.spectral_bound is None:
            return ws

        def one(field):
            sigmas, _ = field._sigmas()
            c = math.sqrt(field.spectral_bound)
            w = (field.conv_in.weight, field.conv_out.weight)
            return tuple(scaled(wi, si, c) for wi, si in zip(w, sigmas, strict=True))

        return vmap_leading(one, self._extra_axes())(self)

    def advanced_spectral_state(self) -> "ConvField":
        """This field with its power-iteration state one iteration further (see
        [`resode.nn.update_spectral_state`][])."""
        state = vmap_leading(lambda f: f._sigmas()[1], self._extra_axes())(self)
        return eqx.tree_at(lambda f: f.spectral_state, self, state)

    def __call__(self, t, y: Array, args=None) -> Array:
        h = _inject(y, args)
        if self.time_dependent:
            h = jnp.concatenate([h, jnp.full((1,) + h.shape[1:], t, h.dtype)])
        conv_in, conv_out = self.conv_in, self.conv_out
        if self.spectral_bound is not None:
            w_in, w_out = self.kernels()
            conv_in = eqx.tree_at(lambda c: c.weight, conv_in, w_in)
            conv_out = eqx.tree_at(lambda c: c.weight, conv_out, w_out)
        h = self.activation(conv_same(conv_in, h, self.conv_impl))
        return conv_same(conv_out, h, self.conv_impl)


class AttentionField(AbstractVectorField):
    """The attention sub-block of a pre-norm transformer: ``MHA(LN(y + x))`` on ``(seq, dim)``.

    With ``layer_norm=False`` the normalisation is left out, ``MHA(y + x)`` (the attention then
    sees the raw state, whose scale grows along a residual stack). With `time_dependent`, ``t`` is
    added to the (normalised) input as a constant feature shift. `zero_init` zeroes the output
    projection (the block starts as the identity).
    """

    norm: eqx.nn.LayerNorm | None
    attention: eqx.nn.MultiheadAttention
    time_dependent: bool = eqx.field(static=True)

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        time_dependent=False,
        zero_init=False,
        layer_norm: bool = True,
        key,
    ):
        if dim % num_heads:
            raise ValueError(
                f"AttentionField: `dim` ({dim}) must be divisible by `num_heads` ({num_heads})."
            )
        self.norm = eqx.nn.LayerNorm(dim) if layer_norm else None
        attention = eqx.nn.MultiheadAttention(num_heads, dim, key=key)
        if zero_init:
            attention = eqx.tree_at(
                lambda m: m.output_proj, attention, _zero_last(attention.output_proj)
            )
        self.attention = attention
        self.time_dependent = time_dependent

    def __call__(self, t, y: Float[Array, "seq dim"], args=None) -> Float[Array, "seq dim"]:
        h = _inject(y, args)
        if self.norm is not None:
            h = jax.vmap(self.norm)(h)
        if self.time_dependent:
            h = h + jnp.asarray(t, h.dtype)
        return self.attention(h, h, h)


MONOTONE_ACTIVATIONS = (
    jax.nn.tanh,
    jnp.tanh,
    jax.nn.relu,
    jax.nn.leaky_relu,
    jax.nn.elu,
    jax.nn.softplus,
    jax.nn.sigmoid,
)
"""Activations that are nondecreasing with slope at most 1 (what [`DissipativeField`][] needs)."""


class DissipativeField(AbstractVectorField):
    r"""A monotone (dissipative) field: ``f(t, y, x) = -Wᵀ act(W (y + x) + b + t c) - m (y + x)``.

    Its Jacobian $-W^\top D W - mI$ (D diagonal, the activation's slopes in [0, 1]) is symmetric
    with eigenvalues in $[-(\|W\|_2^2 + m), -m]$: $-f$ is a strongly monotone operator,
    $\langle f(a) - f(b), a - b\rangle \le -m\|a - b\|^2$ (one-sided Lipschitz constant
    $-m$). It is the gradient flow of the concave potential $-\sum_i \Phi(w_i \cdot y + b_i) -
    m\|y\|^2/2$ ($\Phi' =$ act). Consequences, certified by
    [`resode.analysis.stack_lipschitz_bound`][]: a backward-Euler step ``y' = y + h f(y')`` is
    $1/(1 + hm)$-Lipschitz for every h > 0 (so every algebraically stable implicit scheme, e.g.
    Gauss or Radau IIA, gives a non-expansive step), and an explicit Euler step is
    $\max(|1 - hm|, |1 - h(\|W\|^2 + m)|)$-Lipschitz, at most 1 when
    $h \le 2/(\|W\|^2 + m)$ (the convex-potential layers of Meunier et al., "A Dynamical System
    Perspective for Lipschitz Neural Networks", ICML 2022).

    **Arguments:** `dim` (state size), `hidden` (rows of W), `margin` m >= 0 (default 0),
    `activation` (nondecreasing with slope <= 1, one of `MONOTONE_ACTIVATIONS`; default tanh),
    `time_dependent` (adds ``t c`` to the pre-activation, learned c), `key` (keyword-only).
    """

    weight: Array
    bias: Array
    time_weight: Array | None
    margin: float = eqx.field(static=True)
    activation: Callable = eqx.field(static=True)

    def __init__(
        self,
        dim: int,
        hidden: int,
        *,
        margin: float = 0.0,
        activation: Callable = jax.nn.tanh,
        time_dependent: bool = False,
        key: PRNGKeyArray,
    ):
        if not margin >= 0:
            raise ValueError(f"DissipativeField: `margin` must be >= 0, got {margin!r}.")
        if activation not in MONOTONE_ACTIVATIONS:
            raise ValueError(
                f"DissipativeField: activation {activation} is not known to be nondecreasing "
                "with slope <= 1; use one of resode.nn.MONOTONE_ACTIVATIONS."
            )
        kw, kb = jax.random.split(key)
        self.weight = jax.random.normal(kw, (hidden, dim)) / jnp.sqrt(dim)
        self.bias = 0.1 * jax.random.normal(kb, (hidden,))
        self.time_weight = jnp.zeros(hidden) if time_dependent else None
        self.margin = float(margin)
        self.activation = activation

    def __call__(self, t, y: Float[Array, " dim"], args=None) -> Float[Array, " dim"]:
        u = _inject(y, args)
        pre = self.weight @ u + self.bias
        if self.time_weight is not None:
            pre = pre + jnp.asarray(t, pre.dtype) * self.time_weight
        return -(self.weight.T @ self.activation(pre)) - self.margin * u


def normalized_laplacian(adjacency: Float[Array, "n n"]) -> Float[Array, "n n"]:
    """``L = I - D^{-1/2} A D^{-1/2}`` of a symmetric adjacency matrix (isolated node: L_ii = 1)."""
    adjacency = jnp.asarray(adjacency)
    degree = adjacency.sum(axis=1)
    inv_sqrt = jnp.where(degree > 0, 1.0 / jnp.sqrt(jnp.where(degree > 0, degree, 1.0)), 0.0)
    return (
        jnp.eye(adjacency.shape[0], dtype=adjacency.dtype)
        - inv_sqrt[:, None] * adjacency * inv_sqrt[None, :]
    )


GRAPH_OPERATORS = ("laplacian", "adjacency")
"""Values of `GraphField(operator=...)`: ``-L`` (diffusion) or ``I - L`` (GCN propagation)."""


class GraphField(AbstractVectorField):
    """Graph diffusion with learned channel mixing: ``f(X) = act(-L (X + x) W)`` on
    ``(nodes, dim)``.

    `laplacian` is fixed data (a buffer, never trained: see [`buffer_mask`][]; e.g.
    [`normalized_laplacian`][]); `W` is learned. ``operator="adjacency"`` uses ``I - L`` instead
    of ``-L`` (with a normalised Laplacian, the GCN propagation ``Â X W``: the layer of a plain,
    skip-free graph network; ``X + h(-L X)`` is its residual counterpart). `activation` (default
    None: linear) is applied last. With `time_dependent`, the output is scaled by ``(1 + t c)``
    with a learned vector c.
    """

    laplacian: Array
    weight: Array
    time_scale: Array | None
    time_dependent: bool = eqx.field(static=True)
    operator: str = eqx.field(default="laplacian", static=True)
    activation: Callable | None = eqx.field(default=None, static=True)

    def __init__(
        self,
        dim: int,
        laplacian: Array,
        *,
        time_dependent=False,
        operator: str = "laplacian",
        activation: Callable | None = None,
        key,
    ):
        laplacian = jnp.asarray(laplacian)
        if laplacian.ndim != 2 or laplacian.shape[0] != laplacian.shape[1]:
            raise ValueError(
                f"GraphField: `laplacian` must be square, got shape {laplacian.shape}."
            )
        if operator not in GRAPH_OPERATORS:
            raise ValueError(
                f"GraphField: unknown `operator` {operator!r}. Valid: {', '.join(GRAPH_OPERATORS)}."
            )
        self.laplacian = laplacian
        self.weight = jax.random.normal(key, (dim, dim)) / jnp.sqrt(dim)
        self.time_scale = jnp.zeros(dim) if time_dependent else None
        self.time_dependent = time_dependent
        self.operator = operator
        self.activation = activation

    def __call__(self, t, y: Float[Array, "nodes dim"], args=None) -> Float[Array, "nodes dim"]:
        L = jax.lax.stop_gradient(self.laplacian).astype(y.dtype)
        h = _inject(y, args)
        h = (h - L @ h) if self.operator == "adjacency" else -(L @ h)
        out = h @ self.weight
        if self.activation is not None:
            out = self.activation(out)
        if self.time_dependent:
            out = out * (1.0 + t * self.time_scale)
        return out


class FunctionField(AbstractVectorField):
    """A plain function plus its parameters as a field: ``f(t, y, args) = fn(params, t, y, args)``.

    `fn` is static (not traced as data); `params` is any pytree (its arrays are trained). For
    untied stacks, `make_field` can return ``FunctionField(fn, init(key))``.
    """

    params: object
    fn: Callable = eqx.field(static=True)

    def __call__(self, t, y, args=None):
        return self.fn(self.params, t, y, args)
