"""Learn the derivative (x + h F(x), a forward-Euler residual block) or the map x_k -> x_{k+1}?

For each sampling interval h of `step_sizes`, pairs (x(0), x(h)) of a dynamical system (a
`resode.data` dynamics set: initial states from its distribution, the next state from its
integrator) train two models with the same field (an `MLPField`, same parameters, same training):
the derivative model x + h F(x) (a one-step Euler `ResidualStack`) and the map model G(x) (the
same stack without the skip connection). Observation noise of std `noise` is added to both states
of the training pairs; test pairs are clean. Exact: the pairs are h apart, i.e. integrating the
system's own vector field from x(0) for time h (RK4, 200 substeps, float64) reproduces x(h) to
float32 rounding. Empirical (the chapter's claim as a criterion fixed before the run): the
derivative model has the lower test error at the smallest h and the map model at the largest h,
in every seed; `crossover_step` is the smallest h at which the map's mean test error is lower.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

import resode
from resode.config import ConfigError
from resode.data import Dataset, load
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
from resode.nn import MLPField, ResidualStack
from resode.train import fit

CLAIM = (
    "On trajectories sampled every h, learning the derivative (x + hF(x), forward Euler) beats "
    "learning the map x_k -> x_{k+1} when h is small and the data clean; the map wins when h is "
    "large."
)
SOURCE = "applications.md: ResNets as forward Euler, learning derivatives versus maps"
KEY_FIGURE = "crossover_step"

# The vector fields of the dynamics sets at their default parameters (for the spacing check).
FIELDS = {
    "harmonic_oscillator": lambda y: jnp.stack([y[1], -y[0]]),
    "lotka_volterra": lambda y: jnp.stack(
        [1.5 * y[0] - 1.0 * y[0] * y[1], -3.0 * y[1] + 1.0 * y[0] * y[1]]
    ),
    "van_der_pol": lambda y: jnp.stack([y[1], 1.0 * (1 - y[0] ** 2) * y[1] - y[0]]),
}


@dataclasses.dataclass
class Config:
    step_sizes: list[float] = dataclasses.field(default_factory=lambda: [0.01, 0.03, 0.1, 0.3, 1.0])
    system: str = "lotka_volterra"
    noise: float = 0.0  # observation noise std on the training pairs
    seed: int = 0
    num_seeds: int = 3
    num_pairs: int = 1024  # training pairs (test: a quarter as many)
    hidden: int = 64
    steps: int = 1500
    lr: float = 3e-3


QUICK = {"step_sizes": [0.01, 1.0], "num_seeds": 1, "num_pairs": 256, "steps": 60, "hidden": 16}


def validate(cfg: Config) -> None:
    if len(cfg.step_sizes) < 2 or any(not h > 0 for h in cfg.step_sizes):
        raise ConfigError(f"step_sizes: need at least two positive values, got {cfg.step_sizes}.")
    if cfg.system not in FIELDS:
        raise ConfigError(
            f"system: {cfg.system!r} is not allowed; choose one of: {', '.join(FIELDS)}."
        )
    if cfg.noise < 0:
        raise ConfigError(f"noise: must be >= 0, got {cfg.noise}.")
    for key in ("num_seeds", "num_pairs", "hidden", "steps"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}: must be >= 1, got {getattr(cfg, key)}.")
    if not cfg.lr > 0:
        raise ConfigError(f"lr: must be > 0, got {cfg.lr}.")


def _pairs(cfg, h, seed):
    n_test = max(cfg.num_pairs // 4, 1)
    d = load(cfg.system, num_samples=cfg.num_pairs + n_test, num_times=2, t1=h, seed=seed)
    x0 = np.concatenate([d.x_train, d.x_test])
    x1 = np.concatenate([d.y_train[:, 1], d.y_test[:, 1]])
    return x0, x1, n_test


def _model(kind, dim, hidden, h, key):
    return ResidualStack(
        lambda k: MLPField(dim, hidden, key=k),
        1,
        scheme="euler",
        tied=True,
        t1=h,
        skip=kind == "derivative",
        key=key,
    )


def run(cfg: Config, ctx) -> Result:
    seeds = seed_list(cfg.seed, cfg.num_seeds)
    hs = [float(h) for h in cfg.step_sizes]
    f = FIELDS[cfg.system]
    errors = {k: np.zeros((len(seeds), len(hs))) for k in ("derivative", "map")}
    rel = {k: np.zeros((len(seeds), len(hs))) for k in ("derivative", "map")}
    spacing_err = 0.0
    for j, h in enumerate(hs):
        ctx.say(f"h = {h:g}")
        for i, seed in enumerate(seeds):
            x0, x1, n_test = _pairs(cfg, h, seed)
            with jax.enable_x64(True):
                ref = jax.jit(
                    jax.vmap(
                        lambda y: resode.integrate(
                            lambda t, u, a: f(u), y, 0.0, h, 200, scheme="rk4"
                        )
                    )
                )(jnp.asarray(x0, jnp.float64))
            scale = np.maximum(np.abs(x1), 1.0)
            spacing_err = max(spacing_err, float(np.max(np.abs(np.asarray(ref) - x1) / scale)))
            rng = np.random.default_rng(10_000 + seed)
            tr = slice(n_test, None)
            xn = x0[tr] + cfg.noise * rng.normal(size=x0[tr].shape)
            yn = x1[tr] + cfg.noise * rng.normal(size=x1[tr].shape)
            data = Dataset(
                "pairs", "regression", 0, xn.astype(np.float32), yn.astype(np.float32),
                x0[:n_test].astype(np.float32), x1[:n_test].astype(np.float32),
                f"{cfg.system} pairs h = {h}",
            )  # fmt: skip
            displacement = float(np.mean(np.sum((x1[:n_test] - x0[:n_test]) ** 2, axis=1)))
            for kind in ("derivative", "map"):
                c = fit_config(cfg.steps, cfg.lr, f"seed={seed}", "data.batch_size=128",
                               f"train.steps_per_call={cfg.steps}")  # fmt: skip
                model = _model(kind, x0.shape[1], cfg.hidden, h, jax.random.key(seed))
                r = fit(c, data, model=model)  # each seed has its own pairs: its own trainer
                # test_loss: mean over coordinates of the squared error of x(h).
                errors[kind][i, j] = r.evaluation["test_loss"]
                rel[kind][i, j] = np.sqrt(r.evaluation["test_loss"] * x0.shape[1] / displacement)
    mean = {k: v.mean(0) for k, v in errors.items()}
    map_wins = mean["map"] < mean["derivative"]
    crossover = float(hs[int(np.argmax(map_wins))]) if map_wins.any() else None
    small, large = int(np.argmin(hs)), int(np.argmax(hs))
    held = bool(
        np.all(errors["derivative"][:, small] < errors["map"][:, small])
        and np.all(errors["map"][:, large] < errors["derivative"][:, large])
    )
    checks = [
        exact_check(
            "pairs_are_h_apart",
            f"integrating the {cfg.system} field for time h from x(0) (RK4, 200 substeps, "
            "float64) reproduces x(h), at every h (largest error relative to max(|x|, 1))",
            measured=spacing_err,
            expected=0.0,
            tolerance=1e-5,
        ),
        empirical_check(
            "derivative_small_map_large",
            f"the derivative model wins at h = {hs[small]:g} and the map model at h = "
            f"{hs[large]:g} (noise {cfg.noise:g})",
            measured={"crossover_step": crossover},
            expected="test MSE: derivative < map at the smallest h and map < derivative at the "
            "largest h, in every seed",
            holds=held,
            detail="; ".join(
                f"h = {h:g}: derivative {fmt_spread(spread(errors['derivative'][:, j]), '.2e')}, "
                f"map {fmt_spread(spread(errors['map'][:, j]), '.2e')}"
                for j, h in enumerate(hs)
            ),
        ),
    ]
    figures = {
        "crossover_step": crossover,
        "per_step": {
            f"{h:g}": {
                "derivative_test_mse": spread(errors["derivative"][:, j]),
                "map_test_mse": spread(errors["map"][:, j]),
                "derivative_relative_error": spread(rel["derivative"][:, j]),
                "map_relative_error": spread(rel["map"][:, j]),
            }
            for j, h in enumerate(hs)
        },
        "spacing_error": spacing_err,
    }
    plot = plot_series(
        ctx.plots / "error_vs_step.png",
        hs,
        {"derivative x + hF(x)": errors["derivative"], "map G(x)": errors["map"]},
        xlabel="sampling interval h",
        ylabel="test MSE of x(h)",
        title=f"{cfg.system}, noise {cfg.noise:g}, {len(seeds)} seeds",
        logx=True,
        logy=True,
    )
    report = (
        "## What was measured\n\n"
        f"{cfg.system}, {cfg.num_pairs} training pairs per h, noise {cfg.noise:g}, {len(seeds)} "
        f"seeds, {cfg.steps} Adam steps. Test MSE of the predicted x(h) (and the error relative to "
        "the step's displacement |x(h) - x(0)|):\n\n"
        "| h | derivative MSE | map MSE | derivative rel. | map rel. |\n|---|---|---|---|---|\n"
        + "".join(
            f"| {h:g} | {fmt_spread(spread(errors['derivative'][:, j]), '.2e')} | "
            f"{fmt_spread(spread(errors['map'][:, j]), '.2e')} | "
            f"{fmt_spread(spread(rel['derivative'][:, j]), '.3g')} | "
            f"{fmt_spread(spread(rel['map'][:, j]), '.3g')} |\n"
            for j, h in enumerate(hs)
        )
        + f"\nCrossover (smallest h where the map's mean MSE is lower): {crossover}.\n"
    )
    return Result(checks, figures, report, [plot])
