"""Long and short skips in an encoder-decoder: which one does what.

The seed chapter (applications.md, U-Net) says a U-Net needs both kinds of skip: the long
encoder-decoder skips carry spatial detail past the bottleneck, the short residual skips inside
each block keep gradients flowing through depth. Setting: segmentation of noisy shapes
(resode.data "shapes": per-pixel labels background / disc / square / triangle) by resode.nn.UNet
models that differ only in their skips (additive long skips, so all four variants have the same
parameters): none, short (residual blocks), long (encoder-decoder skips), both.

Exact: (1) the four variants have the same number of parameters; (2) with zero-initialised
residual branches every block is the identity, so the network equals its skeleton (stem,
down-sampling, up-sampling, long skips, head) computed by hand, in float64. Empirical (over
seeds): "both" scores best (mean IoU over the shapes) and has the largest first-layer gradient at
initialisation; long skips place the boundaries better; without short skips the deep version
trains worse.
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from resode.analysis import segmentation_scores
from resode.config import ConfigError
from resode.data import SHAPE_CLASSES, load
from resode.experiments import (
    Result,
    empirical_check,
    exact_check,
    fit_config,
    fit_seeds,
    fmt_spread,
    plot_series,
    require_at_least_one,
    require_subset,
    seed_list,
    spread,
    to_float64,
)
from resode.nn import UNet, count_params
from resode.train import build_model

CLAIM = (
    "A U-Net needs both skips: long encoder-decoder skips keep spatial detail, short residual "
    "skips keep gradients flowing; with both it segments best and has the largest gradient at "
    "its first layer."
)
SOURCE = (
    "applications.md: U-Net, long and short skip connections; Ronneberger, Fischer & Brox, MICCAI "
    "2015 (U-Net); Drozdzal et al., DLMIA 2016 (long and short skips in segmentation)"
)
KEY_FIGURE = "per_variant"
VARIANTS = {  # name: (long skips, body kind)
    "none": (False, "plain"),
    "short": (False, "residual"),
    "long": (True, "plain"),
    "both": (True, "residual"),
}


@dataclasses.dataclass
class Config:
    depth: int = 4  # steps (two-convolution blocks) per body, at every level
    seed: int = 0
    num_seeds: int = 3
    width: int = 8
    levels: int = 2
    steps: int = 400
    lr: float = 0.003
    batch_size: int = 32
    num_samples: int = 1500
    size: int = 24
    noise: float = 0.3
    # the variants trained (all four by default); the parameter-count check covers all four
    # whatever this says; the empirical checks compare all four and run only when all are trained
    variants: list = dataclasses.field(default_factory=lambda: list(VARIANTS))


QUICK = {
    "variants": ["none", "both"],
    "depth": 1,
    "num_seeds": 1,
    "width": 4,
    "levels": 1,
    "steps": 10,
    "num_samples": 100,
    "size": 8,
    "batch_size": 16,
}


def validate(cfg: Config) -> None:
    require_at_least_one(cfg, "depth", "num_seeds", "width", "levels", "steps", "batch_size")
    require_subset(cfg, "variants", VARIANTS)
    if cfg.size % 2**cfg.levels or cfg.size < 8:
        raise ConfigError(
            f"size: must be >= 8 and divisible by 2^levels = {2**cfg.levels}, got {cfg.size}."
        )
    if cfg.num_samples < 10:
        raise ConfigError(f"num_samples: must be >= 10, got {cfg.num_samples}.")
    if cfg.batch_size > int(0.8 * cfg.num_samples):
        raise ConfigError(
            f"batch_size: must be at most the {int(0.8 * cfg.num_samples)} training images, got "
            f"{cfg.batch_size}."
        )
    if not cfg.lr > 0:
        raise ConfigError(f"lr: must be > 0, got {cfg.lr}.")
    if cfg.noise < 0:
        raise ConfigError(f"noise: must be >= 0, got {cfg.noise}.")


def _loss(model, x, y):
    logits = jax.vmap(lambda xi: model(xi, inference=True)[0])(x)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


@eqx.filter_jit
def _measure(model, x, y, x_test):
    """The norm of the loss gradient on (x, y) with respect to the first layer's (the stem's)
    weights, and the predicted labels of `x_test`: one compiled program per variant, run on the
    initial and on the trained model."""
    grads = eqx.filter_grad(_loss)(model, x, y)
    labels = jnp.argmax(jax.vmap(lambda xi: model(xi, inference=True)[0])(x_test), axis=-1)
    return jnp.linalg.norm(grads.stem.layer.weight), labels


@eqx.filter_jit
def _zero_branch_gap(make, xs):
    """Largest |UNet(x) - skeleton(x)| over `xs` and the skeleton's largest entry, for the model
    `make()` builds (built inside the compiled program: one compilation, no eager
    initialisation)."""
    model = make()
    full = jax.vmap(lambda xi: model(xi)[0])(xs)
    skeleton = jax.vmap(lambda xi: _skeleton(model, xi))(xs)
    return jnp.max(jnp.abs(full - skeleton)), jnp.max(jnp.abs(skeleton))


def _skeleton(model: UNet, x):
    """The UNet with every body replaced by the identity, written out by hand."""
    y, skips = model.stem(x), []
    for level in range(model.levels):
        skips.append(y)
        y = jax.nn.relu(model.downs[level](y))
    for level in reversed(range(model.levels)):
        y = model.ups[level](y)
        if model.long_skips:
            y = y + skips[level]
    return jnp.moveaxis(model.head(y), 0, -1)


def run(cfg: Config, ctx) -> Result:
    seeds = seed_list(cfg.seed, cfg.num_seeds)
    data = load("shapes", size=cfg.size, num_samples=cfg.num_samples, noise=cfg.noise)
    num_classes = len(SHAPE_CLASSES)
    common = (
        "model.stem=unet",
        f"model.width={cfg.width}",
        f"model.levels={cfg.levels}",
        f"model.body.num_steps={cfg.depth}",
        f"data.batch_size={cfg.batch_size}",
        f"train.steps_per_call={min(cfg.steps, 100)}",
        "train.warmup_steps=0",
    )
    n_probe = min(64, data.x_train.shape[0])
    x_probe, y_probe = jnp.asarray(data.x_train[:n_probe]), jnp.asarray(data.y_train[:n_probe])
    x_test = jnp.asarray(data.x_test)

    def overrides_of(name):
        long, kind = VARIANTS[name]
        return (*common, f"model.long_skips={str(long).lower()}", f"model.body.kind={kind}")

    # Exact (1): the switches change no parameter count (all four variants, trained or not;
    # counted on the shapes alone, nothing initialised).
    counts = {
        name: count_params(
            eqx.filter_eval_shape(
                build_model, fit_config(cfg.steps, cfg.lr, *overrides_of(name)), data
            )
        )
        for name in VARIANTS
    }
    trained = [v for v in VARIANTS if v in cfg.variants]  # in the fixed order of VARIANTS
    stats = {v: {k: [] for k in ("iou", "boundary", "pixel", "grad0", "grad_end", "loss")}
             for v in trained}  # fmt: skip
    for name in trained:
        overrides = overrides_of(name)
        # Measured below (per-pixel scores), so fit does not evaluate.
        results = fit_seeds(data, seeds, cfg.steps, cfg.lr, *overrides, evaluate=False)
        for s, r in zip(seeds, results, strict=True):
            init = build_model(fit_config(cfg.steps, cfg.lr, f"seed={s}", *overrides), data)
            grad0, _ = _measure(init, x_probe, y_probe, x_test)
            grad_end, labels = _measure(r.model, x_probe, y_probe, x_test)
            stats[name]["grad0"].append(float(grad0))
            stats[name]["grad_end"].append(float(grad_end))
            scores = segmentation_scores(np.asarray(labels), data.y_test, num_classes)
            stats[name]["iou"].append(scores["mean_iou"] or 0.0)
            stats[name]["boundary"].append(scores["boundary_accuracy"])
            stats[name]["pixel"].append(scores["pixel_accuracy"])
            stats[name]["loss"].append(float(np.mean(r.history["loss"][-10:])))
        ctx.say(
            f"  {name}: mean IoU {fmt_spread(spread(stats[name]['iou']))}, boundary accuracy "
            f"{fmt_spread(spread(stats[name]['boundary']))}, first-layer gradient at init "
            f"{fmt_spread(spread(stats[name]['grad0']), '.3g')}"
        )

    count_gap = max(counts.values()) - min(counts.values())
    # Exact (2): zero-initialised residual branches make every body the identity.
    with jax.enable_x64(True):
        make = lambda: to_float64(
            UNet(data.input_shape, num_classes, width=cfg.width, levels=cfg.levels,
                 body="residual", num_steps=cfg.depth, zero_init=True,
                 key=jax.random.PRNGKey(cfg.seed))
        )  # fmt: skip
        gap, scale = _zero_branch_gap(make, jnp.asarray(data.x_test[:4], jnp.float64))
        identity_error, scale = float(gap), float(scale)

    mean = {v: {k: float(np.mean(stats[v][k])) for k in stats[v]} for v in trained}
    checks = [
        exact_check(
            "equal_parameters",
            "the four variants (long skips on/off x residual/plain blocks) have the same number "
            "of parameters (additive long skips; a plain block has a residual block's weights)",
            measured=count_gap,
            expected=0,
            tolerance=0,
            detail=f"{counts['both']} parameters each",
        ),
        exact_check(
            "zero_branch_identity",
            f"with zero-initialised residual branches every body (depth {cfg.depth}, "
            f"{cfg.levels} levels) is the identity: the UNet equals its hand-written skeleton "
            "(largest absolute difference, float64)",
            measured=identity_error,
            expected=0.0,
            tolerance=1e-12 * max(scale, 1.0),
        ),
    ]
    # The empirical checks compare the four variants with each other: they run when all four
    # were trained (a run of fewer variants, such as --quick, reports their figures only).
    if len(trained) == len(VARIANTS):
        best = max(trained, key=lambda v: mean[v]["iou"])
        biggest = max(trained, key=lambda v: mean[v]["grad0"])
        checks += [
            empirical_check(
                "both_best_score",
                "with long and short skips the mean test IoU (over discs, squares, triangles) "
                "is the highest of the four variants",
                measured={v: mean[v]["iou"] for v in trained},
                expected="'both' highest",
                holds=best == "both",
                detail=f"best: {best}; seeds {seeds}",
            ),
            empirical_check(
                "both_largest_first_layer_gradient",
                "with both skips the loss gradient at the first layer (at initialisation, on 64 "
                "training images) is the largest of the four variants",
                measured={v: mean[v]["grad0"] for v in trained},
                expected="'both' largest",
                holds=biggest == "both",
                detail=f"largest: {biggest}",
            ),
            empirical_check(
                "long_skips_keep_detail",
                "long skips place the boundaries better: boundary-pixel accuracy of 'both' above "
                "'short' and of 'long' above 'none'",
                measured={v: mean[v]["boundary"] for v in trained},
                expected="both > short and long > none",
                holds=mean["both"]["boundary"] > mean["short"]["boundary"]
                and mean["long"]["boundary"] > mean["none"]["boundary"],
            ),
            empirical_check(
                "short_skips_train_deep",
                f"without short skips the deep (depth {cfg.depth}) networks train worse: final "
                "training loss of 'long' above 'both' and of 'none' above 'short'",
                measured={v: mean[v]["loss"] for v in trained},
                expected="long > both and none > short",
                holds=mean["long"]["loss"] > mean["both"]["loss"]
                and mean["none"]["loss"] > mean["short"]["loss"],
            ),
        ]
    figures = {
        "per_variant": {
            v: {
                "test_iou": spread(stats[v]["iou"]),
                "boundary_accuracy": spread(stats[v]["boundary"]),
                "pixel_accuracy": spread(stats[v]["pixel"]),
                "first_layer_grad_norm": spread(stats[v]["grad0"]),
                "first_layer_grad_norm_trained": spread(stats[v]["grad_end"]),
                "final_train_loss": spread(stats[v]["loss"]),
            }
            for v in trained
        },
        "num_params": counts["both"],
        "identity_error": identity_error,
    }
    names = trained
    plots = [
        plot_series(
            ctx.plots / "scores.png",
            list(range(len(names))),
            {
                "test IoU": np.array([stats[v]["iou"] for v in names]).T,
                "boundary accuracy": np.array([stats[v]["boundary"] for v in names]).T,
            },
            xlabel="variant: " + ", ".join(f"{i} {v}" for i, v in enumerate(names)),
            ylabel="score",
            title=f"shapes segmentation, depth {cfg.depth}, {len(seeds)} seeds",
        ),
        plot_series(
            ctx.plots / "first_layer_gradient.png",
            list(range(len(names))),
            {"at initialisation": np.array([stats[v]["grad0"] for v in names]).T},
            xlabel="variant: " + ", ".join(f"{i} {v}" for i, v in enumerate(names)),
            ylabel="||dL/dW|| of the first layer",
            title="gradient reaching the first layer",
            logy=True,
        ),
    ]
    rows = "\n".join(
        f"| {v} | {'yes' if VARIANTS[v][0] else 'no'} | "
        f"{'yes' if VARIANTS[v][1] == 'residual' else 'no'} | "
        f"{fmt_spread(spread(stats[v]['iou']))} | {fmt_spread(spread(stats[v]['boundary']))} | "
        f"{fmt_spread(spread(stats[v]['pixel']))} | {mean[v]['grad0']:.3g} | "
        f"{mean[v]['loss']:.3f} |"
        for v in names
    )
    report = (
        "## What was measured\n\n"
        f"`shapes` ({cfg.size} x {cfg.size}, noise {cfg.noise:g}, {data.x_train.shape[0]} "
        f"training and {data.x_test.shape[0]} test images); UNets of width {cfg.width}, "
        f"{cfg.levels} levels, {cfg.depth} steps per body ({counts['both']} parameters each), "
        f"{cfg.steps} Adam steps (lr {cfg.lr:g}, batch {cfg.batch_size}), seeds {seeds}. IoU: "
        "mean over the three shape classes, pooled over test pixels; boundary accuracy: on "
        "pixels next to a label change; gradient: ||dL/dW|| of the first convolution at "
        "initialisation; loss: mean of the last 10 training steps.\n\n"
        "| variant | long skips | short skips | test IoU | boundary accuracy | pixel accuracy | "
        "first-layer gradient | final train loss |\n"
        "|---|---|---|---|---|---|---|---|\n" + rows + "\n"
    )
    if len(trained) < len(VARIANTS):
        report += (
            f"\nTrained: {', '.join(trained)} only (key `variants`): the empirical checks compare "
            "all four variants and were not run.\n"
        )
    return Result(checks=checks, figures=figures, plots=plots, report=report)
