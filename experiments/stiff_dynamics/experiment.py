"""Learning a stiff system from coarsely sampled trajectories: explicit against implicit steps.

Data: `resode.data.stiff_linear` (y' = A y, eigenvalues -1 and -`stiffness`), observed every
`step_size` over t in [0, 1]. A learned field (an `MLPField`) is rolled out from y(0) with each
scheme of `schemes` (an entry "name@k" takes k substeps per observation interval; plain "name" one)
through `resode.integrate`, and trained on the whole observed trajectory (`resode.train.fit`,
Adam). Stability theory predicts which schemes can even represent the data's decay: one step of
size h multiplies the stiff mode by R(h lambda), R the scheme's stability function; explicit
single steps at h * stiffness beyond their stability interval are unstable on the true field.

Exact: for every scheme, one step of its (sub)step size on the true field multiplies the stiff
eigenvector by R(h lambda) (`resode.stability_function`), measured by `resode.step` in float64.
Empirical, a criterion fixed before the run: at the coarse step, every single-step explicit
scheme diverges or ends with a test error at least 10x the best implicit scheme's, in every seed,
while no implicit scheme diverges. Also measured, per scheme: training time (compilation
included), function evaluations per rollout, and whether the learned field is the physics: its
rollout with a fine reference solver (RK4, h * stiffness = 0.2) against the truth.
"""

import dataclasses

import equinox as eqx
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
from resode.nn import Diagnostics, MLPField
from resode.train import Trainer, fit

CLAIM = (
    "Learning a stiff system from trajectories with a coarse step: explicit schemes blow up or "
    "need many steps, implicit ones (backward Euler, trapezoid, SDIRK) train at the coarse step."
)
SOURCE = "applications.md: implicit ResNets, backward Euler, A-stability, stiff systems"
KEY_FIGURE = "per_scheme"
T1 = 1.0


@dataclasses.dataclass
class Config:
    step_size: float = 0.05  # observation interval (and the step of single-step schemes)
    schemes: list[str] = dataclasses.field(
        default_factory=lambda: [
            "euler",
            "rk4",
            "euler@25",
            "backward_euler",
            "trapezoid",
            "sdirk2",
        ]  # fmt: skip
    )
    seed: int = 0
    num_seeds: int = 3
    stiffness: float = 200.0
    hidden: int = 32
    field_scale: float = 1.0  # the MLP's output times this (stiffness: rates up to ~stiffness)
    steps: int = 600
    lr: float = 3e-3
    num_samples: int = 256


QUICK = {"schemes": ["euler", "backward_euler"], "num_seeds": 1, "steps": 20, "num_samples": 64}


def parse_scheme(entry: str) -> tuple[str, int]:
    name, _, k = entry.partition("@")
    return name, int(k) if k else 1


def validate(cfg: Config) -> None:
    if not cfg.step_size > 0 or cfg.step_size > T1 / 2:
        raise ConfigError(f"step_size: must be in (0, {T1 / 2}], got {cfg.step_size}.")
    if not cfg.schemes:
        raise ConfigError("schemes: must list at least one scheme.")
    for entry in cfg.schemes:
        name, _, k = entry.partition("@")
        if name not in resode.list_schemes():
            raise ConfigError(f"schemes: {name!r} is not one of resode.list_schemes().")
        if k and (not k.isdigit() or int(k) < 1):
            raise ConfigError(f"schemes: {entry!r}: substeps after '@' must be a positive int.")
    if not cfg.field_scale > 0:
        raise ConfigError(f"field_scale: must be > 0, got {cfg.field_scale}.")
    if not cfg.stiffness > 1:
        raise ConfigError(f"stiffness: must be > 1, got {cfg.stiffness}.")
    for key in ("num_seeds", "hidden", "steps", "num_samples"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}: must be >= 1, got {getattr(cfg, key)}.")


class ScaledField(eqx.Module):
    """``scale * mlp(t, y)``: an MLP whose outputs are in units of the fastest rate."""

    mlp: MLPField
    scale: float = eqx.field(static=True)

    def __call__(self, t, y, args=None):
        return self.scale * self.mlp(t, y, args)


class Rollout(eqx.Module):
    """y(0) -> the states at the observation times after y(0), by `scheme` with `substeps` steps
    per observation interval."""

    field: ScaledField
    scheme: str = eqx.field(static=True)
    substeps: int = eqx.field(static=True)
    num_obs: int = eqx.field(static=True)

    def __call__(self, y0, *, key=None, inference=False):
        n = (self.num_obs - 1) * self.substeps
        root = resode.Newton(tol=1e-6, max_steps=20, line_search=True)
        _, ys, st = resode.integrate(
            self.field, y0, 0.0, T1, n, scheme=self.scheme, root=root, save_trajectory=True,
            return_stats=True,
        )  # fmt: skip
        diag = Diagnostics(st.num_fevals, st.num_jvps, st.root_steps, st.root_residual,
                           st.root_converged)  # fmt: skip
        return ys[:: self.substeps], diag


def run(cfg: Config, ctx) -> Result:
    seeds = seed_list(cfg.seed, cfg.num_seeds)
    num_obs = int(round(T1 / cfg.step_size)) + 1
    h = T1 / (num_obs - 1)
    traj = load("stiff_linear", num_samples=cfg.num_samples, num_times=num_obs, t1=T1,
                stiffness=cfg.stiffness, seed=cfg.seed)  # fmt: skip
    # The trajectory set as a regression y(0) -> trajectory, which `fit` trains.
    data = Dataset("stiff_trajectories", "regression", 0, traj.x_train, traj.y_train,
                   traj.x_test, traj.y_test, traj.description)  # fmt: skip
    # The true field, for the stability check and the physics check.
    theta = np.pi / 6
    q = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    a_true = q @ np.diag([-1.0, -cfg.stiffness]) @ q.T
    stiff_vec = q[:, 1]
    entries = [parse_scheme(e) for e in cfg.schemes]
    amp_err, predicted = 0.0, {}
    with jax.enable_x64(True):
        A = jnp.asarray(a_true)
        for name, k in entries:
            hs = h / k
            y1 = resode.step(lambda t, y, a: A @ y, 0.0, jnp.asarray(stiff_vec), hs, scheme=name,
                             root=resode.Newton(tol=1e-14))  # fmt: skip
            r = complex(resode.stability_function(name, np.array(-cfg.stiffness * hs)))
            amp_err = max(amp_err, float(np.max(np.abs(np.asarray(y1) - r.real * stiff_vec))))
            predicted[f"{name}@{k}"] = r.real
    # Fine reference rollouts of a learned field (is it the physics?).
    fine_steps = int(np.ceil(T1 * cfg.stiffness / 0.2))

    @eqx.filter_jit
    def fine_error(field, x, y):
        ys = jax.vmap(
            lambda y0: resode.integrate(
                field, y0, 0.0, T1, fine_steps, scheme="rk4", save_trajectory=True
            )[1]  # fmt: skip
        )(x)
        idx = np.arange(num_obs) * fine_steps // (num_obs - 1)
        return jnp.mean((ys[:, idx] - y) ** 2)

    rows = {}
    for entry, (name, k) in zip(cfg.schemes, entries, strict=True):
        ctx.say(f"{entry}")
        trainer, res = None, []
        for seed in seeds:
            batch = min(64, len(data.x_train))
            c = fit_config(cfg.steps, cfg.lr, f"seed={seed}", f"data.batch_size={batch}",
                           f"train.steps_per_call={cfg.steps}")  # fmt: skip
            mlp = MLPField(2, cfg.hidden, key=jax.random.key(seed))
            model = Rollout(ScaledField(mlp, cfg.field_scale), name, k, num_obs)
            trainer = trainer or Trainer(c, data, model=model)
            r = fit(c, data, model=model, trainer=trainer)
            test = r.evaluation["test_loss"]
            diverged = bool(r.diverged or not np.isfinite(test))
            fine = float(
                fine_error(r.model.field, jnp.asarray(data.x_test), jnp.asarray(data.y_test))
            )
            res.append({
                "test_mse": test if np.isfinite(test) else float("inf"),
                "diverged": diverged,
                "train_time_s": r.train_time_s,
                "nfe_per_rollout": r.evaluation["test_num_fevals"],
                "fine_solver_mse": fine if np.isfinite(fine) else float("inf"),
            })  # fmt: skip
        rows[entry] = res
    implicit = [
        e for e, (n, _) in zip(cfg.schemes, entries, strict=True) if resode.get_scheme(n).implicit
    ]
    coarse_explicit = [
        e for e, (n, k) in zip(cfg.schemes, entries, strict=True)
        if not resode.get_scheme(n).implicit and k == 1
    ]  # fmt: skip
    held = None
    if implicit and coarse_explicit:
        best = [min(rows[e][i]["test_mse"] for e in implicit) for i in range(len(seeds))]
        held = all(not rows[e][i]["diverged"] for e in implicit for i in range(len(seeds))) and all(
            rows[e][i]["diverged"] or rows[e][i]["test_mse"] >= 10 * best[i]
            for e in coarse_explicit
            for i in range(len(seeds))
        )
    col = lambda e, key: spread(r[key] for r in rows[e])
    checks = [
        exact_check(
            "stiff_mode_amplification",
            f"one step of each scheme on the true field multiplies the stiff eigenvector "
            f"(lambda = {-cfg.stiffness:g}) by R(h lambda) (largest difference, float64)",
            measured=amp_err,
            expected=0.0,
            tolerance=1e-10,
        )
    ]
    if held is not None:
        checks.append(
            empirical_check(
                "implicit_trains_explicit_fails",
                f"at the coarse step h = {h:g} (h * stiffness = {h * cfg.stiffness:g}) explicit "
                "single-step schemes blow up or fit badly; implicit ones train",
                measured={e: col(e, "test_mse")["mean"] for e in cfg.schemes},
                expected="every explicit single-step scheme diverges or has test MSE >= 10x the "
                "best implicit scheme's, in every seed; no implicit scheme diverges",
                holds=held,
                detail="; ".join(
                    f"{e}: {fmt_spread(col(e, 'test_mse'), '.2e')}" for e in cfg.schemes
                ),
            )
        )
    figures = {
        "coarse_step": h,
        "per_scheme": {
            e: {
                "test_error": col(e, "test_mse"),
                "training_time_s": col(e, "train_time_s"),
                "diverged": [r["diverged"] for r in rows[e]],
                "nfe_per_rollout": col(e, "nfe_per_rollout"),
                "fine_solver_error": col(e, "fine_solver_mse"),
                "stiff_mode_factor": predicted[f"{parse_scheme(e)[0]}@{parse_scheme(e)[1]}"],
            }
            for e in cfg.schemes
        },
    }
    x = np.arange(len(cfg.schemes))
    plot = plot_series(
        ctx.plots / "test_error_by_scheme.png",
        x,
        {
            "test MSE (training scheme)": np.array(
                [[r["test_mse"] for r in rows[e]] for e in cfg.schemes]
            ).T,
            "MSE with a fine RK4 solve": np.array(
                [[r["fine_solver_mse"] for r in rows[e]] for e in cfg.schemes]
            ).T,
        },
        xlabel="scheme: " + ", ".join(f"{i} {e}" for i, e in enumerate(cfg.schemes)),
        ylabel="MSE on test trajectories",
        title=f"stiff_linear (stiffness {cfg.stiffness:g}), h = {h:g}, {len(seeds)} seeds",
        logy=True,
    )
    table = "| scheme | R(h lambda) stiff mode | test MSE | fine-solver MSE | NFE / rollout | train time (s) | diverged |\n"
    table += "|---|---|---|---|---|---|---|\n"
    for e in cfg.schemes:
        ps = figures["per_scheme"][e]
        table += (
            f"| {e} | {ps['stiff_mode_factor']:.3g} | {fmt_spread(ps['test_error'], '.2e')} | "
            f"{fmt_spread(ps['fine_solver_error'], '.2e')} | {ps['nfe_per_rollout']['mean']:.0f} | "
            f"{fmt_spread(ps['training_time_s'], '.1f')} | {sum(ps['diverged'])}/{len(seeds)} |\n"
        )
    report = (
        "## What was measured\n\n"
        f"stiff_linear, eigenvalues -1 and {-cfg.stiffness:g}, observed every h = {h:g} over "
        f"[0, {T1:g}] ({num_obs} observations), {cfg.num_samples} trajectories, {len(seeds)} "
        f"seeds, {cfg.steps} Adam steps, MLP field with {cfg.hidden} hidden units. "
        "'fine-solver MSE' rolls the learned field out with RK4 at h * stiffness = 0.2: small "
        "only if the learned field is the true dynamics.\n\n" + table
    )
    return Result(checks, figures, report, [plot])
