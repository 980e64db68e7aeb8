"""Monotone equilibrium layers: a fixed point that exists for every input, and splittings that
find it.

Winston & Kolter (NeurIPS 2020, "Monotone operator equilibrium networks") parameterise
z = relu(W z + U x + b) with W = (1 - m) I - A^T A + B - B^T, so that sym(I - W) >= m I for any
A and B. Exact (float64, the run's own m): the smallest eigenvalue of sym(I - W) is at least m
for random A, B of several scales (dense and circular-convolution parameterisations); the
Peaceman--Rachford iteration's linear part has contraction factor
||(I - a M)(I + a M)^{-1}||_2 < 1 (M = I - W) for every step a tried, and the iteration converges
for each; forward--backward converges for every step below 2m / ||I - W||^2 (measured also
above that bound, where the theorem promises nothing). Empirical (over seeds): a monotone DEQ
trained on digits and MNIST-1D has no solver failure (every forward solve meets its tolerance
within the iteration budget), where an unconstrained DEQ (Anderson, same budget and tolerance)
sometimes fails; test accuracy of both.
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import resode
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
    "A monotone DEQ's equilibrium exists for any weights (sym(I - W) >= m I); Peaceman-Rachford "
    "converges for every step, forward-backward below 2m/||I - W||^2; it trains with no solver "
    "failure where an unconstrained DEQ's solver sometimes fails."
)
SOURCE = "Winston & Kolter, NeurIPS 2020, 'Monotone operator equilibrium networks'"
KEY_FIGURE = "min_eig_margin"

SCALES = (0.1, 1.0, 10.0)  # multipliers of the random A, B (cycled over draws)
FB_FRACTIONS = (0.5, 0.9)  # forward-backward steps tried as fractions of its bound


@dataclasses.dataclass
class Config:
    monotonicity: float = 0.1  # the margin m, in (0, 1]
    alphas: list = dataclasses.field(default_factory=lambda: [0.01, 0.1, 0.5, 1.0, 2.0, 10.0])
    seed: int = 0
    num_draws: int = 24  # random (A, B) draws for the margin check
    dim: int = 32  # state size of the random problems
    num_problems: int = 3  # random inputs b solved at every step size
    max_iterations: int = 50000  # splitting iterations allowed in the exact checks
    solve_tol: float = 1e-9  # relative residual of the exact checks' solves (float64)
    datasets: list = dataclasses.field(default_factory=lambda: ["digits", "mnist1d"])
    num_seeds: int = 3
    width: int = 64
    steps: int = 600
    lr: float = 3e-3
    budget: int = 100  # max_steps of both models' forward solves during training
    tol: float = 1e-4  # their relative tolerance


QUICK = {
    "alphas": [0.5, 4.0],
    "num_draws": 3,
    "dim": 8,
    "num_problems": 2,
    "max_iterations": 5000,
    "datasets": ["digits"],
    "num_seeds": 1,
    "width": 16,
    "steps": 20,
    "budget": 30,
}


def validate(cfg: Config) -> None:
    if not 0.0 < cfg.monotonicity <= 1.0:
        raise ConfigError(f"monotonicity: must be in (0, 1], got {cfg.monotonicity}.")
    if not isinstance(cfg.alphas, list) or not cfg.alphas:
        raise ConfigError(f"alphas: must be a non-empty list of steps, got {cfg.alphas!r}.")
    if any(not float(a) > 0 for a in cfg.alphas):
        raise ConfigError(f"alphas: every step must be > 0, got {cfg.alphas!r}.")
    if not isinstance(cfg.datasets, list) or not cfg.datasets:
        raise ConfigError(f"datasets: must be a non-empty list, got {cfg.datasets!r}.")
    for name in cfg.datasets:
        if name not in ("digits", "mnist1d"):
            raise ConfigError(f"datasets: {name!r} is not allowed; choose digits or mnist1d.")
    for key in ("num_draws", "dim", "num_problems", "max_iterations", "num_seeds", "width"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}: must be >= 1, got {getattr(cfg, key)}.")
    for key in ("steps", "budget"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}: must be >= 1, got {getattr(cfg, key)}.")
    if not 0 < cfg.solve_tol < 1 or not 0 < cfg.tol < 1:
        raise ConfigError(f"solve_tol and tol: must be in (0, 1), got {cfg.solve_tol}, {cfg.tol}.")


def _with(op, a, b):
    return eqx.tree_at(lambda o: (o.a, o.b), op, (a, b))


def _draw(kind, i, cfg):
    """Random operator number `i` of a kind, at scale SCALES[i % 3] (float64)."""
    key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), i)
    m = cfg.monotonicity
    if kind == "dense":
        op = resode.DenseMonotone(cfg.dim, monotonicity=m, key=key, dtype=jnp.float64)
    elif kind == "conv1d":
        op = resode.ConvMonotone(
            4, (max(3, cfg.dim // 4),), monotonicity=m, key=key, dtype=jnp.float64
        )
    else:
        side = max(3, int(round((cfg.dim / 2) ** 0.5)))
        op = resode.ConvMonotone(2, (side, side), monotonicity=m, key=key, dtype=jnp.float64)
    scale = SCALES[i % len(SCALES)]
    return _with(op, scale * op.a, scale * op.b)


_matrix = eqx.filter_jit(lambda op: op.matrix())  # one compilation per parameterisation


def _margins(cfg):
    """lambda_min(sym(I - W)) - m for every draw, computed from the dense matrix (independent of
    the operators' own per-frequency diagnostics), and the largest ||I - W||."""
    margins, lips = {}, []
    for kind in ("dense", "conv1d", "conv2d"):
        out = []
        for i in range(cfg.num_draws):
            w = np.asarray(_matrix(_draw(kind, i, cfg)))
            i_w = np.eye(w.shape[0]) - w
            out.append(float(np.linalg.eigvalsh((i_w + i_w.T) / 2)[0]) - cfg.monotonicity)
            lips.append(float(np.linalg.norm(i_w, 2)))
        margins[kind] = out
    return margins, max(lips)


@eqx.filter_jit
def _solve_batch(op, bs, solver, tol, max_steps):
    # The splitting's alpha is a traced leaf: one compilation serves every step size.
    return jax.vmap(
        lambda b: resode.monotone_fixed_point(op, b, solver=solver, tol=tol, max_steps=max_steps)
    )(bs)


def _solve_all(op, bs, splitting, alpha, cfg):
    solver = splitting(alpha=jnp.asarray(alpha, jnp.float64))
    sols = _solve_batch(op, bs, solver, cfg.solve_tol, cfg.max_iterations)
    conv = bool(jnp.all(sols.converged))
    return conv, float(jnp.mean(sols.num_steps)), float(jnp.max(sols.residual))


def _cayley(op, alpha):
    """||(I - a M)(I + a M)^{-1}||_2 with M = I - W: the contraction factor of the reflected
    resolvent, below 1 for every a > 0 when sym(M) > 0."""
    w = np.asarray(_matrix(op))
    mm = np.eye(w.shape[0]) - w
    n = mm.shape[0]
    return float(
        np.linalg.norm((np.eye(n) - alpha * mm) @ np.linalg.inv(np.eye(n) + alpha * mm), 2)
    )


def _train(cfg, data, kind, seeds):
    body = (
        ["model.body.kind=monotone_deq", f"model.body.monotonicity={cfg.monotonicity}"]
        if kind == "monotone"
        else ["model.body.kind=deq", "model.body.solver=anderson"]
    )
    rows = []
    for result in fit_seeds(
        data,
        seeds,
        cfg.steps,
        cfg.lr,
        f"data.name={data.name}",
        f"model.width={cfg.width}",
        f"model.body.tol={cfg.tol}",
        f"model.body.max_steps={cfg.budget}",
        "train.steps_per_call=50",
        *body,
    ):
        hist = result.history
        rows.append(
            {
                "test_accuracy": float(result.evaluation["test_accuracy"]),
                "train_failure": 1.0 - float(np.mean(hist["fraction_converged"])),
                "test_failure": 1.0 - float(result.evaluation["test_fraction_converged"]),
                "mean_iterations": float(np.mean(hist["solver_steps"])),
                "diverged": bool(result.diverged),
            }
        )
    return rows


def run(cfg: Config, ctx) -> Result:
    m = cfg.monotonicity
    eps = float(np.finfo(np.float64).eps)
    alphas = sorted(float(a) for a in cfg.alphas)
    with jax.enable_x64(True):
        margins, lip_max = _margins(cfg)
        min_margin = min(min(v) for v in margins.values())
        margin_tol = 100 * eps * lip_max
        ctx.say(
            "  lambda_min(sym(I - W)) - m over draws: "
            + ", ".join(f"{k} min {min(v):.2e}" for k, v in margins.items())
        )

        # The splittings on one random dense problem, several inputs.
        op = _draw("dense", 1, cfg)  # scale 1 (SCALES[1])
        bs = jax.random.normal(
            jax.random.PRNGKey(cfg.seed + 1), (cfg.num_problems, cfg.dim), jnp.float64
        )
        lip = float(op.lipschitz())
        fb_bound = 2 * m / lip**2
        pr = {}
        for a in alphas:
            conv, its, res = _solve_all(op, bs, resode.PeacemanRachford, a, cfg)
            pr[a] = {"converged": conv, "iterations": its, "residual": res, "rho": _cayley(op, a)}
            ctx.say(f"  PR  alpha {a:g}: converged {conv}, {its:.0f} its, rho {pr[a]['rho']:.4f}")
        fb_alphas = sorted(set(alphas) | {f * fb_bound for f in FB_FRACTIONS})
        fb = {}
        for a in fb_alphas:
            conv, its, res = _solve_all(op, bs, resode.ForwardBackward, a, cfg)
            fb[a] = {
                "converged": conv,
                "iterations": its,
                "residual": res,
                "below_bound": a < fb_bound,
            }
            ctx.say(
                f"  FB  alpha {a:.4g} ({a / fb_bound:.2f} x bound): converged {conv}, {its:.0f} its"
            )
    below = [a for a in fb_alphas if a < fb_bound]
    above = [a for a in fb_alphas if a >= fb_bound]

    # Empirical: training, over seeds and datasets.
    seeds = seed_list(cfg.seed, cfg.num_seeds)
    runs = {}
    for name in cfg.datasets:
        data = load(name)
        for kind in ("monotone", "deq"):
            rows = _train(cfg, data, kind, seeds)
            runs[(name, kind)] = rows
            ctx.say(
                f"  {name} {kind}: accuracy "
                f"{fmt_spread(spread([r['test_accuracy'] for r in rows]))}, train failures "
                + ", ".join(f"{r['train_failure']:.3f}" for r in rows)
                + ", test failures "
                + ", ".join(f"{r['test_failure']:.3f}" for r in rows)
            )
    mono_fail = max(
        max(r["train_failure"], r["test_failure"])
        for (n, k), rows in runs.items()
        if k == "monotone"
        for r in rows
    )
    deq_fail = max(
        max(r["train_failure"], r["test_failure"])
        for (n, k), rows in runs.items()
        if k == "deq"
        for r in rows
    )

    checks = [
        exact_check(
            "min_eig_margin",
            f"lambda_min(sym(I - W)) >= m = {m:g} for {cfg.num_draws} random (A, B) per "
            f"parameterisation (dense, 1-D and 2-D circular convolutions; scales {SCALES}); "
            "measured: the smallest lambda_min - m",
            measured=min_margin,
            expected=0.0,
            tolerance=margin_tol,
            compare="ge",
        ),
        exact_check(
            "pr_contraction",
            "Peaceman-Rachford: the reflected resolvent's factor ||(I - aM)(I + aM)^-1|| is < 1 for "
            "every step a tried (largest factor)",
            measured=max(v["rho"] for v in pr.values()),
            expected=1.0,
            tolerance=0.0,
            compare="le",
            detail=", ".join(f"a={a:g}: {v['rho']:.4f}" for a, v in pr.items()),
        ),
        exact_check(
            "pr_converges_every_alpha",
            f"Peaceman-Rachford reaches relative residual {cfg.solve_tol:g} within "
            f"{cfg.max_iterations} iterations for every step tried, on {cfg.num_problems} inputs "
            "(fraction of steps that converged)",
            measured=float(np.mean([v["converged"] for v in pr.values()])),
            expected=1.0,
            tolerance=0.0,
        ),
        exact_check(
            "fb_converges_below_bound",
            f"forward-backward converges for every step below 2m/||I - W||^2 = {fb_bound:.4g} "
            f"(steps {', '.join(f'{a:.3g}' for a in below)}; fraction that converged)",
            measured=float(np.mean([fb[a]["converged"] for a in below])),
            expected=1.0,
            tolerance=0.0,
        ),
        empirical_check(
            "no_solver_failure",
            f"trained with forward solves of at most {cfg.budget} iterations at tolerance "
            f"{cfg.tol:g}, the monotone DEQ never fails to converge (training or test), while the "
            "unconstrained DEQ (Anderson) fails on some solves",
            measured={"monotone": mono_fail, "deq": deq_fail},
            expected="monotone 0, deq > 0 (largest failed fraction over runs)",
            holds=mono_fail == 0.0 and deq_fail > 0.0,
            detail=f"datasets {cfg.datasets}, seeds {seeds}",
        ),
    ]
    figures = {
        "min_eig_margin": min_margin,
        "min_eig_margin_by_kind": {k: min(v) for k, v in margins.items()},
        "lipschitz": lip,
        "fb_bound": fb_bound,
        "peaceman_rachford": {f"{a:g}": v for a, v in pr.items()},
        "forward_backward": {f"{a:.6g}": v for a, v in fb.items()},
        "forward_backward_above_bound_converged": {f"{a:.6g}": fb[a]["converged"] for a in above},
        "training": {
            f"{n}/{k}": {
                "test_accuracy": spread([r["test_accuracy"] for r in rows]),
                "train_failure": [r["train_failure"] for r in rows],
                "test_failure": [r["test_failure"] for r in rows],
                "mean_iterations": [r["mean_iterations"] for r in rows],
                "diverged": [r["diverged"] for r in rows],
            }
            for (n, k), rows in runs.items()
        },
    }
    plots = [
        plot_series(
            ctx.plots / "iterations_vs_alpha.png",
            alphas,
            {
                "Peaceman-Rachford": np.array([pr[a]["iterations"] for a in alphas]),
                # A step that did not converge is drawn at the iteration cap.
                "forward-backward": np.array([fb[a]["iterations"] for a in alphas]),
            },
            xlabel="step alpha",
            ylabel=f"iterations to residual {cfg.solve_tol:g}",
            title=f"dense n = {cfg.dim}, m = {m:g}; FB bound {fb_bound:.3g} (cap: not converged)",
            logx=True,
            logy=True,
        )
    ]
    pr_rows = "\n".join(
        f"| {a:g} | {v['rho']:.4f} | {v['converged']} | {v['iterations']:.0f} |"
        for a, v in pr.items()
    )
    fb_rows = "\n".join(
        f"| {a:.4g} | {a / fb_bound:.2f} | {v['converged']} | {v['iterations']:.0f} |"
        for a, v in fb.items()
    )
    train_rows = "\n".join(
        f"| {n} | {k} | {fmt_spread(spread([r['test_accuracy'] for r in rows]))} | "
        + ", ".join(f"{r['train_failure']:.3f}" for r in rows)
        + " | "
        + ", ".join(f"{r['test_failure']:.3f}" for r in rows)
        + " | "
        + ", ".join(f"{r['mean_iterations']:.1f}" for r in rows)
        + " |"
        for (n, k), rows in runs.items()
    )
    report = (
        "## What was measured\n\n"
        f"Margin m = {m:g}. Smallest lambda_min(sym(I - W)) - m over {cfg.num_draws} random draws "
        f"per parameterisation (float64, dense matrices): "
        + ", ".join(f"{k} {min(v):.3e}" for k, v in margins.items())
        + f" (tolerance {margin_tol:.1e}).\n\n"
        f"Splittings on one random dense problem (n = {cfg.dim}, ||I - W|| = {lip:.4g}, "
        f"{cfg.num_problems} random inputs, float64, residual {cfg.solve_tol:g}, at most "
        f"{cfg.max_iterations} iterations):\n\n"
        "| alpha | PR factor rho | PR converged | PR iterations (mean) |\n|---|---|---|---|\n"
        + pr_rows
        + f"\n\nForward-backward (bound 2m/||I - W||^2 = {fb_bound:.4g}):\n\n"
        "| alpha | alpha / bound | converged | iterations (mean) |\n|---|---|---|---|\n"
        + fb_rows
        + f"\n\nTraining ({cfg.steps} steps, width {cfg.width}, mlp stem, forward solves at most "
        f"{cfg.budget} iterations at tolerance {cfg.tol:g}; monotone: Peaceman-Rachford, "
        "alpha 1; DEQ: Anderson, implicit adjoint). Failures: fraction of solves that missed the "
        "tolerance, per seed.\n\n"
        "| dataset | model | test accuracy | train failures | test failures | mean iterations "
        "|\n|---|---|---|---|---|---|\n" + train_rows + "\n"
    )
    return Result(checks, figures, report, plots)
