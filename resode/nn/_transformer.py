"""A Transformer encoder as a residual stack: attention and MLP sub-blocks, x + alpha F(x)."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._diagnostics import Diagnostics

NORMS = ("pre", "post", "none")
"""Where a [`TransformerEncoder`][] normalises: before each sub-block's branch (pre-norm,
``x + alpha F(LN(x))``), after each residual sum (post-norm, ``LN(x + alpha F(x))``, the original
Transformer of Vaswani et al., NeurIPS 2017), or nowhere (``x + alpha F(x)``)."""


class TransformerBlock(eqx.Module):
    """One encoder layer on ``(seq, dim)``: a multi-head self-attention sub-block, then an MLP
    sub-block (``dim -> hidden -> dim``, GELU, per token), each with its residual scale `alpha`
    and the normalisation `norm` of [`NORMS`][]."""

    attention: eqx.nn.MultiheadAttention
    mlp_in: eqx.nn.Linear
    mlp_out: eqx.nn.Linear
    norm1: eqx.nn.LayerNorm | None
    norm2: eqx.nn.LayerNorm | None
    norm: str = eqx.field(static=True)

    def __init__(self, dim: int, num_heads: int, hidden: int, *, norm: str = "pre", key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.attention = eqx.nn.MultiheadAttention(num_heads, dim, key=k1)
        self.mlp_in = eqx.nn.Linear(dim, hidden, key=k2)
        self.mlp_out = eqx.nn.Linear(hidden, dim, key=k3)
        self.norm1 = eqx.nn.LayerNorm(dim) if norm != "none" else None
        self.norm2 = eqx.nn.LayerNorm(dim) if norm != "none" else None
        self.norm = norm

    def _mlp(self, x):
        return jax.vmap(lambda v: self.mlp_out(jax.nn.gelu(self.mlp_in(v))))(x)

    def _attend(self, x):
        return self.attention(x, x, x)

    def __call__(self, x: Float[Array, "seq dim"], alpha) -> Float[Array, "seq dim"]:
        ln = lambda norm, v: jax.vmap(norm)(v)
        if self.norm == "pre":
            x = x + alpha * self._attend(ln(self.norm1, x))
            return x + alpha * self._mlp(ln(self.norm2, x))
        if self.norm == "post":
            x = ln(self.norm1, x + alpha * self._attend(x))
            return ln(self.norm2, x + alpha * self._mlp(x))
        x = x + alpha * self._attend(x)
        return x + alpha * self._mlp(x)


class TransformerEncoder(eqx.Module):
    """`num_layers` untied [`TransformerBlock`][]s (built with `eqx.filter_vmap`, run by one
    `lax.scan`, so compile time does not grow with depth) on states ``(seq, dim)``.

    **Arguments:** `dim`, `num_heads` (must divide `dim`), `num_layers`, `norm` (``"pre"``
    (default), ``"post"`` or ``"none"``, see [`NORMS`][]), `hidden` (the MLP's width, default
    ``2 dim``), `alpha` (every branch's residual scale, default 1) and `learn_alpha` (train it: a
    scalar parameter), `key`.

    Called like a [`ResidualStack`][] body: ``encoder(y, key=None, inference=False) -> (y_out,
    Diagnostics)``, with ``2 num_layers`` branch evaluations recorded.
    """

    blocks: TransformerBlock
    alpha: float | Array
    num_layers: int = eqx.field(static=True)

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_layers: int,
        *,
        norm: str = "pre",
        hidden: int | None = None,
        alpha: float = 1.0,
        learn_alpha: bool = False,
        key: PRNGKeyArray,
    ):
        if norm not in NORMS:
            raise ValueError(
                f"TransformerEncoder: unknown `norm` {norm!r}. Valid: {', '.join(NORMS)}."
            )
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
            raise ValueError(f"TransformerEncoder: `num_heads` must be >= 1, got {num_heads!r}.")
        if dim % num_heads:
            raise ValueError(
                f"TransformerEncoder: `dim` ({dim}) must be divisible by `num_heads` ({num_heads})."
            )
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(
                f"TransformerEncoder: `num_layers` must be a positive int, got {num_layers!r}."
            )
        hidden = 2 * dim if hidden is None else hidden
        make = lambda k: TransformerBlock(dim, num_heads, hidden, norm=norm, key=k)
        self.blocks = eqx.filter_vmap(make)(jax.random.split(key, num_layers))
        self.alpha = jnp.asarray(alpha, jnp.float32) if learn_alpha else float(alpha)
        self.num_layers = num_layers

    def __call__(self, y: Array, args=None, *, key=None, inference: bool = False):
        params, static = eqx.partition(self.blocks, eqx.is_array)
        alpha = jnp.asarray(self.alpha, y.dtype)

        def layer(x, p):
            return eqx.combine(p, static)(x, alpha), None

        y, _ = jax.lax.scan(layer, y, params)
        return y, Diagnostics.explicit(2 * self.num_layers, y.dtype)
