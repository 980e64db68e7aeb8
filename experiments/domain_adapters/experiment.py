"""Domain adaptation with residual adapters: a frozen network learns a shifted domain through
zero-initialised branches x + F(x).

The seed chapter (applications.md, "continual learning and domain adaptation") proposes residual
adapters for a new domain: the frozen network keeps the source domain, the small branches absorb
the shift. Rebuffi et al. (NeurIPS 2017, "Learning multiple visual domains with residual
adapters") train such adapters per domain. Setting: a ResNet trained on digits (the source); the
target domain is the same digits shifted (rotated by 90 degrees, inverted, or with added noise),
of which only `target_labels` labelled examples are available. Adapters beside every residual
block are trained on them, base and head frozen; fine-tuning every parameter on the same examples
is the baseline. The domain gap is the maximum mean discrepancy (rbf kernel, median-heuristic
bandwidth fixed on the base features) between the source and target test features the head sees.

Exact: adapter training leaves every base parameter bit for bit as it was, so the source domain
served without the adapters keeps exactly its accuracy; the MMD estimator with a linear kernel
equals the squared distance of the feature means. Empirical (over seeds): the adapters close at
least half of the target accuracy gap, the source accuracy with the adapters switched on stays
within 0.02 of its value before, and the domain gap falls.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

import resode.nn as rn
from resode.config import ConfigError
from resode.data import load
from resode.experiments import (
    Result,
    empirical_check,
    exact_check,
    fit_config,
    fmt_spread,
    held_out_accuracy,
    max_param_change,
    plot_series,
    require_at_least_one,
    seed_list,
    spread,
)
from resode.robust import maximum_mean_discrepancy
from resode.train import Trainer, build_model, fit

CLAIM = (
    "A residual adapter x + F(x) trained on a shifted domain recovers the target accuracy while "
    "the source accuracy stays, and lowers the domain gap (MMD of features)."
)
SOURCE = (
    "applications.md: domain adaptation with residual branches on a frozen network; Rebuffi et "
    "al., NeurIPS 2017, 'Learning multiple visual domains with residual adapters'; Gretton et "
    "al., JMLR 2012 (MMD)"
)
KEY_FIGURE = "target_accuracy"
SHIFTS = ("rotate", "invert", "noise")
METHODS = ("adapters", "fine_tune")
SOURCE_SLACK = 0.02  # "the source accuracy stays": within this of its value before


@dataclasses.dataclass
class Config:
    shift: str = "rotate"  # rotate (90 degrees) | invert (1 - x) | noise (+ N(0, noise_std))
    target_labels: int = 200  # labelled target training examples
    seed: int = 0
    num_seeds: int = 3
    noise_std: float = 0.5  # shift=noise only
    adapter_width: int = 16
    width: int = 64
    depth: int = 4
    steps_source: int = 600
    steps_target: int = 300
    lr: float = 3e-3


QUICK = {
    "num_seeds": 1,
    "width": 16,
    "adapter_width": 4,
    "depth": 2,
    "steps_source": 30,
    "steps_target": 20,
    "target_labels": 64,
}


def validate(cfg: Config) -> None:
    if cfg.shift not in SHIFTS:
        raise ConfigError(
            f"shift: {cfg.shift!r} is not allowed; choose one of: {', '.join(SHIFTS)}."
        )
    require_at_least_one(
        cfg, "target_labels", "num_seeds", "adapter_width", "width", "depth", "steps_source",
        "steps_target",
    )  # fmt: skip
    if not cfg.lr > 0:
        raise ConfigError(f"lr: must be > 0, got {cfg.lr}.")
    if not cfg.noise_std > 0:
        raise ConfigError(f"noise_std: must be > 0, got {cfg.noise_std}.")


def shifted(x: np.ndarray, shift: str, noise_std: float, seed: int) -> np.ndarray:
    """Images ``(n, channels, h, w)`` in [0, 1] moved to the target domain."""
    if shift == "rotate":
        return np.ascontiguousarray(np.rot90(x, k=1, axes=(-2, -1)))
    if shift == "invert":
        return 1.0 - x
    noise = np.random.default_rng(seed).normal(0.0, noise_std, x.shape)
    return np.clip(x + noise, 0.0, 1.0).astype(x.dtype)


def _target(source, cfg: Config):
    """The target domain: the first `target_labels` training images and every test image,
    shifted (noise drawn once from fixed generators, the same for every seed)."""
    n = min(cfg.target_labels, source.x_train.shape[0])
    return dataclasses.replace(
        source,
        x_train=shifted(source.x_train[:n], cfg.shift, cfg.noise_std, 1),
        y_train=source.y_train[:n],
        x_test=shifted(source.x_test, cfg.shift, cfg.noise_std, 2),
    )


def _features(model, x) -> np.ndarray:
    fn = jax.jit(jax.vmap(lambda v: model.features(v, inference=True)[0]))
    return np.asarray(fn(jnp.asarray(x)), np.float64)


def run(cfg: Config, ctx) -> Result:
    source = load("digits")
    seeds = seed_list(cfg.seed, cfg.num_seeds)
    common = [f"model.width={cfg.width}", f"model.body.num_steps={cfg.depth}"]
    batch = f"data.batch_size={min(128, cfg.target_labels)}"
    names = ("source_before", "target_before")
    acc = {k: [] for k in names}
    for m in METHODS:
        acc[f"source_{m}"], acc[f"target_{m}"] = [], []
    gap = {k: [] for k in ("before", "adapters", "adapters_on", "fine_tune")}
    base_change, per_domain_gap, linear_identity = 0.0, 0.0, 0.0
    trainers: dict[str, Trainer] = {}
    target = _target(source, cfg)
    for s in seeds:
        cs = fit_config(cfg.steps_source, cfg.lr, f"seed={s}", *common, "train.steps_per_call=50")
        trainers.setdefault("source", Trainer(cs, source))
        base = fit(cs, source, model=build_model(cs, source), trainer=trainers["source"]).model
        acc["source_before"].append(held_out_accuracy(base, source))
        acc["target_before"].append(held_out_accuracy(base, target))
        f_src, f_tgt = _features(base, source.x_test), _features(base, target.x_test)
        before, bandwidth = maximum_mean_discrepancy(f_src, f_tgt)
        gap["before"].append(before)
        linear, _ = maximum_mean_discrepancy(f_src, f_tgt, kernel="linear")
        linear_identity = max(
            linear_identity, abs(linear - float(np.sum((f_src.mean(0) - f_tgt.mean(0)) ** 2)))
        )

        ct = fit_config(cfg.steps_target, cfg.lr, f"seed={s}", *common, batch)
        trainers.setdefault("fine_tune", Trainer(ct, target, model=base))
        tuned = fit(ct, target, model=base, trainer=trainers["fine_tune"]).model
        acc["source_fine_tune"].append(held_out_accuracy(tuned, source))
        acc["target_fine_tune"].append(held_out_accuracy(tuned, target))
        gap["fine_tune"].append(
            maximum_mean_discrepancy(
                _features(tuned, source.x_test),
                _features(tuned, target.x_test),
                bandwidth=bandwidth,
            )[0]
        )

        adapted = rn.add_adapters(base, cfg.adapter_width, key=jax.random.PRNGKey(2000 + s))
        ca = fit_config(
            cfg.steps_target,
            cfg.lr,
            f"seed={s}",
            *common,
            batch,
            f"model.adapter_hidden={cfg.adapter_width}",
            "train.trainable=adapters",
        )
        trainers.setdefault("adapters", Trainer(ca, target, model=adapted))
        learned = fit(ca, target, model=adapted, trainer=trainers["adapters"]).model
        acc["source_adapters"].append(held_out_accuracy(learned, source))
        acc["target_adapters"].append(held_out_accuracy(learned, target))
        inner = rn.remove_adapters(learned)
        base_change = max(base_change, max_param_change(inner, base))
        per_domain_gap = max(
            per_domain_gap, abs(held_out_accuracy(inner, source) - acc["source_before"][-1])
        )
        f_tgt_adapted = _features(learned, target.x_test)
        # Served per domain: the source through the base, the target through the adapters.
        gap["adapters"].append(
            maximum_mean_discrepancy(f_src, f_tgt_adapted, bandwidth=bandwidth)[0]
        )
        gap["adapters_on"].append(
            maximum_mean_discrepancy(
                _features(learned, source.x_test), f_tgt_adapted, bandwidth=bandwidth
            )[0]
        )
        ctx.say(
            f"  seed {s}: source {acc['source_before'][-1]:.3f}, target "
            f"{acc['target_before'][-1]:.3f} -> adapters {acc['target_adapters'][-1]:.3f} "
            f"(source with adapters on {acc['source_adapters'][-1]:.3f}), fine-tune "
            f"{acc['target_fine_tune'][-1]:.3f} (source {acc['source_fine_tune'][-1]:.3f}); "
            f"MMD^2 {gap['before'][-1]:.4f} -> {gap['adapters'][-1]:.4f}"
        )

    mean = {k: float(np.mean(v)) for k, v in acc.items()}
    mgap = {k: float(np.mean(v)) for k, v in gap.items()}
    needed = 0.5 * (mean["source_before"] - mean["target_before"])
    recovered = mean["target_adapters"] - mean["target_before"]
    source_drop = mean["source_before"] - mean["source_adapters"]
    checks = [
        exact_check(
            "base_unchanged",
            "training only the adapters leaves every base parameter as it was (largest change of "
            "any base parameter, over seeds)",
            measured=base_change,
            expected=0.0,
            tolerance=0.0,
        ),
        exact_check(
            "source_served_without_adapters",
            "served without the adapters, the source accuracy after adaptation equals its "
            "accuracy before (largest difference over seeds)",
            measured=per_domain_gap,
            expected=0.0,
            tolerance=0.0,
        ),
        exact_check(
            "mmd_linear_identity",
            "with a linear kernel the MMD^2 estimate equals the squared distance of the source "
            "and target feature means (largest difference over seeds, float64)",
            measured=linear_identity,
            expected=0.0,
            tolerance=1e-9,
            compare="le",
        ),
        empirical_check(
            "adapters_recover_target",
            "adapter training raises the mean target accuracy by at least half the gap between "
            "source and target accuracy before adaptation",
            measured=recovered,
            expected=f">= {needed:.4f}",
            holds=recovered >= needed,
            detail="target accuracy per seed before "
            + ", ".join(f"{v:.3f}" for v in acc["target_before"])
            + "; after "
            + ", ".join(f"{v:.3f}" for v in acc["target_adapters"]),
        ),
        empirical_check(
            "source_stays_with_adapters_on",
            "with the adapters switched on (one network for both domains), the mean source "
            f"accuracy stays within {SOURCE_SLACK:g} of its value before",
            measured=source_drop,
            expected=f"<= {SOURCE_SLACK:g}",
            holds=source_drop <= SOURCE_SLACK,
            detail="source accuracy per seed with adapters on "
            + ", ".join(f"{v:.3f}" for v in acc["source_adapters"]),
        ),
        empirical_check(
            "gap_lowered",
            "the MMD^2 between source features (base) and target features (adapted) is below the "
            "gap before adaptation (means over seeds, bandwidth fixed before)",
            measured=mgap["adapters"],
            expected=f"< {mgap['before']:.4f}",
            holds=mgap["adapters"] < mgap["before"],
            detail="per seed before "
            + ", ".join(f"{v:.4f}" for v in gap["before"])
            + "; after "
            + ", ".join(f"{v:.4f}" for v in gap["adapters"]),
        ),
    ]
    figures = {
        "target_accuracy": {
            "before": spread(acc["target_before"]),
            **{m: spread(acc[f"target_{m}"]) for m in METHODS},
        },
        "source_accuracy": {
            "before": spread(acc["source_before"]),
            **{m: spread(acc[f"source_{m}"]) for m in METHODS},
        },
        "domain_gap": {k: spread(v) for k, v in gap.items()},
        "base_parameter_change": base_change,
        "adapter_params": int(
            rn.count_params(rn.add_adapters(base, cfg.adapter_width, key=jax.random.PRNGKey(0)))
            - rn.count_params(base)
        ),
        "base_params": int(rn.count_params(base)),
    }
    plots = [
        plot_series(
            ctx.plots / "accuracy.png",
            [0, 1],
            {
                "target, adapters": np.array([acc["target_before"], acc["target_adapters"]]).T,
                "source, adapters on": np.array([acc["source_before"], acc["source_adapters"]]).T,
                "target, fine-tune": np.array([acc["target_before"], acc["target_fine_tune"]]).T,
                "source, fine-tune": np.array([acc["source_before"], acc["source_fine_tune"]]).T,
            },
            xlabel="0: before adaptation, 1: after",
            ylabel="test accuracy",
            title=f"digits -> {cfg.shift}, {cfg.target_labels} target labels, {len(seeds)} seeds",
        ),
    ]
    report = (
        "## What was measured\n\n"
        f"Untied Euler ResNet (depth {cfg.depth}, width {cfg.width}, {figures['base_params']} "
        f"parameters) trained {cfg.steps_source} steps on digits; target domain: the digits "
        + {
            "rotate": "rotated by 90 degrees",
            "invert": "inverted (1 - x)",
            "noise": f"with Gaussian noise (std {cfg.noise_std:g}, clipped to [0, 1])",
        }[cfg.shift]
        + f", {cfg.target_labels} labelled training examples, the shifted test set for "
        f"evaluation. Adaptation: {cfg.steps_target} steps of adapters of hidden width "
        f"{cfg.adapter_width} ({figures['adapter_params']} parameters; base and head frozen) or "
        "of every parameter (fine-tune). Domain gap: MMD^2 (rbf, bandwidth from the base "
        "features before adaptation) between source and target test features.\n\n"
        "| | before | adapters | fine-tune |\n|---|---|---|---|\n"
        f"| target accuracy | {fmt_spread(spread(acc['target_before']))} | "
        f"{fmt_spread(spread(acc['target_adapters']))} | "
        f"{fmt_spread(spread(acc['target_fine_tune']))} |\n"
        f"| source accuracy (one network) | {fmt_spread(spread(acc['source_before']))} | "
        f"{fmt_spread(spread(acc['source_adapters']))} | "
        f"{fmt_spread(spread(acc['source_fine_tune']))} |\n"
        f"| MMD^2 source vs target | {fmt_spread(spread(gap['before']), '.4f')} | "
        f"{fmt_spread(spread(gap['adapters']), '.4f')} (per domain; "
        f"{fmt_spread(spread(gap['adapters_on']), '.4f')} adapters on both) | "
        f"{fmt_spread(spread(gap['fine_tune']), '.4f')} |\n"
    )
    return Result(checks=checks, figures=figures, plots=plots, report=report)
