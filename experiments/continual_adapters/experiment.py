"""Continual learning with residual adapters: fine-tuning forgets, adapters on a frozen base less.

The seed chapter (applications.md, "continual learning and domain adaptation") proposes to learn a
new task by adding residual branches x + F(x) to a frozen network, F initialised at zero, so that
what the network knew is kept; Rebuffi et al. (NeurIPS 2017, "Learning multiple visual domains
with residual adapters") use such parallel adapters per domain. Setting: digits, task A = the
classes 0-4, task B = the classes 5-9, one 10-way head (class-incremental). A ResNet is trained on
A; then it learns B either by fine-tuning every parameter or by training only zero-initialised
adapters beside every residual block (`resode.nn.add_adapters`, `train.trainable=adapters`).

Exact: adapter training leaves every base parameter bit for bit as it was, so the base network
serving task A without B's adapters has exactly its accuracy before B (forgetting 0); and the
adapted network before training computes exactly the base network's outputs. Empirical (over
seeds): with B's adapters switched on (one network for both tasks), task A accuracy drops less
than after fine-tuning (forgetting = A accuracy before B - A accuracy after B).
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
    seed_list,
    spread,
)
from resode.train import Trainer, build_model, fit

CLAIM = (
    "Learning a second task by fine-tuning everything forgets the first; zero-initialised "
    "residual adapters on a frozen base forget much less (none at all when served per task)."
)
SOURCE = (
    "applications.md: continual learning with residual branches x + F(x) on a frozen network; "
    "Rebuffi et al., NeurIPS 2017, 'Learning multiple visual domains with residual adapters'"
)
KEY_FIGURE = "forgetting"

METHODS = ("fine_tune", "adapters")


@dataclasses.dataclass
class Config:
    adapter_width: int = 16  # hidden width of each adapter MLP (dim -> width -> dim)
    seed: int = 0
    num_seeds: int = 3
    width: int = 64
    depth: int = 4  # untied Euler ResNet blocks, one adapter each
    steps_a: int = 600  # training steps on task A
    steps_b: int = 600  # training steps on task B (either method)
    lr: float = 3e-3


QUICK = {"num_seeds": 1, "width": 16, "adapter_width": 4, "steps_a": 40, "steps_b": 40}


def validate(cfg: Config) -> None:
    for key in ("adapter_width", "num_seeds", "width", "depth", "steps_a", "steps_b"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}: must be >= 1, got {getattr(cfg, key)}.")
    if not cfg.lr > 0:
        raise ConfigError(f"lr: must be > 0, got {cfg.lr}.")


def _task(full, classes):
    keep_train = np.isin(full.y_train, classes)
    keep_test = np.isin(full.y_test, classes)
    return dataclasses.replace(
        full,
        x_train=full.x_train[keep_train],
        y_train=full.y_train[keep_train],
        x_test=full.x_test[keep_test],
        y_test=full.y_test[keep_test],
    )


def run(cfg: Config, ctx) -> Result:
    full = load("digits")
    task_a, task_b = _task(full, np.arange(5)), _task(full, np.arange(5, 10))
    seeds = seed_list(cfg.seed, cfg.num_seeds)
    common = [
        f"model.width={cfg.width}",
        f"model.body.num_steps={cfg.depth}",
        "train.steps_per_call=50",
        "data.batch_size=128",
    ]
    acc = {k: [] for k in ("a_before", "a_fine_tune", "b_fine_tune", "a_adapters", "b_adapters")}
    base_change, start_gap, per_task_gap = 0.0, 0.0, 0.0
    trainers: dict[str, Trainer] = {}
    for s in seeds:
        ca = fit_config(cfg.steps_a, cfg.lr, f"seed={s}", *common)
        trainers.setdefault("a", Trainer(ca, task_a))
        base = fit(ca, task_a, model=build_model(ca, task_a), trainer=trainers["a"]).model
        acc["a_before"].append(held_out_accuracy(base, task_a))

        cb = fit_config(cfg.steps_b, cfg.lr, f"seed={s}", *common)
        trainers.setdefault("fine_tune", Trainer(cb, task_b, model=base))
        tuned = fit(cb, task_b, model=base, trainer=trainers["fine_tune"]).model
        acc["a_fine_tune"].append(held_out_accuracy(tuned, task_a))
        acc["b_fine_tune"].append(held_out_accuracy(tuned, task_b))

        adapted = rn.add_adapters(base, cfg.adapter_width, key=jax.random.PRNGKey(1000 + s))
        start_gap = max(
            start_gap,
            float(
                np.max(
                    np.abs(
                        jax.vmap(lambda x: adapted(x, inference=True)[0])(
                            jnp.asarray(task_a.x_test)
                        )
                        - jax.vmap(lambda x: base(x, inference=True)[0])(jnp.asarray(task_a.x_test))
                    )
                )
            ),
        )
        cad = fit_config(
            cfg.steps_b,
            cfg.lr,
            f"seed={s}",
            *common,
            f"model.adapter_hidden={cfg.adapter_width}",
            "train.trainable=adapters",
        )
        trainers.setdefault("adapters", Trainer(cad, task_b, model=adapted))
        learned = fit(cad, task_b, model=adapted, trainer=trainers["adapters"]).model
        acc["a_adapters"].append(held_out_accuracy(learned, task_a))
        acc["b_adapters"].append(held_out_accuracy(learned, task_b))
        inner = rn.remove_adapters(learned)
        base_change = max(base_change, max_param_change(inner, base))
        per_task_gap = max(
            per_task_gap, abs(held_out_accuracy(inner, task_a) - acc["a_before"][-1])
        )
        ctx.say(
            f"  seed {s}: A {acc['a_before'][-1]:.3f}; fine-tune A {acc['a_fine_tune'][-1]:.3f} "
            f"B {acc['b_fine_tune'][-1]:.3f}; adapters A {acc['a_adapters'][-1]:.3f} "
            f"B {acc['b_adapters'][-1]:.3f}"
        )

    forget = {
        m: [b - a for a, b in zip(acc[f"a_{m}"], acc["a_before"], strict=True)] for m in METHODS
    }
    less = float(np.mean(forget["adapters"])) < float(np.mean(forget["fine_tune"]))
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
            "per_task_forgetting",
            "served per task (task A by the base network without B's adapters), task A accuracy "
            "after learning B equals its accuracy before (largest difference over seeds)",
            measured=per_task_gap,
            expected=0.0,
            tolerance=0.0,
        ),
        exact_check(
            "adapters_start_as_identity",
            "zero-initialised adapters: the adapted network computes the base network's logits "
            "before any training (largest difference on task A's test set)",
            measured=start_gap,
            expected=0.0,
            tolerance=0.0,
        ),
        empirical_check(
            "adapters_forget_less",
            "with B's adapters switched on (one network for both tasks), task A accuracy drops less "
            "than after fine-tuning every parameter on B (mean forgetting over seeds)",
            measured=float(np.mean(forget["adapters"])),
            expected=f"< {float(np.mean(forget['fine_tune'])):.4f} (fine-tuning's forgetting)",
            holds=less,
            detail="forgetting per seed: fine-tune "
            + ", ".join(f"{v:.3f}" for v in forget["fine_tune"])
            + "; adapters "
            + ", ".join(f"{v:.3f}" for v in forget["adapters"]),
        ),
    ]
    per_method = {
        m: {
            "task_a_before": spread(acc["a_before"]),
            "task_a_after": spread(acc[f"a_{m}"]),
            "task_b": spread(acc[f"b_{m}"]),
            "forgetting": spread(forget[m]),
        }
        for m in METHODS
    }
    figures = {
        "forgetting": {m: spread(forget[m]) for m in METHODS},
        "per_method": per_method,
        "base_parameter_change": base_change,
        "per_task_forgetting": per_task_gap,
        "adapter_start_gap": start_gap,
        "adapter_params": int(
            rn.count_params(rn.add_adapters(base, cfg.adapter_width, key=jax.random.PRNGKey(0)))
            - rn.count_params(base)
        ),
        "base_params": int(rn.count_params(base)),
    }
    stages = ["A trained", "after B"]
    plots = [
        plot_series(
            ctx.plots / "task_a_accuracy.png",
            [0, 1],
            {
                "fine-tune": np.array([acc["a_before"], acc["a_fine_tune"]]).T,
                "adapters (on)": np.array([acc["a_before"], acc["a_adapters"]]).T,
            },
            xlabel="stage (0: " + stages[0] + ", 1: " + stages[1] + ")",
            ylabel="task A test accuracy",
            title=f"digits 0-4 then 5-9, {len(seeds)} seeds",
        ),
    ]
    rows = "\n".join(
        f"| {m} | {fmt_spread(per_method[m]['task_a_before'])} | "
        f"{fmt_spread(per_method[m]['task_a_after'])} | {fmt_spread(per_method[m]['task_b'])} | "
        f"{fmt_spread(per_method[m]['forgetting'])} |"
        for m in METHODS
    )
    report = (
        "## What was measured\n\n"
        f"Untied Euler ResNet (depth {cfg.depth}, width {cfg.width}, {figures['base_params']} "
        f"parameters) trained {cfg.steps_a} steps on digits 0-4, then {cfg.steps_b} steps on "
        f"digits 5-9 by fine-tuning everything or by training only adapters of hidden width "
        f"{cfg.adapter_width} ({figures['adapter_params']} parameters, one per block); one 10-way "
        "head, frozen with the base for the adapters.\n\n"
        "| method | task A before B | task A after B | task B | forgetting |\n"
        "|---|---|---|---|---|\n" + rows + "\n"
    )
    return Result(checks=checks, figures=figures, plots=plots, report=report)
