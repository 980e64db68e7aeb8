"""Calibration by shrinking logits: z = x + F(x) = (1 - lambda) x.

The seed chapter (applications.md, "model calibration and regularisation") proposes a residual
correction of the logits, z = x + F(x) with F(x) = -lambda x, to soften an over-confident
classifier's softmax and lower its expected calibration error (ECE). Exact: the correction never
changes a prediction (argmax of (1 - lambda) x is argmax of x for lambda < 1, so accuracy changes
by exactly 0), and it is temperature scaling (Guo et al., ICML 2017) with T = 1 / (1 - lambda)
(the ECE computed both ways agrees to rounding). Empirical (over seeds): a ResNet trained on a
small subset of digits until it is over-confident; lambda chosen on a validation half of the test
split (lowest NLL among `shrink`) lowers the ECE on the other half compared with lambda = 0.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from resode.config import ConfigError
from resode.data import load
from resode.experiments import (
    Result,
    empirical_check,
    exact_check,
    fit_seeds,
    fmt_spread,
    plot_series,
    seed_list,
    spread,
)
from resode.robust import expected_calibration_error, reliability_diagram

CLAIM = (
    "Shrinking logits, z = (1 - lambda) x, never changes a prediction and is temperature scaling "
    "with T = 1/(1 - lambda); chosen on validation, it lowers an over-confident ResNet's ECE."
)
SOURCE = (
    "applications.md: calibration by the residual correction z = x + F(x) = (1 - lambda) x; "
    "Guo et al., ICML 2017, 'On calibration of modern neural networks' (ECE, temperature scaling)"
)
KEY_FIGURE = "accuracy_change"


@dataclasses.dataclass
class Config:
    shrink: list = dataclasses.field(
        default_factory=lambda: [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    )
    seed: int = 0
    num_seeds: int = 3
    train_size: int = 300  # training examples (a subset of digits' training split)
    width: int = 128
    depth: int = 4  # untied Euler ResNet blocks
    steps: int = 1500
    lr: float = 3e-3
    num_bins: int = 15  # equal-width confidence bins of the ECE


QUICK = {"shrink": [0.0, 0.5], "num_seeds": 1, "train_size": 100, "width": 16, "steps": 30}


def validate(cfg: Config) -> None:
    if not isinstance(cfg.shrink, list) or not cfg.shrink:
        raise ConfigError(f"shrink: must be a non-empty list of lambdas, got {cfg.shrink!r}.")
    if any(not 0.0 <= float(v) < 1.0 for v in cfg.shrink):
        raise ConfigError(f"shrink: every lambda must be in [0, 1), got {cfg.shrink!r}.")
    for key in ("num_seeds", "train_size", "width", "depth", "steps", "num_bins"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}: must be >= 1, got {getattr(cfg, key)}.")


def _nll(logits, labels):
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-np.mean(logp[np.arange(len(labels)), labels]))


def _temperature_ece(logits, labels, temperature, num_bins):
    """The ECE of temperature scaling, by its own code path: probabilities of x / T."""
    return expected_calibration_error(logits / temperature, labels, num_bins=num_bins)


def run(cfg: Config, ctx) -> Result:
    lambdas = sorted(float(v) for v in cfg.shrink)
    if 0.0 not in lambdas:
        lambdas = [0.0, *lambdas]  # the uncorrected model is the reference
    seeds = seed_list(cfg.seed, cfg.num_seeds)
    full = load("digits")
    rng = np.random.default_rng(cfg.seed)
    train_idx = rng.permutation(len(full.x_train))[: min(cfg.train_size, len(full.x_train))]
    test_perm = rng.permutation(len(full.x_test))
    val_idx, test_idx = np.array_split(test_perm, 2)
    data = dataclasses.replace(
        full,
        x_train=full.x_train[train_idx],
        y_train=full.y_train[train_idx],
        x_test=full.x_test[test_idx],
        y_test=full.y_test[test_idx],
    )
    x_val, y_val = full.x_test[val_idx], full.y_test[val_idx]

    diagram = None  # the first seed's test logits, for the reliability diagram
    ece = {lam: [] for lam in lambdas}
    nll = {lam: [] for lam in lambdas}
    acc = {lam: [] for lam in lambdas}
    temp_gap, chosen, ece0, ece_star = 0.0, [], [], []
    results = fit_seeds(
        data,
        seeds,
        cfg.steps,
        cfg.lr,
        f"model.width={cfg.width}",
        f"model.body.num_steps={cfg.depth}",
        "train.steps_per_call=50",
        f"data.batch_size={min(128, len(train_idx))}",
        evaluate=False,  # measured below: logits, calibration
    )
    for s, result in zip(seeds, results, strict=True):
        model = result.model
        logits_of = jax.jit(jax.vmap(lambda x: model(x, inference=True)[0]))
        val_logits = np.asarray(logits_of(jnp.asarray(x_val)), np.float64)
        test_logits = np.asarray(logits_of(jnp.asarray(data.x_test)), np.float64)
        val_nll = {}
        for lam in lambdas:
            z = (1.0 - lam) * test_logits
            acc[lam].append(float(np.mean(z.argmax(1) == data.y_test)))
            ece[lam].append(expected_calibration_error(z, data.y_test, num_bins=cfg.num_bins))
            nll[lam].append(_nll(z, data.y_test))
            val_nll[lam] = _nll((1.0 - lam) * val_logits, y_val)
            t_ece = _temperature_ece(test_logits, data.y_test, 1.0 / (1.0 - lam), cfg.num_bins)
            temp_gap = max(temp_gap, abs(t_ece - ece[lam][-1]))
        best = min(lambdas, key=lambda lam: val_nll[lam])
        chosen.append(best)
        if diagram is None:
            diagram = (s, test_logits, best)
        ece0.append(ece[0.0][-1])
        ece_star.append(ece[best][-1])
        ctx.say(
            f"  seed {s}: trained on {len(train_idx)} examples, test accuracy {acc[0.0][-1]:.3f}; "
            f"ECE at lambda 0 {ece0[-1]:.4f}, chosen lambda {best:g} -> {ece_star[-1]:.4f}"
        )

    accuracy_change = max(
        abs(a - b) for lam in lambdas for a, b in zip(acc[lam], acc[0.0], strict=True)
    )
    reduction = [a - b for a, b in zip(ece0, ece_star, strict=True)]
    checks = [
        exact_check(
            "accuracy_change",
            "shrinking the logits by any lambda in [0, 1) leaves every prediction unchanged: test "
            "accuracy changes by exactly 0 (largest change over lambdas and seeds)",
            measured=accuracy_change,
            expected=0.0,
            tolerance=0.0,
        ),
        exact_check(
            "temperature_equivalence",
            "z = (1 - lambda) x is temperature scaling with T = 1/(1 - lambda): the ECE computed "
            "from x / T equals the ECE of the shrunk logits (largest difference)",
            measured=temp_gap,
            expected=0.0,
            tolerance=1e-12,
        ),
        empirical_check(
            "shrink_lowers_ece",
            f"lambda chosen on a validation half of the test split (lowest NLL among {lambdas}) "
            "lowers the ECE on the other half, for a ResNet trained on "
            f"{len(train_idx)} digits (mean over seeds of ECE(0) - ECE(lambda*) > 0)",
            measured=float(np.mean(reduction)),
            expected="> 0",
            holds=float(np.mean(reduction)) > 0,
            detail="per seed ECE(0) -> ECE(lambda*): "
            + ", ".join(
                f"{a:.4f} -> {b:.4f} (lambda {c:g})"
                for a, b, c in zip(ece0, ece_star, chosen, strict=True)
            ),
        ),
    ]
    figures = {
        "accuracy_change": accuracy_change,
        "temperature_ece_gap": temp_gap,
        "per_lambda": {
            f"{lam:g}": {
                "ece": spread(ece[lam]),
                "nll": spread(nll[lam]),
                "accuracy": spread(acc[lam]),
            }
            for lam in lambdas
        },
        "chosen_lambda": chosen,
        "ece_at_zero": ece0,
        "ece_at_chosen": ece_star,
        "ece_reduction": spread(reduction),
    }
    plots = [
        plot_series(
            ctx.plots / "ece_vs_lambda.png",
            lambdas,
            {"test ECE": np.array([ece[lam] for lam in lambdas]).T},
            xlabel="shrink lambda (z = (1 - lambda) x)",
            ylabel=f"expected calibration error ({cfg.num_bins} bins)",
            title=f"ResNet on {len(train_idx)} digits, {len(seeds)} seeds",
        ),
        plot_series(
            ctx.plots / "nll_vs_lambda.png",
            lambdas,
            {"test NLL": np.array([nll[lam] for lam in lambdas]).T},
            xlabel="shrink lambda (z = (1 - lambda) x)",
            ylabel="negative log-likelihood",
            title=f"ResNet on {len(train_idx)} digits, {len(seeds)} seeds",
        ),
    ]
    s0, logits0, best0 = diagram
    fig = reliability_diagram(logits0, data.y_test, num_bins=cfg.num_bins, label="lambda 0")
    reliability_diagram(
        (1.0 - best0) * logits0,
        data.y_test,
        num_bins=cfg.num_bins,
        ax=fig.axes[0],
        label=f"lambda {best0:g} (chosen)",
    )
    fig.axes[0].set_title(f"test set, seed {s0}", fontsize=10)
    fig.tight_layout()
    fig.savefig(ctx.plots / "reliability.png", dpi=100)
    plots.append(ctx.plots / "reliability.png")
    rows = "\n".join(
        f"| {lam:g} | {fmt_spread(spread(acc[lam]))} | {fmt_spread(spread(ece[lam]))} | "
        f"{fmt_spread(spread(nll[lam]))} |"
        for lam in lambdas
    )
    report = (
        "## What was measured\n\n"
        f"Untied Euler ResNet (depth {cfg.depth}, width {cfg.width}) trained {cfg.steps} steps on "
        f"{len(train_idx)} digits; test split halved into validation ({len(val_idx)}) and test "
        f"({len(test_idx)}). ECE with {cfg.num_bins} equal-width bins.\n\n"
        "| lambda | test accuracy | test ECE | test NLL |\n|---|---|---|---|\n"
        + rows
        + "\n\nChosen lambda per seed (lowest validation NLL): "
        + ", ".join(f"{c:g}" for c in chosen)
        + "; test ECE at lambda 0 -> at the chosen lambda: "
        + ", ".join(f"{a:.4f} -> {b:.4f}" for a, b in zip(ece0, ece_star, strict=True))
        + ".\n"
    )
    return Result(checks, figures, report, plots)
