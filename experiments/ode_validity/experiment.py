"""Is a trained weight-tied ResNet an ODE? (Ott, Katiyar, Hennig, Tiemann, "ResNet After All?
Neural ODEs and Their Numerical Solution", ICLR 2021.)

Classifiers whose body is one tied field stepped `N` times by `scheme` over t in [0, 1] (an
ODE-net: `model.body.tied=true`) are trained for each N of `train_steps`. Each trained model is
then evaluated, with the same parameters, at every step count of `test_steps` and with
`other_scheme` at the largest one. If training found a vector field whose flow the classifier
uses, a finer solver changes nothing; if it found a map that only works at its own step size, the
accuracy collapses when the solver changes. Ott et al. report such a collapse below a critical
step count and none above it.

Exact: re-assembling a trained model at its own training step count (its parameters in a freshly
built model of that structure) reproduces the trainer's own test accuracy exactly. Empirical, a
criterion fixed before the run: the accuracy change from the training step count to the finest
test step count, |acc(N, N) - acc(N, finest)| (mean over seeds), exceeds `tolerance` at the
smallest N and stays within it at the largest. `critical_steps`: the smallest N from which on every
larger N stays within `tolerance` (null if none).
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
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
from resode.train import Trainer, build_model, fit

CLAIM = (
    "Weight-tied ODE-nets trained with too few steps change their predictions when the solver "
    "changes; above a critical step count they do not (they are ODE flows)."
)
SOURCE = (
    "Ott et al., 'ResNet After All? Neural ODEs and Their Numerical Solution', ICLR 2021; "
    "applications.md: ResNets as forward Euler"
)
KEY_FIGURE = "critical_steps"


@dataclasses.dataclass
class Config:
    train_steps: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 4, 8, 16])
    test_steps: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    scheme: str = "euler"
    other_scheme: str = "rk4"  # also evaluated at the largest test step count
    data: str = "digits"
    seed: int = 0
    num_seeds: int = 3
    width: int = 64
    steps: int = 800
    lr: float = 3e-3
    tolerance: float = 0.01  # accuracy change counted as "unchanged"


QUICK = {"train_steps": [1, 4], "test_steps": [1, 4, 16], "num_seeds": 1, "width": 16, "steps": 40}


def validate(cfg: Config) -> None:
    import resode

    for key in ("train_steps", "test_steps"):
        values = getattr(cfg, key)
        if not values or any(int(v) < 1 for v in values):
            raise ConfigError(f"{key}: must be a non-empty list of positive ints, got {values}.")
    if len(cfg.train_steps) < 2:
        raise ConfigError(f"train_steps: need at least two step counts, got {cfg.train_steps}.")
    for key in ("scheme", "other_scheme"):
        name = getattr(cfg, key)
        if name not in resode.list_schemes() or resode.get_scheme(name).implicit:
            raise ConfigError(
                f"{key}: {name!r} is not an explicit scheme of resode.list_schemes()."
            )
    if cfg.data not in ("digits", "mnist1d"):
        raise ConfigError(f"data: {cfg.data!r} is not allowed; choose one of: digits, mnist1d.")
    for key in ("num_seeds", "width", "steps"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}: must be >= 1, got {getattr(cfg, key)}.")


def _config(cfg, steps, scheme, seed):
    return fit_config(
        cfg.steps,
        cfg.lr,
        f"seed={seed}",
        "model.body.kind=residual",
        "model.body.tied=true",
        f"model.body.scheme={scheme}",
        f"model.body.num_steps={steps}",
        f"model.width={cfg.width}",
        f"train.steps_per_call={cfg.steps}",
    )


def reassemble(trained, cfg, data, steps, scheme):
    """`trained`'s parameters in a model built for `steps` steps of `scheme` (same leaves)."""
    fresh = build_model(_config(cfg, steps, scheme, 0), data)
    leaves = jax.tree_util.tree_leaves(trained)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(fresh), leaves)


@eqx.filter_jit
def _accuracy(model, x, y):
    logits, _ = jax.vmap(lambda xi: model(xi, inference=True))(x)
    return jnp.mean(jnp.argmax(logits, -1) == y)


def run(cfg: Config, ctx) -> Result:
    data = load(cfg.data)
    seeds = seed_list(cfg.seed, cfg.num_seeds)
    train_steps = [int(n) for n in cfg.train_steps]
    test_steps = sorted({int(m) for m in cfg.test_steps})
    finest = test_steps[-1]
    columns = [f"{m}" for m in test_steps] + [f"{cfg.other_scheme}@{finest}"]
    acc = np.zeros((len(seeds), len(train_steps), len(columns)))
    own = np.zeros((len(seeds), len(train_steps)))
    trainer_acc = np.zeros((len(seeds), len(train_steps)))
    x, y = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
    for j, n in enumerate(train_steps):
        ctx.say(f"train at {n} steps of {cfg.scheme}")
        trainer = None
        for i, seed in enumerate(seeds):
            c = _config(cfg, n, cfg.scheme, seed)
            model = build_model(c, data)
            trainer = trainer or Trainer(c, data, model=model)
            result = fit(c, data, model=model, trainer=trainer)
            trainer_acc[i, j] = result.evaluation["test_accuracy"]
            own[i, j] = float(_accuracy(reassemble(result.model, cfg, data, n, cfg.scheme), x, y))
            for k, m in enumerate(test_steps):
                acc[i, j, k] = float(
                    _accuracy(reassemble(result.model, cfg, data, m, cfg.scheme), x, y)
                )  # noqa: E501
            other = reassemble(result.model, cfg, data, finest, cfg.other_scheme)
            acc[i, j, -1] = float(_accuracy(other, x, y))
    k_finest = test_steps.index(finest)
    change = np.abs(own - acc[:, :, k_finest])  # (seeds, train_steps)
    mean_change = change.mean(0)
    order = np.argsort(train_steps)
    critical = None
    for idx in range(len(order)):
        if all(mean_change[order[j]] <= cfg.tolerance for j in range(idx, len(order))):
            critical = int(train_steps[order[idx]])
            break
    smallest, largest = order[0], order[-1]
    held = bool(mean_change[smallest] > cfg.tolerance and mean_change[largest] <= cfg.tolerance)
    checks = [
        exact_check(
            "reassembled_equals_trained",
            "a trained model re-assembled at its own step count has the trainer's test accuracy "
            "(largest difference over train step counts and seeds)",
            measured=float(np.max(np.abs(own - trainer_acc))),
            expected=0.0,
            tolerance=0.5 / len(data.y_test),  # less than one test example
        ),
        empirical_check(
            "coarse_changes_fine_does_not",
            f"trained at {train_steps[smallest]} step(s) the model changes when evaluated at "
            f"{finest} steps; trained at {train_steps[largest]} it does not",
            measured={"critical_steps": critical, "mean_change": mean_change.tolist()},
            expected=f"mean |acc(N, N) - acc(N, {finest})| > {cfg.tolerance} at N = "
            f"{train_steps[smallest]} and <= {cfg.tolerance} at N = {train_steps[largest]}",
            holds=held,
            detail="; ".join(
                f"N = {n}: change {fmt_spread(spread(change[:, j]))}"
                for j, n in enumerate(train_steps)
            ),
        ),
    ]
    matrix = {
        f"{n}": {col: spread(acc[:, j, k]) for k, col in enumerate(columns)}
        for j, n in enumerate(train_steps)
    }
    figures = {
        "critical_steps": critical,
        "accuracy_matrix": {
            "rows_train_steps": train_steps,
            "columns": columns,
            "mean": acc.mean(0).tolist(),
        },
        "accuracy_matrix_over_seeds": matrix,
        "own_accuracy": {f"{n}": spread(own[:, j]) for j, n in enumerate(train_steps)},
        "change_to_finest": {f"{n}": spread(change[:, j]) for j, n in enumerate(train_steps)},
    }
    plot = plot_series(
        ctx.plots / "accuracy_vs_test_steps.png",
        test_steps,
        {f"trained at {n}": acc[:, j, : len(test_steps)] for j, n in enumerate(train_steps)},
        xlabel=f"test step count ({cfg.scheme})",
        ylabel="test accuracy",
        title=f"tied {cfg.scheme} ODE-nets on {cfg.data}, {len(seeds)} seeds",
        logx=True,
    )
    header = "| trained at \\ tested at | " + " | ".join(columns) + " |\n"
    header += "|---" * (len(columns) + 1) + "|\n"
    rows = "".join(
        f"| {n} | " + " | ".join(f"{acc[:, j, k].mean():.3f}" for k in range(len(columns))) + " |\n"
        for j, n in enumerate(train_steps)
    )
    report = (
        "## What was measured\n\n"
        f"Test accuracy on {cfg.data} (mean over {len(seeds)} seeds), rows: training step count "
        f"({cfg.scheme}), columns: evaluation step count, and {cfg.other_scheme} at {finest}:\n\n"
        + header
        + rows
        + f"\nMean change from the own step count to {finest} steps: "
        + ", ".join(f"N = {n}: {mean_change[j]:.3f}" for j, n in enumerate(train_steps))
        + f". Critical step count (tolerance {cfg.tolerance}): {critical}.\n"
    )
    return Result(checks, figures, report, [plot])
