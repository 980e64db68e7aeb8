"""In-memory training: the compiled loop of [`Trainer`][] without a run directory."""

import dataclasses
import time
from typing import Any

import equinox as eqx
import numpy as np

from ..config import Config
from ..data import Dataset
from ._loop import Trainer, _host


@dataclasses.dataclass
class FitResult:
    """What [`fit`][] returns.

    **Fields:** `model` (the trained model), `history` (per-step metrics as NumPy arrays, one
    entry per step taken: ``loss``, ``grad_norm``, ``accuracy`` for classification and the body's
    diagnostics), `evaluation` (the test split's [`Trainer.evaluate`][] record, plus the training
    split's with ``evaluate_train=True``; empty with ``evaluate=False``), `train_time_s` (wall
    time of the training calls, compilation included), `steps` (steps taken) and `diverged` (the
    loss became non-finite; training stopped after that call and `evaluation` describes the last
    parameters).
    """

    model: Any
    history: dict[str, np.ndarray]
    evaluation: dict[str, Any]
    train_time_s: float
    steps: int
    diverged: bool


def fit(
    cfg: Config,
    data: Dataset,
    *,
    model=None,
    devices=None,
    evaluate: bool = True,
    evaluate_train: bool = False,
    trainer: Trainer | None = None,
) -> FitResult:
    """Train for ``cfg.train.steps`` steps in memory and evaluate: `resode run` without files.

    The same compiled loop as `resode run` ([`Trainer`][]: ``cfg.train.steps_per_call`` steps per
    compiled call, the optimiser and schedule of ``cfg.train``, batches of ``cfg.data.batch_size``
    drawn from ``cfg.seed``), but nothing is written: experiments and notebooks call it many times.
    `model` (optional) replaces the model that ``cfg.model`` describes (see [`Trainer`][] for its
    calling convention), e.g. a bare [`resode.nn.ResidualStack`][] for a regression whose targets
    have the shape of its inputs.

    `trainer`: reuse this [`Trainer`][] (built for a model of the same structure and the same
    ``cfg.train``) and its compiled calls; training then starts from `model`'s parameters (or the
    trainer's own) with the batch order of ``cfg.seed``. Fits over several seeds compile once.

    `evaluate` (default True): evaluate the test split at the end; False leaves `evaluation`
    empty (and ignores `evaluate_train`), sparing the compilation of the evaluation program for a
    caller that measures the trained model its own way.
    """
    if trainer is None:
        trainer = Trainer(cfg, data, devices=devices, model=model)
        state = trainer.init_state()
    else:
        params = None if model is None else eqx.filter(model, eqx.is_inexact_array)
        state = trainer.init_state(params, seed=cfg.seed)
    history: dict[str, list[np.ndarray]] = {}
    step, elapsed, diverged = 0, 0.0, False
    while step < cfg.train.steps and not diverged:
        length = min(cfg.train.steps_per_call, cfg.train.steps - step)
        t0 = time.perf_counter()
        state, metrics = trainer.train(state, length)
        elapsed += time.perf_counter() - t0
        for k, v in metrics.items():
            history.setdefault(k, []).append(np.asarray(v))
        diverged = not np.all(np.isfinite(metrics["loss"]))
        step += length
    evaluation = trainer.evaluate(state.params) if evaluate else {}
    if evaluate and evaluate_train:
        evaluation.update(trainer.evaluate(state.params, split="train"))
    return FitResult(
        model=trainer.model(_host(state.params)),
        history={k: np.concatenate(v) for k, v in history.items()},
        evaluation=evaluation,
        train_time_s=elapsed,
        steps=step,
        diverged=diverged,
    )
