"""Classifiers assembled from a stem, one body of any kind, and a head."""

import dataclasses
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray

from ..solvers import resolve_splitting
from ._deq import DEQ
from ._diagnostics import Diagnostics
from ._fields import ConvField, GraphField, MLPField, normalized_laplacian
from ._monotone_deq import MonotoneDEQ
from ._ode import ODEBlock
from ._stack import ResidualStack

STEMS = ("mlp", "conv1d", "conv2d", "graph", "unet", "transformer")
"""The stems (model families) of [`build_classifier`][] (and `model.stem` of a config): a stem,
one body and a head (mlp, conv1d, conv2d, graph), a [`UNet`][] encoder-decoder (unet), or a
[`SequenceClassifier`][] over a [`TransformerEncoder`][] (transformer)."""
BODIES = ("none", "plain", "residual", "implicit", "deq", "monotone_deq", "ode")
"""The body kinds of [`build_classifier`][] (and `model.body.kind` of a config)."""


class Stem(eqx.Module):
    """Input -> state: ``act(Linear(flatten(x)))`` (mlp) or ``act(Conv(x))`` (conv1d / conv2d)."""

    layer: eqx.Module
    flatten: bool = eqx.field(static=True)
    activation: Callable = eqx.field(static=True)

    def __init__(
        self, kind: str, in_shape: tuple[int, ...], width: int, *, activation=jax.nn.relu, key
    ):
        if kind == "graph":
            if len(in_shape) != 2:
                raise ValueError(
                    f"Stem 'graph' needs inputs of shape (nodes, features), got {in_shape}."
                )
            self.layer = eqx.nn.Linear(in_shape[1], width, key=key)
            self.flatten = False
        elif kind == "mlp":
            size = 1
            for n in in_shape:
                size *= n
            self.layer = eqx.nn.Linear(size, width, key=key)
            self.flatten = True
        elif kind in ("conv1d", "conv2d"):
            dims = 1 if kind == "conv1d" else 2
            if len(in_shape) != dims + 1:
                spatial = "length" if dims == 1 else "height, width"
                raise ValueError(
                    f"Stem {kind!r} needs inputs of shape (channels, {spatial}), got {in_shape}."
                )
            self.layer = eqx.nn.Conv(dims, in_shape[0], width, 3, padding="SAME", key=key)
            self.flatten = False
        else:
            raise ValueError(f"Unknown stem {kind!r}. Valid: {', '.join(STEMS)}.")
        self.activation = activation

    def __call__(self, x: Array) -> Array:
        # Promote the input to the weights' dtype (a convolution, unlike a matrix product, needs
        # both in one dtype: float32 data with float64 weights under x64).
        x = x.astype(jnp.result_type(x, self.layer.weight))
        if isinstance(self.layer, eqx.nn.Linear) and not self.flatten:  # per node of a graph
            return self.activation(jax.vmap(self.layer)(x))
        return self.activation(self.layer(x.reshape(-1) if self.flatten else x))


class Classifier(eqx.Module):
    """``head(pool(body(stem(x))))`` on one example; returns ``(logits, Diagnostics)``.

    Build with [`build_classifier`][]. The body is a `ResidualStack`, `DEQ`, `MonotoneDEQ` or
    `ODEBlock` (or none); an equilibrium body takes the stem's output as its injected input.
    Spatial axes are averaged before the linear head; with ``per_node=True`` (a graph stem) the
    head is applied to every node's state instead, giving logits ``(nodes, classes)``.
    """

    stem: Stem
    body: eqx.Module | None
    head: eqx.nn.Linear
    body_kind: str = eqx.field(static=True)
    per_node: bool = eqx.field(default=False, static=True)

    def __call__(self, x: Array, *, key=None, inference: bool = False):
        y, diag = self.features(x, key=key, inference=inference)
        return (jax.vmap(self.head)(y) if self.per_node else self.head(y)), diag

    def features(self, x: Array, *, key=None, inference: bool = False):
        """The head's input (the body's output, spatial axes averaged) and the body's
        `Diagnostics`: the representation a domain gap or a probe is measured on."""
        y, diag = call_body(self.body_kind, self.body, self.stem(x), key=key, inference=inference)
        if y.ndim > 1 and not self.per_node:
            y = jnp.mean(y, axis=tuple(range(1, y.ndim)))
        return y, diag


class SequenceClassifier(eqx.Module):
    """Token embedding, a body on ``(seq, width)`` states, a linear head on one readout.

    ``head(readout(body(embed(x) + positions)))`` for inputs ``(seq, in_features)`` (e.g. one-hot
    tokens): `embed` is linear per token, `positions` a learned ``(seq, width)`` embedding; `body`
    any residual body on sequences, e.g. a [`ResidualStack`][] of [`AttentionField`][]s (or None);
    `readout` ``"last"`` (the last token's state: a query at the end) or ``"mean"`` (the average
    over tokens). Called like [`Classifier`][]: ``model(x, key=None, inference=False) ->
    (logits, Diagnostics)``, on one example.
    """

    embed: eqx.nn.Linear
    positions: Array
    body: eqx.Module | None
    head: eqx.nn.Linear
    readout: str = eqx.field(static=True)

    def __init__(
        self,
        in_features: int,
        seq_len: int,
        width: int,
        num_classes: int,
        body=None,
        *,
        readout: str = "last",
        key: PRNGKeyArray,
    ):
        if readout not in ("last", "mean"):
            raise ValueError(
                f"SequenceClassifier: `readout` must be 'last' or 'mean', got {readout!r}."
            )
        k1, k2, k3 = jax.random.split(key, 3)
        self.embed = eqx.nn.Linear(in_features, width, key=k1)
        self.positions = 0.1 * jax.random.normal(k2, (seq_len, width))
        self.body = body
        self.head = eqx.nn.Linear(width, num_classes, key=k3)
        self.readout = readout

    def features(self, x: Array, *, key=None, inference: bool = False):
        """The readout state the head sees and the body's `Diagnostics`."""
        y = jax.vmap(self.embed)(x) + self.positions.astype(x.dtype)
        if self.body is None:
            diag = Diagnostics.explicit(0, y.dtype)
        else:
            y, diag = self.body(y, key=key, inference=inference)
        return (y[-1] if self.readout == "last" else jnp.mean(y, axis=0)), diag

    def __call__(self, x: Array, *, key=None, inference: bool = False):
        y, diag = self.features(x, key=key, inference=inference)
        return self.head(y), diag


def make_body(
    body: str,
    make_field: Callable[[PRNGKeyArray], eqx.Module],
    *,
    width: int,
    spatial_shape: tuple[int, ...] | None,
    graph: bool = False,
    scheme: str | None = None,
    num_steps: int = 4,
    tied: bool = False,
    solver=None,
    adjoint="implicit",
    tol: float = 1e-4,
    max_steps: int = 30,
    ode_solver: str = "tsit5",
    ode_adjoint: str = "recursive_checkpoint",
    root=None,
    rtol: float = 1e-3,
    atol: float = 1e-6,
    drop_rate: float = 0.0,
    alpha: float = 1.0,
    learn_alpha: bool = False,
    reversible=None,
    gamma: float = 0.9,
    learn_gamma: bool = False,
    monotonicity: float = 0.1,
    splitting_alpha: float | None = None,
    key: PRNGKeyArray,
):
    """One body of kind `body` (see [`build_classifier`][] for the kinds and options) over the
    fields `make_field` builds, on states of `width` channels and spatial shape `spatial_shape`
    (None for vectors and graphs). None for ``body="none"``. Used by [`build_classifier`][] and,
    once per resolution, by [`UNet`][]."""
    if body not in BODIES:
        raise ValueError(f"Unknown body {body!r}. Valid: {', '.join(BODIES)}.")
    if body == "none":
        return None
    if body in ("plain", "residual", "implicit"):
        default = {"plain": "euler", "residual": "euler", "implicit": "backward_euler"}[body]
        module = ResidualStack(
            make_field,
            num_steps,
            scheme=scheme or default,
            tied=tied,
            skip=body != "plain",
            drop_rate=drop_rate,
            alpha=alpha,
            learn_alpha=learn_alpha,
            root=root,
            reversible=reversible if body == "residual" else None,
            gamma=gamma,
            learn_gamma=learn_gamma and body == "residual",
            key=key,
        )
        if body == "implicit" and not module.scheme.implicit:
            raise ValueError(f"body='implicit' needs an implicit scheme, got {scheme!r}.")
        if body == "residual" and module.scheme.implicit:
            raise ValueError(f"body='residual' needs an explicit scheme, got {scheme!r}.")
        return module
    if body == "deq":
        return DEQ(
            make_field(key),
            solver=solver or "anderson",
            adjoint=adjoint,
            tol=tol,
            max_steps=max_steps,
        )
    if body == "monotone_deq":
        if graph:
            raise ValueError("build_classifier: a monotone_deq body has no graph form.")
        splitting = resolve_splitting(solver or "peaceman_rachford")
        if splitting_alpha is not None:
            splitting = dataclasses.replace(splitting, alpha=splitting_alpha)
        return MonotoneDEQ(
            width,
            spatial_shape=spatial_shape,
            monotonicity=monotonicity,
            solver=splitting,
            tol=tol,
            max_steps=max_steps,
            key=key,
        )
    return ODEBlock(make_field(key), solver=ode_solver, adjoint=ode_adjoint, rtol=rtol, atol=atol)


def call_body(kind: str, body, y: Array, *, key=None, inference: bool = False):
    """``(body(y), Diagnostics)`` for a body made by [`make_body`][] (None: the identity)."""
    if kind == "none":
        return y, Diagnostics.explicit(0, y.dtype)
    if kind in ("deq", "monotone_deq"):
        return body(y, inference=inference)
    if kind == "ode":
        return body(y)
    return body(y, key=key, inference=inference)


def count_params(model) -> int:
    """Number of trainable entries of a model: its floating-point arrays, less its buffers
    (graph Laplacians, power-iteration vectors; see [`buffer_mask`][]).

    `model` may also be the output of ``eqx.filter_eval_shape`` (floating
    ``jax.ShapeDtypeStruct`` leaves count as arrays), so a model is counted without being
    initialised."""
    from ._spectral import buffer_mask

    def is_param(leaf):
        if isinstance(leaf, jax.ShapeDtypeStruct):
            return jnp.issubdtype(leaf.dtype, jnp.inexact)
        return eqx.is_inexact_array(leaf)

    total = 0
    for leaf, is_buffer in zip(
        jax.tree_util.tree_leaves(model), jax.tree_util.tree_leaves(buffer_mask(model)), strict=True
    ):
        if is_param(leaf) and not is_buffer:
            total += math.prod(leaf.shape)
    return total


def build_classifier(
    *,
    in_shape: tuple[int, ...],
    num_classes: int,
    stem: str = "mlp",
    width: int = 64,
    hidden: int | None = None,
    body: str = "residual",
    scheme: str | None = None,
    num_steps: int = 4,
    tied: bool = False,
    solver=None,
    adjoint="implicit",
    tol: float = 1e-4,
    max_steps: int = 30,
    ode_solver: str = "tsit5",
    ode_adjoint: str = "recursive_checkpoint",
    root=None,
    rtol: float = 1e-3,
    atol: float = 1e-6,
    zero_init: bool = False,
    drop_rate: float = 0.0,
    alpha: float = 1.0,
    learn_alpha: bool = False,
    reversible=None,
    gamma: float = 0.9,
    learn_gamma: bool = False,
    monotonicity: float = 0.1,
    splitting_alpha: float | None = None,
    spectral_bound: float | None = None,
    spectral_method: str = "exact",
    adjacency=None,
    graph_operator: str | None = None,
    levels: int = 2,
    long_skips: bool = True,
    num_heads: int = 4,
    norm: str = "pre",
    readout: str = "last",
    key: PRNGKeyArray,
):
    """A classifier whose body is any kind of depth over one field family.

    The field is an `MLPField` (mlp stem) or a `ConvField` (conv stems) of state size `width` and
    hidden size `hidden` (default `width`). `body`: ``"none"``, ``"plain"`` (no skip, Euler
    blocks), ``"residual"`` (explicit `scheme`, default euler), ``"implicit"`` (implicit
    `scheme`, default backward_euler; `root` solves its stages, default Newton-Krylov),
    ``"deq"`` (`solver`, default anderson, `adjoint`, `tol`, `max_steps`), ``"monotone_deq"``
    (a [`MonotoneDEQ`][] of margin `monotonicity`: dense after an mlp stem, circular
    convolutions after a conv stem; `solver` ``"peaceman_rachford"`` (default) or
    ``"forward_backward"`` with step `splitting_alpha` (default: the splitting's own), `tol`,
    `max_steps`) or ``"ode"`` (`ode_solver`, `ode_adjoint`, `rtol`, `atol`). `num_steps`,
    `tied`, `alpha` (the residual branch's scale) and
    `learn_alpha` apply to stacks; `reversible`, `gamma` and `learn_gamma` to residual stacks
    (see [`ResidualStack`][]); `spectral_bound` spectrally normalises the field (an
    [`MLPField`][] or a [`ConvField`][] on the input's spatial shape) by `spectral_method`
    (``"exact"`` or ``"power"``). A ``"graph"`` stem (inputs
    ``(nodes, features)``, needs `adjacency`) makes a node classifier: a per-node linear stem,
    a [`GraphField`][] over the renormalised Laplacian ``L = I - D^-1/2 (A + I) D^-1/2`` with a
    tanh and a per-node head; `graph_operator` ``"laplacian"`` gives ``tanh(-L X W)`` (diffusion;
    the default except in plain bodies), ``"adjacency"`` the GCN propagation
    ``tanh((I - L) X W)`` (the default of plain bodies). Use
    [`count_params`][] to match parameter counts across bodies (e.g. by choosing `hidden`).

    Two other families: ``stem="unet"`` returns a [`UNet`][] (dense prediction on images
    ``(channels, height, width)``: per-pixel logits; `levels` resolutions, `long_skips`, the
    body kind and its options at every level; short skips are ``body="residual"``, none with
    ``body="plain"``); ``stem="transformer"`` returns a [`SequenceClassifier`][] over a
    [`TransformerEncoder`][] of `num_steps` layers (inputs ``(seq, features)``; `num_heads`,
    `norm` pre | post | none, MLP width `hidden` (default ``2 width``), `alpha`, `learn_alpha`,
    `readout` last | mean; `body` must be ``"residual"``).
    """
    if body not in BODIES:
        raise ValueError(f"Unknown body {body!r}. Valid: {', '.join(BODIES)}.")
    if stem == "transformer":
        from ._transformer import TransformerEncoder

        if body != "residual":
            raise ValueError(
                f"build_classifier: a transformer stem is a residual stack, got body {body!r}."
            )
        if len(in_shape) != 2:
            raise ValueError(
                f"Stem 'transformer' needs inputs of shape (seq, features), got {in_shape}."
            )
        k_enc, k_seq = jax.random.split(key)
        encoder = TransformerEncoder(
            width, num_heads, num_steps, norm=norm, hidden=hidden, alpha=alpha,
            learn_alpha=learn_alpha, key=k_enc,
        )  # fmt: skip
        return SequenceClassifier(
            in_shape[1], in_shape[0], width, num_classes, encoder, readout=readout, key=k_seq
        )
    if stem == "unet":
        from ._unet import UNet

        return UNet(
            in_shape, num_classes, width=width, hidden=hidden, levels=levels,
            long_skips=long_skips, body=body, zero_init=zero_init,
            spectral_bound=spectral_bound, spectral_method=spectral_method, scheme=scheme,
            num_steps=num_steps, tied=tied, solver=solver, adjoint=adjoint, tol=tol,
            max_steps=max_steps, ode_solver=ode_solver, ode_adjoint=ode_adjoint, root=root,
            rtol=rtol, atol=atol, drop_rate=drop_rate, alpha=alpha, learn_alpha=learn_alpha,
            reversible=reversible, gamma=gamma, learn_gamma=learn_gamma,
            monotonicity=monotonicity, splitting_alpha=splitting_alpha, key=key,
        )  # fmt: skip
    hidden = width if hidden is None else hidden
    k_stem, k_body, k_head = jax.random.split(key, 3)
    stem_module = Stem(stem, in_shape, width, key=k_stem)

    if (stem == "graph") != (adjacency is not None):
        raise ValueError("build_classifier: a graph stem needs `adjacency`, and only it takes one.")
    laplacian = None
    if stem == "graph":
        a = jnp.asarray(adjacency, jnp.float32)
        laplacian = normalized_laplacian(a + jnp.eye(a.shape[0], dtype=a.dtype))

    def make_field(k):
        if stem == "graph":
            operator = graph_operator or ("adjacency" if body == "plain" else "laplacian")
            return GraphField(width, laplacian, operator=operator, activation=jax.nn.tanh, key=k)
        if stem == "mlp":
            return MLPField(
                width,
                hidden,
                zero_init=zero_init,
                spectral_bound=spectral_bound,
                spectral_method=spectral_method,
                key=k,
            )
        dims = 1 if stem == "conv1d" else 2
        return ConvField(
            width,
            hidden,
            num_spatial_dims=dims,
            zero_init=zero_init,
            spectral_bound=spectral_bound,
            spectral_method=spectral_method,
            spectral_shape=tuple(in_shape[1:]) if spectral_bound is not None else None,
            key=k,
        )

    body_module = make_body(
        body,
        make_field,
        width=width,
        spatial_shape=None if stem in ("mlp", "graph") else tuple(in_shape[1:]),
        graph=stem == "graph",
        scheme=scheme,
        num_steps=num_steps,
        tied=tied,
        solver=solver,
        adjoint=adjoint,
        tol=tol,
        max_steps=max_steps,
        ode_solver=ode_solver,
        ode_adjoint=ode_adjoint,
        root=root,
        rtol=rtol,
        atol=atol,
        drop_rate=drop_rate,
        alpha=alpha,
        learn_alpha=learn_alpha,
        reversible=reversible,
        gamma=gamma,
        learn_gamma=learn_gamma,
        monotonicity=monotonicity,
        splitting_alpha=splitting_alpha,
        key=k_body,
    )
    head = eqx.nn.Linear(width, num_classes, key=k_head)
    return Classifier(stem_module, body_module, head, body, per_node=stem == "graph")
