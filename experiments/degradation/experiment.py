"""The degradation problem: adding plain layers makes training worse, adding residual blocks does not.

Plain stacks (y <- h f_k(y), no skip) and untied Euler ResNets (y <- y + h f_k(y)) over one MLP field
family, at every depth of `depths`, trained by `resode.train.fit` (the `resode run` loop, configs
built from the keys) on `data` over several seeds. Measured: training and test accuracy, and the
gradient-norm ratio between the body's input and output (`resode.train.measure_body`). This is the
depth study's (experiments/depth_comparison) degradation finding as a check over seeds.

Exact: an explicit stack of depth L evaluates its field exactly L times per example (the
diagnostics' count, for both kinds). Empirical (criterion fixed before the run, margin 0.05): the
deepest plain stack trains worse than the shallowest one (mean training accuracy lower by more than
0.05), while the deepest ResNet trains within 0.05 of the shallowest.
"""

import dataclasses

import numpy as np

from resode.config import ConfigError
from resode.data import load
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
from resode.train import Trainer, build_model, fit, measure_body

CLAIM = "Adding plain layers makes training worse; adding residual blocks does not."
SOURCE = "principles.md: the degradation problem; x_L = x_0 + sum F_i(x_i)"
KEY_FIGURE = "plain_train_accuracy"
MARGIN = 0.05
KINDS = ("plain", "residual")


@dataclasses.dataclass
class Config:
    depths: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    data: str = "digits"
    seed: int = 0
    num_seeds: int = 3
    width: int = 64
    steps: int = 500
    lr: float = 3e-3


QUICK = {"depths": [1, 6], "num_seeds": 2, "width": 16, "steps": 40}


def validate(cfg: Config) -> None:
    if len(cfg.depths) < 2 or any(d < 1 for d in cfg.depths):
        raise ConfigError(f"depths: must list at least two positive depths, got {cfg.depths}.")
    if cfg.data not in ("digits", "mnist1d"):
        raise ConfigError(f"data: {cfg.data!r} is not allowed; choose one of: digits, mnist1d.")
    for key in ("num_seeds", "width", "steps"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}: must be >= 1, got {getattr(cfg, key)}.")


def run(cfg: Config, ctx) -> Result:
    depths = sorted(int(d) for d in cfg.depths)
    seeds = seed_list(cfg.seed, cfg.num_seeds)
    data = load(cfg.data)
    shape = (len(seeds), len(depths))
    train_acc = {k: np.full(shape, np.nan) for k in KINDS}
    test_acc = {k: np.full(shape, np.nan) for k in KINDS}
    flow = {k: np.full(shape, np.nan) for k in KINDS}
    nfe = {k: np.full(shape, np.nan) for k in KINDS}
    n_probe = min(256, data.x_test.shape[0])
    for j, depth in enumerate(depths):
        for kind in KINDS:
            trainer = None
            for i, s in enumerate(seeds):
                c = fit_config(
                    cfg.steps,
                    cfg.lr,
                    f"seed={s}",
                    f"data.name={cfg.data}",
                    f"model.width={cfg.width}",
                    f"model.body.kind={kind}",
                    f"model.body.num_steps={depth}",
                    "train.steps_per_call=50",
                )
                if trainer is None:  # one per depth and kind: its compiled calls serve every seed
                    trainer = Trainer(c, data)
                model = build_model(c, data)  # this seed's initialisation
                result = fit(c, data, model=model, trainer=trainer, evaluate_train=True)
                ev = result.evaluation
                train_acc[kind][i, j] = ev["train_accuracy"]
                test_acc[kind][i, j] = ev["test_accuracy"]
                nfe[kind][i, j] = ev["test_num_fevals"]
                measured = measure_body(
                    result.model, data.x_test[:n_probe], data.y_test[:n_probe], classification=True
                )
                flow[kind][i, j] = measured["grad_flow"]
            ctx.say(
                f"  depth {depth:3d} {kind:8s}: train acc "
                f"{fmt_spread(spread(train_acc[kind][:, j]))}, test "
                f"{fmt_spread(spread(test_acc[kind][:, j]))}"
            )
    nfe_err = max(
        float(np.max(np.abs(nfe[k][:, j] - d))) for k in KINDS for j, d in enumerate(depths)
    )
    plain_drop = train_acc["plain"][:, 0].mean() - train_acc["plain"][:, -1].mean()
    res_drop = train_acc["residual"][:, 0].mean() - train_acc["residual"][:, -1].mean()
    checks = [
        exact_check(
            "forward_evaluations",
            "an explicit stack of depth L evaluates its field L times per example (largest "
            "|NFE - L| over kinds, depths and seeds)",
            measured=nfe_err,
            expected=0.0,
            tolerance=0.0,
        ),
        empirical_check(
            "plain_degrades",
            f"the plain stack of depth {depths[-1]} trains worse than depth {depths[0]}: mean "
            f"training accuracy lower by more than {MARGIN}",
            measured=float(plain_drop),
            expected=f"> {MARGIN}",
            tolerance=MARGIN,
            holds=plain_drop > MARGIN,
            detail=f"training accuracy depth {depths[0]}: "
            f"{fmt_spread(spread(train_acc['plain'][:, 0]))}, depth {depths[-1]}: "
            f"{fmt_spread(spread(train_acc['plain'][:, -1]))}",
        ),
        empirical_check(
            "residual_does_not_degrade",
            f"the ResNet of depth {depths[-1]} trains within {MARGIN} of depth {depths[0]}",
            measured=float(res_drop),
            expected=f"<= {MARGIN}",
            tolerance=MARGIN,
            holds=res_drop <= MARGIN,
            detail=f"training accuracy depth {depths[0]}: "
            f"{fmt_spread(spread(train_acc['residual'][:, 0]))}, depth {depths[-1]}: "
            f"{fmt_spread(spread(train_acc['residual'][:, -1]))}",
        ),
    ]
    per_depth = []
    for j, d in enumerate(depths):
        row = {"depth": d}
        for k in KINDS:
            row[f"{k}_train_accuracy"] = spread(train_acc[k][:, j])
            row[f"{k}_test_accuracy"] = spread(test_acc[k][:, j])
            row[f"{k}_grad_ratio"] = spread(flow[k][:, j])
        per_depth.append(row)
    figures = {
        "depths": depths,
        "plain_train_accuracy": [float(v) for v in train_acc["plain"].mean(0)],
        "residual_train_accuracy": [float(v) for v in train_acc["residual"].mean(0)],
        "plain_test_accuracy": [float(v) for v in test_acc["plain"].mean(0)],
        "residual_test_accuracy": [float(v) for v in test_acc["residual"].mean(0)],
        "plain_grad_ratio": [float(v) for v in np.median(flow["plain"], 0)],
        "residual_grad_ratio": [float(v) for v in np.median(flow["residual"], 0)],
        "per_depth": per_depth,
        "seeds": seeds,
    }
    plots = [
        plot_series(
            ctx.plots / "accuracy_vs_depth.png",
            depths,
            {
                "plain (train)": train_acc["plain"],
                "residual (train)": train_acc["residual"],
                "plain (test)": test_acc["plain"],
                "residual (test)": test_acc["residual"],
            },
            xlabel="depth (blocks)",
            ylabel="accuracy",
            logx=True,
            title=f"{cfg.data}, width {cfg.width}, {cfg.steps} steps, {len(seeds)} seeds",
        ),
        plot_series(
            ctx.plots / "grad_ratio_vs_depth.png",
            depths,
            {"plain": np.maximum(flow["plain"], 1e-30), "residual": flow["residual"]},
            xlabel="depth (blocks)",
            ylabel="||dL/dy_0|| / ||dL/dy_L||",
            logx=True,
            logy=True,
            title="gradient-norm ratio, body input / output",
        ),
    ]
    rows = [
        "| depth | plain train | plain test | plain grad ratio | ResNet train | ResNet test | "
        "ResNet grad ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for j, d in enumerate(depths):
        rows.append(
            f"| {d} | {fmt_spread(spread(train_acc['plain'][:, j]))} | "
            f"{fmt_spread(spread(test_acc['plain'][:, j]))} | {np.median(flow['plain'][:, j]):.3g} | "
            f"{fmt_spread(spread(train_acc['residual'][:, j]))} | "
            f"{fmt_spread(spread(test_acc['residual'][:, j]))} | "
            f"{np.median(flow['residual'][:, j]):.3g} |"
        )
    report = (
        "## What was measured\n\n"
        f"{cfg.data}, MLP fields of width {cfg.width} (h = 1/depth), {cfg.steps} Adam steps at lr "
        f"{cfg.lr} with cosine decay, seeds {seeds}. Accuracies as mean ± std over seeds; gradient "
        f"ratio as the median over seeds of each run's median over {n_probe} test examples.\n\n"
        + "\n".join(rows)
        + "\n"
    )
    return Result(checks, figures, report, plots)
