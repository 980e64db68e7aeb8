"""Which kind of depth resists adversarial perturbations: explicit, tied, implicit or equilibrium?

The seed chapter (applications.md) claims that implicit (backward-Euler) blocks, being
non-expansive, are more robust than explicit ones. Four classifiers over the same MLP field family
and the same digits data, with their parameter counts matched (untied stacks get a hidden width H,
tied ones the width that gives the same count): an explicit ResNet (untied Euler), a tied ODE-net
(one field, fixed-step RK4), an implicit stack (untied backward Euler, Newton stages) and a DEQ
(Anderson, implicit adjoint). Each is attacked by white-box L-inf PGD, which differentiates
through the model's own solvers and adjoints, and by the ResNet's adversarial examples
(a transfer attack, which needs no gradient of the attacked model and so exposes robustness that
only comes from gradients that are hard to follow).

Exact: every adversarial input lies in the L-inf ball of radius `radius` around its clean input
and in the data's box [0, 1]; the parameter counts differ by at most the rounding of the tied
width. Empirical (over seeds): an implicit model (implicit stack or DEQ) has the highest mean PGD
accuracy.
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
    fit_config,
    fit_seeds,
    fmt_spread,
    plot_series,
    require_at_least_one,
    require_subset,
    seed_list,
    spread,
)
from resode.robust import classifier_loss, pgd
from resode.train import build_model

CLAIM = (
    "At matched parameters, implicit depth (backward-Euler stacks, DEQs) resists PGD better than "
    "explicit ResNets and tied ODE-nets."
)
SOURCE = (
    "applications.md: implicit (backward-Euler) blocks are non-expansive and claimed more robust; "
    "Madry et al., ICLR 2018 (PGD); Yang, Pang & Liu, NeurIPS 2022, 'A closer look at the "
    "adversarial robustness of deep equilibrium models' (gradient obfuscation in DEQ attacks)"
)
KEY_FIGURE = "per_model"
MODELS = ("resnet", "ode_net", "implicit", "deq")
IMPLICIT = ("implicit", "deq")
ROUNDING = 1e-6  # float32 slack on the radius and the box


@dataclasses.dataclass
class Config:
    radius: float = 0.1  # L-infinity radius on inputs in [0, 1]
    pgd_steps: int = 10
    seed: int = 0
    num_seeds: int = 3
    width: int = 32  # state width of every model
    hidden: int = 32  # hidden width of the untied stacks' fields (tied ones: matched)
    depth: int = 4  # steps of every stack
    steps: int = 600
    lr: float = 3e-3
    # the models trained and attacked (the resnet is the transfer attack's source, so it is always
    # one); parameters are counted for all four, the empirical check needs all four
    models: list = dataclasses.field(default_factory=lambda: list(MODELS))


QUICK = {
    "num_seeds": 1,
    "width": 8,
    "hidden": 8,
    "depth": 1,
    "steps": 20,
    "pgd_steps": 2,
    "models": ["resnet", "deq"],
}


def validate(cfg: Config) -> None:
    if not cfg.radius > 0:
        raise ConfigError(f"radius: must be > 0, got {cfg.radius}.")
    require_at_least_one(cfg, "pgd_steps", "num_seeds", "width", "hidden", "depth", "steps")
    require_subset(cfg, "models", MODELS, must_include=("resnet",))  # the transfer source
    if not cfg.lr > 0:
        raise ConfigError(f"lr: must be > 0, got {cfg.lr}.")


def tied_hidden(width: int, hidden: int, depth: int) -> int:
    """The hidden width of one field whose parameters match `depth` untied fields of `hidden`
    (an MLP field width -> hidden -> width has hidden (2 width + 1) + width parameters)."""
    untied = depth * (hidden * (2 * width + 1) + width)
    return max(1, round((untied - width) / (2 * width + 1)))


def overrides(cfg: Config) -> dict[str, list[str]]:
    tied = tied_hidden(cfg.width, cfg.hidden, cfg.depth)
    return {
        "resnet": ["model.body.kind=residual", f"model.body.hidden={cfg.hidden}"],
        "ode_net": [
            "model.body.kind=residual",
            "model.body.tied=true",
            "model.body.scheme=rk4",
            f"model.body.hidden={tied}",
        ],
        "implicit": [
            "model.body.kind=implicit",
            "model.body.scheme=backward_euler",
            f"model.body.hidden={cfg.hidden}",
        ],
        "deq": ["model.body.kind=deq", f"model.body.hidden={tied}"],
    }


@eqx.filter_jit
def _attack_and_evaluate(model, x, y, transfer, radius, pgd_steps, key):
    """One compiled program per model: its PGD inputs, and its accuracy and fraction of converged
    solves on the clean, its own PGD and the `transfer` inputs (one batched forward pass)."""
    adv = pgd(
        classifier_loss(model), x, y, radius=radius, steps=pgd_steps, key=key, bounds=(0.0, 1.0)
    )
    logits, diag = jax.vmap(lambda v: model(v, inference=True))(jnp.concatenate([x, adv, transfer]))
    right = (logits.argmax(1) == jnp.tile(y, 3)).reshape(3, -1).mean(1)
    converged = diag.converged.astype(jnp.float32).reshape(3, -1).mean(1)
    return adv, right, converged


def run(cfg: Config, ctx) -> Result:
    seeds = seed_list(cfg.seed, cfg.num_seeds)
    data = load("digits")
    x, y = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
    per = overrides(cfg)
    common = (f"model.width={cfg.width}", f"model.body.num_steps={cfg.depth}")
    # Parameters of all four models, counted on their shapes (nothing initialised or trained).
    params = {
        m: rn.count_params(
            eqx.filter_eval_shape(
                build_model, fit_config(cfg.steps, cfg.lr, *common, *per[m]), data
            )
        )
        for m in MODELS
    }
    trained = [m for m in MODELS if m in cfg.models]  # resnet first: the transfer source
    keys = ("clean", "pgd", "transfer", "converged_clean", "converged_pgd")
    acc = {m: {k: [] for k in keys} for m in trained}
    violation = 0.0
    models = {}
    for m in trained:
        results = fit_seeds(
            data,
            seeds,
            cfg.steps,
            cfg.lr,
            *common,
            "train.steps_per_call=50",
            *per[m],
            evaluate=False,  # measured below, clean and attacked
        )
        models[m] = [r.model for r in results]
    for i, s in enumerate(seeds):
        key = jax.random.PRNGKey(s)
        transfer = None  # the resnet's PGD inputs (it comes first), attacked with the same key
        for m in trained:
            # The resnet's own PGD inputs are its transfer inputs: measured on x there (unused).
            adv, right, conv = _attack_and_evaluate(
                models[m][i], x, y, x if transfer is None else transfer, cfg.radius,
                cfg.pgd_steps, key,
            )  # fmt: skip
            if transfer is None:
                transfer, right = adv, right.at[2].set(right[1])
            violation = max(
                violation,
                float(jnp.max(jnp.abs(adv - x))) - cfg.radius,
                -float(jnp.min(adv)),
                float(jnp.max(adv)) - 1.0,
            )
            for j, k in enumerate(("clean", "pgd", "transfer")):
                acc[m][k].append(float(right[j]))
                if k != "transfer":
                    acc[m][f"converged_{k}"].append(float(conv[j]))
        ctx.say(
            f"  seed {s}: "
            + "; ".join(
                f"{m} clean {acc[m]['clean'][-1]:.3f} PGD {acc[m]['pgd'][-1]:.3f} "
                f"transfer {acc[m]['transfer'][-1]:.3f}"
                for m in trained
            )
        )
    mean = {m: {k: float(np.mean(v)) for k, v in acc[m].items()} for m in trained}
    clean_range = max(v["clean"] for v in mean.values()) - min(v["clean"] for v in mean.values())
    slack = (2 * cfg.width + 1) / 2
    param_gap = max(abs(params[m] - params["resnet"]) for m in MODELS)
    checks = [
        exact_check(
            "perturbation_in_ball",
            f"every PGD input lies within L-inf radius {cfg.radius:g} of its clean input and in "
            "[0, 1] (largest excess over radius or box, every model and seed; float32 slack "
            f"{ROUNDING:g})",
            measured=violation,
            expected=0.0,
            tolerance=ROUNDING,
            compare="le",
        ),
        exact_check(
            "parameters_matched",
            "the four models' parameter counts differ by at most the rounding of the tied "
            f"field's hidden width, (2 width + 1) / 2 = {slack:g}",
            measured=float(param_gap),
            expected=slack,
            tolerance=0.0,
            compare="le",
        ),
    ]
    if len(trained) == len(MODELS):  # the claim compares all four
        best_implicit = max(IMPLICIT, key=lambda m: mean[m]["pgd"])
        best_explicit = max((m for m in MODELS if m not in IMPLICIT), key=lambda m: mean[m]["pgd"])
        holds = mean[best_implicit]["pgd"] > mean[best_explicit]["pgd"]
        checks.append(
            empirical_check(
                "implicit_most_robust",
                "an implicit model (backward-Euler stack or DEQ) has the highest mean PGD accuracy "
                f"(L-inf {cfg.radius:g}, {cfg.pgd_steps} steps, white-box through its solvers)",
                measured={m: mean[m]["pgd"] for m in MODELS},
                expected=f"max over {IMPLICIT} > max over the explicit ones",
                holds=holds,
                detail="clean accuracies "
                + ", ".join(f"{m} {mean[m]['clean']:.3f}" for m in MODELS)
                + f" (range {clean_range:.3f}); seeds {seeds}",
            )
        )
    per_model = {
        m: {
            "parameters": int(params[m]),
            "clean_accuracy": spread(acc[m]["clean"]),
            "pgd_accuracy": spread(acc[m]["pgd"]),
            "transfer_accuracy": spread(acc[m]["transfer"]),
            "converged_clean": spread(acc[m]["converged_clean"]),
            "converged_pgd": spread(acc[m]["converged_pgd"]),
        }
        for m in trained
    }
    figures = {
        "per_model": per_model,
        "clean_accuracy_range": clean_range,
        "tied_hidden": tied_hidden(cfg.width, cfg.hidden, cfg.depth),
        "max_violation": violation,
    }
    xs = np.arange(len(trained))
    plots = [
        plot_series(
            ctx.plots / "accuracy_per_model.png",
            xs,
            {
                "clean": np.array([acc[m]["clean"] for m in trained]).T,
                f"PGD (L-inf {cfg.radius:g})": np.array([acc[m]["pgd"] for m in trained]).T,
                "transfer from ResNet": np.array([acc[m]["transfer"] for m in trained]).T,
            },
            xlabel=" | ".join(f"{i}: {m}" for i, m in enumerate(trained)),
            ylabel="test accuracy",
            title=f"digits, matched parameters, {len(seeds)} seeds",
        )
    ]
    rows = "\n".join(
        f"| {m} | {params[m]} | {fmt_spread(per_model[m]['clean_accuracy'])} | "
        f"{fmt_spread(per_model[m]['pgd_accuracy'])} | "
        f"{fmt_spread(per_model[m]['transfer_accuracy'])} | "
        f"{fmt_spread(per_model[m]['converged_pgd'])} |"
        for m in trained
    )
    report = (
        "## What was measured\n\n"
        f"Four classifiers on digits (mlp stem, state width {cfg.width}, {cfg.depth} steps, "
        f"{cfg.steps} training steps each, per seed): resnet (untied Euler, hidden {cfg.hidden}), "
        f"ode_net (tied RK4, hidden {figures['tied_hidden']}), implicit (untied backward Euler, "
        f"hidden {cfg.hidden}, Newton stages, implicit adjoint), deq (Anderson, implicit "
        f"adjoint, hidden {figures['tied_hidden']}). PGD: L-inf radius {cfg.radius:g}, "
        f"{cfg.pgd_steps} steps, random start, inputs clipped to [0, 1], white-box through each "
        "model's solvers; transfer: the resnet's PGD inputs of the same seed.\n\n"
        "| model | parameters | clean | PGD | transfer from resnet | solves converged under "
        "PGD |\n|---|---|---|---|---|---|\n" + rows + "\n"
    )
    if len(trained) < len(MODELS):
        report += (
            f"\nTrained and attacked: {', '.join(trained)} only (key `models`): the empirical "
            "check compares all four models and was not run.\n"
        )
    return Result(checks=checks, figures=figures, plots=plots, report=report)
