"""One run: train a config into a run directory, resumably, and write its metrics, plots, summary.

A run directory holds ``config.yaml`` (the resolved config), ``metrics.jsonl`` (one JSON line per
training step, and one per evaluation), ``checkpoints/``, ``plots/`` and, once finished,
``summary.json``. Calling [`train_run`][] again on the same directory resumes from its newest
checkpoint (and returns the summary at once when the run has finished); a different config for
the same directory is refused, naming the first key that differs.
"""

import dataclasses
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ..config import Config, ConfigError, flatten, load_config, save_config, to_yaml
from ..data import fingerprint, load
from ..nn import count_params
from ._checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from ._loop import Trainer, TrainState, _host
from ._measure import measure_body

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CONFIG = "config.yaml"


class TrainingDiverged(RuntimeError):
    """The loss became non-finite; the message names the step and the checkpoint kept."""


def _is_main() -> bool:
    return jax.process_index() == 0


def _finite_or_none(v):
    v = float(v)
    return v if math.isfinite(v) else None


def _check_same_config(run_dir: Path, cfg: Config) -> None:
    saved_path = run_dir / CONFIG
    saved = load_config(saved_path)
    if to_yaml(saved) == to_yaml(cfg):
        return
    old, new = flatten(dataclasses.asdict(saved)), flatten(dataclasses.asdict(cfg))
    key = next(k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))
    raise ConfigError(
        f"{key}: the run directory {str(run_dir)!r} was made with {old.get(key)!r}, this config "
        f"has {new.get(key)!r}; resume with the same config or choose another --out."
    )


def _read_metrics(run_dir: Path, upto: int | None) -> list[dict]:
    path = run_dir / METRICS
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            continue
        if upto is None or row["step"] <= upto:
            rows.append(row)
    return rows


def _rewrite_metrics(run_dir: Path, rows: list[dict]) -> None:
    path = run_dir / METRICS
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)


def _schedule(step: int, cfg: Config) -> int:
    """Steps in the next call: up to `steps_per_call`, stopping at evaluations, checkpoints and
    the end (so an interrupted and an uninterrupted run make the same calls)."""
    t = cfg.train
    stops = [t.steps]
    for every in (cfg.eval.every, t.checkpoint_every):
        stops.append((step // every + 1) * every)
    return min(t.steps_per_call, min(stops) - step)


def _progress(total: int, initial: int, quiet: bool):
    from tqdm.auto import tqdm

    disable = quiet or not sys.stderr.isatty()
    return tqdm(total=total, initial=initial, disable=disable, unit="step", dynamic_ncols=True)


def train_run(
    cfg: Config,
    run_dir: str | Path,
    *,
    quiet: bool = False,
    devices=None,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Train `cfg` into `run_dir` (resuming from its newest checkpoint) and return the summary.

    `quiet` silences messages and the progress bar (which is off anyway when stderr is not a
    terminal). `devices`: the devices to shard the batch over (default all). `stop_after`
    returns early, without a summary, once that step is reached (as a kill would; for tests).

    Raises `ConfigError` for a config that does not fit the data or the directory, and
    [`TrainingDiverged`][] when the loss becomes non-finite (the last good checkpoint is kept
    and named).
    """
    say = (lambda *a: None) if quiet or not _is_main() else (lambda *a: print(*a, flush=True))
    run_dir = Path(run_dir)
    if (run_dir / CONFIG).exists():
        _check_same_config(run_dir, cfg)
        if (run_dir / SUMMARY).exists():
            summary = json.loads((run_dir / SUMMARY).read_text())
            if summary.get("status") == "finished":
                say(f"{run_dir}: already finished ({summary['steps']} steps).")
                return summary
    data = load(cfg.data.name, seed=cfg.data.seed, **cfg.data.options)
    trainer = Trainer(cfg, data, devices=devices)  # checks the config against data and devices
    if _is_main() and not (run_dir / CONFIG).exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / CONFIG)
    state = trainer.init_state()
    start = latest_checkpoint(run_dir)
    meta: dict[str, Any] = {"train_time_s": 0.0}
    if start is not None:
        host, meta = load_checkpoint(run_dir, _host(state))
        state = trainer.place(host)
        say(f"{run_dir}: resuming from the checkpoint of step {start}.")
    rows = _read_metrics(run_dir, upto=start or 0)
    if _is_main():
        _rewrite_metrics(run_dir, rows)  # drop lines of steps after the checkpoint
    # Training rows so far, kept in memory: with several processes only process 0 writes
    # metrics.jsonl, so the others must not read it back at the end.
    train_rows = [r for r in rows if r["split"] == "train"]

    tensorboard = None
    if cfg.train.tensorboard and _is_main():
        from ._tensorboard import EventWriter

        tensorboard = EventWriter(run_dir / "tensorboard")

    step = int(start or 0)
    train_time = float(meta.get("train_time_s", 0.0))
    call_times: list[float] = []  # per-step time of calls after each length's first (compile)
    seen_lengths: set[int] = set()
    bar = _progress(cfg.train.steps, step, quiet)
    metrics_file = open(run_dir / METRICS, "a") if _is_main() else None

    def checkpoint(s: int, st: TrainState) -> None:
        if _is_main():
            metrics_file.flush()
            save_checkpoint(
                run_dir,
                s,
                _host(st),
                {"train_time_s": train_time, "data_position": s, "seed": cfg.seed},
            )

    def write(row: dict) -> None:
        if metrics_file is not None:
            metrics_file.write(json.dumps(row) + "\n")
        if tensorboard is not None:
            for k, v in row.items():
                if k not in ("step", "split") and v is not None:
                    tensorboard.scalar(f"{row['split']}/{k}", v, row["step"])

    try:
        while step < cfg.train.steps:
            length = _schedule(step, cfg)
            t0 = time.perf_counter()
            state, metrics = trainer.train(state, length)
            elapsed = time.perf_counter() - t0
            train_time += elapsed
            if length in seen_lengths:
                call_times.append(elapsed / length)
            seen_lengths.add(length)
            losses = np.asarray(metrics["loss"])
            bad = ~np.isfinite(losses)
            for i in range(length):
                row = {"step": step + i + 1, "split": "train"}
                row.update({k: _finite_or_none(v[i]) for k, v in metrics.items()})
                row["step_time_ms"] = 1e3 * elapsed / length
                write(row)
                train_rows.append(row)
            if bad.any():
                at = step + int(np.argmax(bad)) + 1
                kept = latest_checkpoint(run_dir)
                where = (
                    f"the checkpoint of step {kept} is kept in {run_dir / 'checkpoints'}"
                    if kept is not None
                    else "no checkpoint had been written yet"
                )
                raise TrainingDiverged(
                    f"training stopped: the loss is {losses[bad][0]} at step {at} (train.lr="
                    f"{cfg.train.lr}); {where}. Lower train.lr or set train.grad_clip."
                )
            step += length
            bar.update(length)
            post = {"loss": f"{losses[-1]:.4f}"}
            if "accuracy" in metrics:
                post["acc"] = f"{np.mean(metrics['accuracy']):.3f}"
            bar.set_postfix(post, refresh=False)
            if step % cfg.eval.every == 0 or step == cfg.train.steps:
                ev = trainer.evaluate(state.params)
                write({"step": step, "split": "test", **ev})
                if ev["test_accuracy"] is not None:
                    post["test_acc"] = f"{ev['test_accuracy']:.3f}"
                bar.set_postfix(post)
            if step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps:
                checkpoint(step, state)
            if stop_after is not None and step >= stop_after and step < cfg.train.steps:
                return {"status": "stopped", "steps": step}
    finally:
        bar.close()
        if metrics_file is not None:
            metrics_file.close()
        if tensorboard is not None:
            tensorboard.close()

    final = trainer.evaluate(state.params)
    n_measure = min(256, data.x_test.shape[0])
    body = measure_body(
        trainer.model(_host(state.params)),
        data.x_test[:n_measure],
        data.y_test[:n_measure],
        classification=trainer.classification,
    )
    last = train_rows[-min(len(train_rows), cfg.train.steps_per_call) :]
    summary = {
        "status": "finished",
        "test_accuracy": final["test_accuracy"],
        "test_loss": final["test_loss"],
        "train_loss": float(np.mean([r["loss"] for r in last])),
        "train_accuracy": (
            float(np.mean([r["accuracy"] for r in last])) if "accuracy" in last[0] else None
        ),
        "num_params": count_params(trainer.model(state.params)),
        "train_time_s": train_time,
        "steps": step,
        "step_time_ms": 1e3 * statistics.median(call_times) if call_times else None,
        "num_fevals": final["test_num_fevals"],
        "backward_vjps": body["backward_vjps"],
        "grad_flow": body["grad_flow"],
        "solver_steps": final["test_solver_steps"],
        "residual": final["test_residual"],
        "fraction_converged": final["test_fraction_converged"],
        "memory_bytes": trainer.memory_bytes(),
        "dataset": data.name,
        "dataset_fingerprint": fingerprint(data),
        "device": str(jax.devices()[0].device_kind),
        "num_devices": trainer.num_devices,
        "resumed_from": start,
    }
    if _is_main():
        from ._plots import plot_run

        plot_run(run_dir)
        tmp = run_dir / (SUMMARY + ".tmp")
        tmp.write_text(json.dumps(summary, indent=1) + "\n")
        os.replace(tmp, run_dir / SUMMARY)
    acc = summary["test_accuracy"]
    say(
        f"{run_dir}: {step} steps in {train_time:.1f} s; test loss {summary['test_loss']:.4f}"
        + (f", test accuracy {acc:.4f}" if acc is not None else "")
    )
    return summary
