"""A trained residual block learns the correction: F(x) points along t - x.

Targets t lie on a smooth 2-D manifold in R^dim (t = tanh(A z), z ~ N(0, I_2)); inputs are
x = t + noise * n with Gaussian n. A one-step `resode.nn.ResidualStack` y = x + F(x) (MLP field) is
trained by `resode.train.fit` on the mean squared error to t. Empirical (over seeds): on test inputs
F(x) points along the error t - x, mean cos(F(x), t - x) above 0.5 in every seed (stated before the
run). Exact (float64, the trained weights): the loss is the error of the branch,
||y - t||^2 = ||F(x) - (t - x)||^2, with F evaluated through the field itself.
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from resode.config import ConfigError
from resode.data import Dataset
from resode.experiments import (
    Result,
    empirical_check,
    exact_check,
    fit_config,
    fmt_spread,
    plot_series,
    seed_list,
    spread,
    to_float64,
)
from resode.nn import MLPField, ResidualStack
from resode.train import Trainer, fit

CLAIM = "A trained block y = x + F(x) learns the correction: F(x) points along t - x."
SOURCE = "principles.md: learning a correction F(x) ~ t - x"
KEY_FIGURE = "mean_cosine"
THRESHOLD = 0.5  # the criterion, fixed before any run: mean cosine above 0.5 in every seed


@dataclasses.dataclass
class Config:
    noise: float = 0.3  # standard deviation of the input corruption
    steps: int = 1500
    seed: int = 0
    num_seeds: int = 3
    dim: int = 16
    hidden: int = 64
    num_train: int = 2000
    num_test: int = 1000
    lr: float = 3e-3


QUICK = {"steps": 60, "num_seeds": 2, "num_train": 256, "num_test": 128, "hidden": 16}


def validate(cfg: Config) -> None:
    if not cfg.noise > 0:
        raise ConfigError(f"noise: must be > 0 (t - x is the corruption), got {cfg.noise}.")
    for key in ("steps", "num_seeds", "dim", "hidden", "num_train", "num_test"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}: must be >= 1, got {getattr(cfg, key)}.")


def _data(cfg: Config, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(cfg.dim, 2)) * 1.5
    n = cfg.num_train + cfg.num_test
    t = np.tanh(rng.normal(size=(n, 2)) @ a.T)
    x = t + cfg.noise * rng.normal(size=t.shape)
    x, t = x.astype(np.float32), t.astype(np.float32)
    k = cfg.num_train
    return Dataset("manifold", "regression", 0, x[:k], t[:k], x[k:], t[k:], "noisy manifold")


def _cosines(model, x, t):
    field = jax.tree_util.tree_map(lambda a: a[0] if eqx.is_array(a) else a, model.field)
    f = jax.vmap(lambda xi: field(0.0, xi))(x)  # the branch itself (h = 1, alpha = 1)
    y = jax.vmap(lambda xi: model(xi, inference=True)[0])(x)
    e = t - x
    cos = jnp.sum(f * e, 1) / (jnp.linalg.norm(f, axis=1) * jnp.linalg.norm(e, axis=1))
    direct = jnp.mean(jnp.sum((y - t) ** 2, 1))
    branch = jnp.mean(jnp.sum((f - e) ** 2, 1))
    return cos, direct, branch


def run(cfg: Config, ctx) -> Result:
    seeds = seed_list(cfg.seed, cfg.num_seeds)
    base = fit_config(cfg.steps, cfg.lr, "train.steps_per_call=100", "data.batch_size=128")
    means, means_init, positive, decomposition, mse, mse_identity = [], [], [], [], [], []
    for s in seeds:
        data = _data(cfg, s)
        model = ResidualStack(
            lambda k: MLPField(cfg.dim, cfg.hidden, key=k), 1, key=jax.random.PRNGKey(s)
        )
        cfg_s = dataclasses.replace(base, seed=s)
        result = fit(cfg_s, data, model=model, trainer=Trainer(cfg_s, data, model=model))
        with jax.enable_x64(True):
            x = jnp.asarray(data.x_test, jnp.float64)
            t = jnp.asarray(data.y_test, jnp.float64)
            cos, direct, branch = jax.jit(_cosines)(to_float64(result.model), x, t)
            cos0, _, _ = jax.jit(_cosines)(to_float64(model), x, t)
            decomposition.append(float(jnp.abs(direct - branch) / direct))
            mse.append(float(direct) / cfg.dim)
            mse_identity.append(float(jnp.mean((x - t) ** 2)))
            means.append(float(jnp.mean(cos)))
            means_init.append(float(jnp.mean(cos0)))
            positive.append(float(jnp.mean(cos > 0)))
        ctx.say(f"  seed {s}: mean cos(F, t - x) {means_init[-1]:+.3f} -> {means[-1]:+.3f}")
    sp = spread(means)
    eps = np.finfo(np.float64).eps
    checks = [
        exact_check(
            "loss_decomposition_error",
            "||y - t||^2 = ||F(x) - (t - x)||^2 on the test set, F through the field itself "
            "(relative difference, largest over seeds)",
            measured=max(decomposition),
            expected=0.0,
            tolerance=1e3 * eps,
        ),
        empirical_check(
            "correction_aligned",
            f"after training F(x) points along t - x: mean cosine above {THRESHOLD} in every seed",
            measured=sp["mean"],
            expected=f"> {THRESHOLD} in every seed",
            holds=all(m > THRESHOLD for m in means),
            detail=f"mean cosine {fmt_spread(sp)} (at initialisation "
            f"{fmt_spread(spread(means_init))}); fraction of test inputs with a positive cosine "
            f"{fmt_spread(spread(positive))}",
        ),
    ]
    figures = {
        "mean_cosine": sp["mean"],
        "mean_cosine_spread": sp,
        "mean_cosine_init": spread(means_init),
        "fraction_positive": spread(positive),
        "test_mse_per_coordinate": spread(mse),
        "identity_mse_per_coordinate": spread(mse_identity),
        "loss_decomposition_error": max(decomposition),
        "seeds": seeds,
    }
    plot = plot_series(
        ctx.plots / "cosine_by_seed.png",
        seeds,
        {"trained": np.array(means), "initial": np.array(means_init)},
        xlabel="seed",
        ylabel="mean cos(F(x), t - x) on test inputs",
        title=f"noise {cfg.noise}, dim {cfg.dim}",
        reference={f"criterion {THRESHOLD}": np.full(len(seeds), THRESHOLD)},
    )
    report = (
        "## What was measured\n\n"
        f"dim {cfg.dim}, noise {cfg.noise}, field width {cfg.hidden}, {cfg.num_train} training "
        f"pairs, {cfg.steps} Adam steps (lr {cfg.lr}), seeds {seeds}. Mean cos(F(x), t - x) on "
        f"{cfg.num_test} test inputs: {fmt_spread(sp)} after training, "
        f"{fmt_spread(spread(means_init))} at initialisation; fraction with a positive cosine "
        f"{fmt_spread(spread(positive))}. Test MSE per coordinate "
        f"{fmt_spread(spread(mse), '.4f')} against {fmt_spread(spread(mse_identity), '.4f')} for "
        "the identity (y = x).\n"
    )
    return Result(checks, figures, report, [plot])
