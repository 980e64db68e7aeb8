"""A U-Net-style encoder-decoder for dense prediction, with switchable long and short skips."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray

from ._diagnostics import Diagnostics
from ._fields import ConvField
from ._models import BODIES, Stem, call_body, make_body


def combine_diagnostics(records: list[Diagnostics]) -> Diagnostics:
    """One record for several bodies run one after another: evaluations, JVPs and solver steps
    summed, the largest residual, converged only if every body converged."""
    first, *rest = records
    out = first
    for d in rest:
        out = Diagnostics(
            num_fevals=out.num_fevals + d.num_fevals,
            num_jvps=out.num_jvps + d.num_jvps,
            solver_steps=out.solver_steps + d.solver_steps,
            residual=jnp.maximum(out.residual, d.residual.astype(out.residual.dtype)),
            converged=out.converged & d.converged,
        )
    return out


class UNet(eqx.Module):
    r"""An encoder-decoder on images ``(channels, height, width)`` giving per-pixel logits
    ``(height, width, num_classes)``; called like [`Classifier`][] (one example,
    ``model(x, key=None, inference=False) -> (logits, Diagnostics)``).

    A ``3 x 3`` convolution stem to `width` channels, then `levels` encoder levels: at level l
    (resolution ``2^-l``, ``width 2^l`` channels) a body of kind `body` over [`ConvField`][]s
    (hidden width ``hidden 2^l``), then a stride-2 ``2 x 2`` convolution down to the next level;
    a bottleneck body at the coarsest level; on the way up a stride-2 transposed convolution per
    level, the **long skip** (the encoder's output of that level, added: ``u + e_l``, so
    switching long skips off changes no parameter count; the original U-Net of Ronneberger et al.,
    MICCAI 2015, concatenates) and a decoder body; a ``1 x 1`` convolution head.

    The **short skips** are the bodies' own: ``body="residual"`` (blocks ``y + h f(y)``, any
    explicit `scheme`) has them, ``body="plain"`` (blocks ``y <- f(y)``) has none; every other
    body of [`make_body`][] works too (implicit stacks, DEQs, monotone DEQs, ODE blocks: one per
    level). `body_options` go to [`make_body`][] (`num_steps`, `scheme`, `tied`, `alpha`, ...).
    `long_skips=False` drops the encoder-decoder skips. Height and width must be divisible by
    ``2^levels``. `spectral_bound` normalises every field by power iteration
    (``spectral_method="power"``; the exact symbol norms are refused here).
    """

    stem: Stem
    encoder: tuple
    downs: tuple
    bottleneck: eqx.Module | None
    ups: tuple
    decoder: tuple
    head: eqx.nn.Conv
    body_kind: str = eqx.field(static=True)
    levels: int = eqx.field(static=True)
    long_skips: bool = eqx.field(static=True)

    def __init__(
        self,
        in_shape: tuple[int, ...],
        num_classes: int,
        *,
        width: int = 16,
        hidden: int | None = None,
        levels: int = 2,
        long_skips: bool = True,
        body: str = "residual",
        zero_init: bool = False,
        spectral_bound: float | None = None,
        spectral_method: str = "exact",
        key: PRNGKeyArray,
        **body_options,
    ):
        if len(in_shape) != 3:
            raise ValueError(
                f"UNet: needs inputs of shape (channels, height, width), got {tuple(in_shape)}."
            )
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
            raise ValueError(f"UNet: `levels` must be a positive int, got {levels!r}.")
        if body not in BODIES:
            raise ValueError(f"Unknown body {body!r}. Valid: {', '.join(BODIES)}.")
        if spectral_bound is not None and spectral_method != "power":
            # The exact Fourier-symbol norms (one small batched SVD per convolution, several per
            # network) hung intermittently inside compiled UNet training steps on CPU (JAX 0.10.2,
            # 2026-11-24); power iteration has no decomposition.
            raise ValueError(
                "UNet: `spectral_bound` needs spectral_method='power' (the exact symbol norms "
                f"are not available in a UNet), got {spectral_method!r}."
            )
        spatial = tuple(int(n) for n in in_shape[1:])
        if any(n % 2**levels for n in spatial):
            raise ValueError(
                f"UNet: height and width {spatial} must be divisible by 2^levels = {2**levels} "
                f"(levels={levels})."
            )
        hidden = width if hidden is None else hidden
        keys = iter(jax.random.split(key, 4 * levels + 4))
        self.stem = Stem("conv2d", tuple(in_shape), width, key=next(keys))

        def level_body(level):
            channels, shape = width * 2**level, tuple(n // 2**level for n in spatial)

            def make_field(k):
                return ConvField(
                    channels,
                    hidden * 2**level,
                    num_spatial_dims=2,
                    zero_init=zero_init,
                    spectral_bound=spectral_bound,
                    spectral_method=spectral_method,
                    spectral_shape=shape if spectral_bound is not None else None,
                    key=k,
                )

            return make_body(
                body, make_field, width=channels, spatial_shape=shape, key=next(keys),
                **body_options,
            )  # fmt: skip

        self.encoder = tuple(level_body(lv) for lv in range(levels))
        self.downs = tuple(
            eqx.nn.Conv(2, width * 2**lv, width * 2 ** (lv + 1), 2, stride=2, key=next(keys))
            for lv in range(levels)
        )
        self.bottleneck = level_body(levels)
        self.ups = tuple(
            eqx.nn.ConvTranspose(
                2, width * 2 ** (lv + 1), width * 2**lv, 2, stride=2, key=next(keys)
            )
            for lv in range(levels)
        )
        self.decoder = tuple(level_body(lv) for lv in range(levels))
        self.head = eqx.nn.Conv(2, width, num_classes, 1, key=next(keys))
        self.body_kind = body
        self.levels = levels
        self.long_skips = bool(long_skips)

    def __call__(self, x: Array, *, key=None, inference: bool = False):
        keys = [None] * (2 * self.levels + 1)
        if key is not None:
            keys = list(jax.random.split(key, 2 * self.levels + 1))
        run = lambda body, y, k: call_body(self.body_kind, body, y, key=k, inference=inference)
        y, records, skips = self.stem(x), [], []
        for level in range(self.levels):
            y, d = run(self.encoder[level], y, keys[level])
            records.append(d)
            skips.append(y)
            y = jax.nn.relu(self.downs[level](y))
        y, d = run(self.bottleneck, y, keys[self.levels])
        records.append(d)
        for level in reversed(range(self.levels)):
            y = self.ups[level](y)
            if self.long_skips:
                y = y + skips[level]
            y, d = run(self.decoder[level], y, keys[self.levels + 1 + level])
            records.append(d)
        logits = self.head(y)  # (classes, height, width)
        return jnp.moveaxis(logits, 0, -1), combine_diagnostics(records)

    def first_layer(self) -> eqx.nn.Conv:
        """The stem's convolution: the first layer, whose gradient the skips are meant to keep."""
        return self.stem.layer
