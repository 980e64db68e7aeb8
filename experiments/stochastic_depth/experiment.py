"""Stochastic depth: drop residual blocks at random in training, scale them at evaluation.

Huang et al. (ECCV 2016, "Deep networks with stochastic depth") drop block k of a ResNet with
probability 1 - p_k during training (p_k decaying linearly with depth) and scale it by p_k at test
time; the seed chapter (applications.md) lists it among the regularisers the residual form
allows. `resode.nn.ResidualStack(drop_rate=...)` implements it. Exact: for Euler steps of linear
blocks, y_N = prod_k (I + h s_k W_k) y_0 with independent s_k ~ Bernoulli(p_k) is multilinear in
the s_k, so its expectation is prod_k (I + h p_k W_k) y_0, the evaluation-mode output; a Monte
Carlo mean of training-mode outputs must match it within its standard error. Empirical (over
seeds): on a small training set, a deep ResNet trained with stochastic depth has higher test
accuracy than the same ResNet without it.
"""

import dataclasses

import equinox as eqx
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
    fit_seeds,
    fmt_spread,
    plot_series,
    seed_list,
    spread,
)

CLAIM = (
    "Stochastic depth's evaluation scaling is the exact expectation of its training outputs for "
    "linear Euler blocks; on a small training set it makes a deep ResNet generalise better."
)
SOURCE = (
    "Huang et al., ECCV 2016, 'Deep networks with stochastic depth'; applications.md: residual "
    "networks and regularisation"
)
KEY_FIGURE = "expectation_error"
Z_LIMIT = 5.0  # Monte Carlo: largest |mean - expectation| / standard error allowed


@dataclasses.dataclass
class Config:
    drop_rate: list = dataclasses.field(default_factory=lambda: [0.0, 0.2, 0.5])
    depth: int = 16
    train_size: int = 200  # training examples (a subset of digits' training split)
    seed: int = 0
    num_seeds: int = 3
    width: int = 64
    steps: int = 800
    lr: float = 3e-3
    mc_samples: int = 20000  # Monte Carlo draws of the training-mode output
    dim: int = 6  # state size of the linear stack of the exact check


QUICK = {
    "drop_rate": [0.0, 0.5],
    "depth": 4,
    "train_size": 64,
    "num_seeds": 1,
    "width": 16,
    "steps": 20,
    "mc_samples": 2000,
    "dim": 3,
}


def validate(cfg: Config) -> None:
    if not isinstance(cfg.drop_rate, list) or not cfg.drop_rate:
        raise ConfigError(f"drop_rate: must be a non-empty list, got {cfg.drop_rate!r}.")
    if any(not 0.0 <= float(p) < 1.0 for p in cfg.drop_rate):
        raise ConfigError(f"drop_rate: every rate must be in [0, 1), got {cfg.drop_rate!r}.")
    for key in ("depth", "train_size", "num_seeds", "width", "steps", "mc_samples", "dim"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}: must be >= 1, got {getattr(cfg, key)}.")
    if cfg.mc_samples < 100:
        raise ConfigError(f"mc_samples: must be >= 100, got {cfg.mc_samples}.")


class LinearField(rn.AbstractVectorField):
    """f(t, y) = W y: a linear residual branch."""

    weight: jax.Array

    def __call__(self, t, y, args=None):
        return self.weight @ y


def _expectation_z(rate, cfg):
    """Largest |Monte Carlo mean - evaluation output| / standard error over coordinates."""
    with jax.enable_x64(True):
        key = jax.random.PRNGKey(cfg.seed)
        stack = rn.ResidualStack(
            lambda k: LinearField(jax.random.normal(k, (cfg.dim, cfg.dim), jnp.float64) / 2),
            cfg.depth,
            drop_rate=rate,
            key=key,
        )
        y0 = jax.random.normal(jax.random.fold_in(key, 1), (cfg.dim,), jnp.float64)
        keys = jax.random.split(jax.random.fold_in(key, 2), cfg.mc_samples)
        train_out = eqx.filter_jit(jax.vmap(lambda k: stack(y0, key=k)[0]))(keys)
        eval_out = stack(y0, inference=True)[0]
        mean = jnp.mean(train_out, axis=0)
        se = jnp.std(train_out, axis=0, ddof=1) / np.sqrt(cfg.mc_samples)
        safe = jnp.where(se > 0, se, 1.0)
        z = jnp.where(se > 0, jnp.abs(mean - eval_out) / safe, jnp.abs(mean - eval_out) * 1e12)
        return float(jnp.max(z))


def run(cfg: Config, ctx) -> Result:
    rates = sorted(float(p) for p in cfg.drop_rate)
    if 0.0 not in rates:
        rates = [0.0, *rates]
    seeds = seed_list(cfg.seed, cfg.num_seeds)
    zs = {p: _expectation_z(p, cfg) for p in rates if p > 0}
    for p, z in zs.items():
        ctx.say(f"  drop rate {p:g}: Monte Carlo |mean - evaluation output| / SE at most {z:.2f}")
    worst_z = max(zs.values()) if zs else 0.0

    full = load("digits")
    idx = np.random.default_rng(cfg.seed).permutation(len(full.x_train))[: cfg.train_size]
    data = dataclasses.replace(full, x_train=full.x_train[idx], y_train=full.y_train[idx])
    train_acc = {p: [] for p in rates}
    test_acc = {p: [] for p in rates}
    for p in rates:
        results = fit_seeds(
            data,
            seeds,
            cfg.steps,
            cfg.lr,
            f"model.width={cfg.width}",
            f"model.body.num_steps={cfg.depth}",
            f"model.body.drop_rate={p}",
            f"data.batch_size={min(128, len(idx))}",
            "train.steps_per_call=50",
            evaluate_train=True,
        )
        for result in results:
            train_acc[p].append(float(result.evaluation["train_accuracy"]))
            test_acc[p].append(float(result.evaluation["test_accuracy"]))
        ctx.say(
            f"  drop rate {p:g}: train {fmt_spread(spread(train_acc[p]))}, test "
            f"{fmt_spread(spread(test_acc[p]))}"
        )
    gain = {p: float(np.mean(test_acc[p]) - np.mean(test_acc[0.0])) for p in rates if p > 0}
    gap = {p: [a - b for a, b in zip(train_acc[p], test_acc[p], strict=True)] for p in rates}

    checks = [
        exact_check(
            "expectation_error",
            f"linear Euler blocks (depth {cfg.depth}, dim {cfg.dim}): the mean of "
            f"{cfg.mc_samples} training-mode outputs equals the evaluation-mode output within "
            f"{Z_LIMIT:g} standard errors in every coordinate, for every rate > 0 (largest z)",
            measured=worst_z,
            expected=Z_LIMIT,
            tolerance=0.0,
            compare="le",
        ),
        empirical_check(
            "stochastic_depth_generalises",
            f"on {len(idx)} training digits a depth-{cfg.depth} ResNet trained with stochastic "
            "depth has a higher mean test accuracy than without, at every rate > 0 in the list",
            measured=gain,
            expected="> 0 at every rate",
            holds=bool(gain) and all(v > 0 for v in gain.values()),
            detail=f"seeds {seeds}",
        ),
    ]
    figures = {
        "expectation_error": worst_z,
        "expectation_z_by_rate": {f"{p:g}": z for p, z in zs.items()},
        "per_rate": {
            f"{p:g}": {
                "train_accuracy": spread(train_acc[p]),
                "test_accuracy": spread(test_acc[p]),
                "generalisation_gap": spread(gap[p]),
            }
            for p in rates
        },
        "test_accuracy_gain": {f"{p:g}": v for p, v in gain.items()},
    }
    plots = [
        plot_series(
            ctx.plots / "accuracy_vs_drop_rate.png",
            rates,
            {
                "train": np.array([train_acc[p] for p in rates]).T,
                "test": np.array([test_acc[p] for p in rates]).T,
            },
            xlabel="drop rate (last block's drop probability)",
            ylabel="accuracy",
            title=f"depth {cfg.depth} ResNet, {len(idx)} training digits, {len(seeds)} seeds",
        )
    ]
    rows = "\n".join(
        f"| {p:g} | {fmt_spread(spread(train_acc[p]))} | {fmt_spread(spread(test_acc[p]))} | "
        f"{fmt_spread(spread(gap[p]))} |"
        for p in rates
    )
    report = (
        "## What was measured\n\n"
        "Exact: Monte Carlo z-scores (largest over coordinates) of the training-mode mean against "
        "the evaluation output, per rate: "
        + ", ".join(f"{p:g}: {z:.2f}" for p, z in zs.items())
        + f".\n\nUntied Euler ResNet, depth {cfg.depth}, width {cfg.width}, {cfg.steps} steps on "
        f"{len(idx)} digits (test split: all {len(full.x_test)}).\n\n"
        "| drop rate | train accuracy | test accuracy | generalisation gap |\n|---|---|---|---|\n"
        + rows
        + "\n"
    )
    return Result(checks, figures, report, plots)
