"""A linear residual denoiser learns the Wiener gain: a = -1 / (SNR + 1).

Clean signals t ~ N(0, signal_std^2 I) in `dim` dimensions, observations x = t + n with
n ~ N(0, signal_std^2 / snr I). The model is one residual block y = x + a x (a
`resode.nn.ResidualStack` of one Euler step over a scalar `FunctionField`, a = 0 at the start),
trained by `resode.train.fit` with full-batch gradient descent (sgd, no momentum, constant learning
rate, no clipping) on the mean squared error to t. Exact: full-batch gradient descent on this
quadratic is a_k = a* + (1 - 2 lr m_xx)^k (a_0 - a*), with a* = m_xt / m_xx - 1 and m_xx, m_xt the
training set's mean of x^2 and of x t; the trained a must equal it (float32 training). Empirical:
a* estimates the population optimum -1 / (SNR + 1) (the Wiener gain SNR / (SNR + 1) written as a
residual); over seeds, the theory value must lie within three standard errors of the mean learned
a (from each seed's least-squares standard error, sqrt(residual variance / sum x^2)), at `snr` and
at every SNR of the sweep.
"""

import dataclasses

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
)
from resode.nn import FunctionField, ResidualStack
from resode.train import fit

CLAIM = (
    "A linear residual y = x + a x trained by gradient descent on x = t + n learns "
    "a = -1/(SNR + 1), the Wiener gain written as a residual."
)
SOURCE = "applications.md: denoising with a linear residual block, optimal a = -1/(SNR + 1), Wiener"
KEY_FIGURE = "a_learned"


@dataclasses.dataclass
class Config:
    snr: float = 1.0  # signal variance / noise variance of the headline run
    seed: int = 0
    num_seeds: int = 5
    snrs: list[float] = dataclasses.field(default_factory=lambda: [0.1, 0.3, 1.0, 3.0, 10.0])
    dim: int = 16
    num_train: int = 1024
    num_test: int = 1024
    signal_std: float = 1.0
    steps: int = 100
    lr_factor: float = 0.2  # learning rate = lr_factor / E[x^2] (contraction 1 - 2 lr_factor)


QUICK = {"snrs": [0.5, 4.0], "num_seeds": 2, "num_train": 256, "num_test": 256, "steps": 40}


def validate(cfg: Config) -> None:
    if not cfg.snr > 0 or not cfg.snrs or any(not s > 0 for s in cfg.snrs):
        raise ConfigError("snr, snrs: signal-to-noise ratios must be > 0 (snrs non-empty).")
    for key in ("num_seeds", "dim", "num_train", "num_test", "steps"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}: must be >= 1, got {getattr(cfg, key)}.")
    if not 0 < cfg.lr_factor < 1:
        raise ConfigError(f"lr_factor: must be in (0, 1), got {cfg.lr_factor}.")
    if not cfg.signal_std > 0:
        raise ConfigError(f"signal_std: must be > 0, got {cfg.signal_std}.")


def _data(cfg, snr, seed):
    rng = np.random.default_rng(seed)
    noise_std = cfg.signal_std / np.sqrt(snr)
    n = cfg.num_train + cfg.num_test
    t = rng.normal(0, cfg.signal_std, (n, cfg.dim)).astype(np.float32)
    x = (t + rng.normal(0, noise_std, t.shape)).astype(np.float32)
    k = cfg.num_train
    return Dataset("wiener", "regression", 0, x[:k], t[:k], x[k:], t[k:], f"x = t + n, SNR {snr}")


def _model():
    field = FunctionField(jnp.zeros(()), lambda a, t, y, args: a * y)
    return ResidualStack(lambda k: field, 1, scheme="euler", tied=True, key=jax.random.key(0))


def _fit(cfg, snr, seed):
    data = _data(cfg, snr, seed)
    lr = cfg.lr_factor / (cfg.signal_std**2 * (1 + 1 / snr))
    c = fit_config(
        cfg.steps,
        lr,
        f"seed={seed}",
        f"data.batch_size={cfg.num_train}",
        "train.optimizer=sgd",
        "train.momentum=0",
        "train.schedule=constant",
        "train.grad_clip=null",
        f"train.steps_per_call={cfg.steps}",
    )
    result = fit(c, data, model=_model())
    a = float(result.model.field.params)
    x, t = data.x_train.astype(np.float64), data.y_train.astype(np.float64)
    m_xx, m_xt = float(np.mean(x * x)), float(np.mean(x * t))
    a_star = m_xt / m_xx - 1
    # Standard error of the least-squares slope (t = (1 + a) x + e, e independent of x for
    # jointly Gaussian t and x, so a* is unbiased): sqrt(residual variance / sum x^2).
    resid = t - (1 + a_star) * x
    stderr = float(np.sqrt(np.mean(resid**2) / np.sum(x * x)))
    rho = 1 - 2 * lr * m_xx
    a_gd = a_star + rho**cfg.steps * (0.0 - a_star)
    xt, tt = data.x_test.astype(np.float64), data.y_test.astype(np.float64)
    mse = lambda g: float(np.mean(((1 + g) * xt - tt) ** 2))
    return {
        "a": a,
        "a_gd": a_gd,
        "a_star": a_star,
        "stderr": stderr,
        "test_mse": mse(a),
        "test_mse_identity": mse(0.0),
        "test_mse_theory": mse(-1 / (snr + 1)),
    }


def run(cfg: Config, ctx) -> Result:
    seeds = seed_list(cfg.seed, cfg.num_seeds)
    snrs = sorted({float(s) for s in cfg.snrs} | {float(cfg.snr)})
    runs = {}
    for snr in snrs:
        ctx.say(f"SNR {snr:g}: {len(seeds)} seeds")
        runs[snr] = [_fit(cfg, snr, s) for s in seeds]
    head = runs[float(cfg.snr)]
    a_theory = -1 / (cfg.snr + 1)
    gd_err = max(abs(r["a"] - r["a_gd"]) for rs in runs.values() for r in rs)
    checks = [
        exact_check(
            "gradient_descent_closed_form",
            f"after {cfg.steps} full-batch gradient steps, a = a* + (1 - 2 lr m_xx)^k (a_0 - a*) "
            "from the training set's moments (largest difference, every SNR and seed; float32)",
            measured=gd_err,
            expected=0.0,
            tolerance=1e-5,
        )
    ]
    within, stderrs = {}, {}
    for snr in snrs:
        sp = spread(r["a"] for r in runs[snr])
        stderr = np.sqrt(np.mean([r["stderr"] ** 2 for r in runs[snr]]) / sp["n"])
        within[snr] = abs(sp["mean"] - (-1 / (snr + 1))) <= 3 * stderr
        stderrs[snr] = float(stderr)
    a_sp = spread(r["a"] for r in head)
    checks.append(
        empirical_check(
            "learns_wiener_gain",
            f"the learned a matches -1/(SNR + 1) at SNR = {cfg.snr:g} and at every SNR of the "
            "sweep",
            measured=a_sp["mean"],
            expected="|mean a - (-1/(SNR+1))| <= 3 standard errors of the mean (each seed's "
            "least-squares standard error) at every SNR",
            holds=all(within.values()),
            detail="; ".join(
                f"SNR {snr:g}: {fmt_spread(spread(r['a'] for r in runs[snr]), '.4f')} vs "
                f"{-1 / (snr + 1):.4f}"
                for snr in snrs
            ),
        )
    )
    figures = {
        "a_learned": a_sp["mean"],
        "a_learned_over_seeds": a_sp,
        "a_theory": a_theory,
        "test_mse": spread(r["test_mse"] for r in head),
        "test_mse_identity": spread(r["test_mse_identity"] for r in head),
        "test_mse_theory_gain": spread(r["test_mse_theory"] for r in head),
        "optimal_mse_population": cfg.signal_std**2 / (cfg.snr + 1),
        "sweep": {
            f"{snr:g}": {
                "a": spread(r["a"] for r in runs[snr]),
                "a_theory": -1 / (snr + 1),
                "stderr_of_mean": stderrs[snr],
                "within_3_stderr": bool(within[snr]),
            }
            for snr in snrs
        },
    }
    learned = np.array([[r["a"] for r in runs[snr]] for snr in snrs]).T
    plot = plot_series(
        ctx.plots / "a_vs_snr.png",
        snrs,
        {"learned a": learned},
        xlabel="SNR (signal variance / noise variance)",
        ylabel="residual gain a",
        title=f"y = x + a x, {cfg.dim} dims, {cfg.num_train} examples, {len(seeds)} seeds",
        logx=True,
        reference={"-1/(SNR + 1)": -1 / (np.array(snrs) + 1)},
    )
    report = (
        "## What was measured\n\n"
        f"At SNR = {cfg.snr:g}: learned a = {fmt_spread(a_sp, '.4f')} against -1/(SNR+1) = "
        f"{a_theory:.4f}; test MSE {fmt_spread(figures['test_mse'], '.4f')} (identity, a = 0: "
        f"{fmt_spread(figures['test_mse_identity'], '.4f')}; the population optimum "
        f"signal_var/(SNR+1) = {figures['optimal_mse_population']:.4f}). Gradient descent "
        f"matched its closed form to {gd_err:.2g}.\n\nSweep: "
        + "; ".join(
            f"SNR {snr:g}: {fmt_spread(spread(r['a'] for r in runs[snr]), '.4f')} "
            f"(theory {-1 / (snr + 1):.4f}; s.e. of the mean {stderrs[snr]:.4f}: "
            f"{'within' if within[snr] else 'OUTSIDE'} 3 s.e.)"
            for snr in snrs
        )
        + ".\n"
    )
    return Result(checks, figures, report, [plot])
