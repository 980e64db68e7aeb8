"""Checkpoints: atomic, pickle-free, with a commit marker.

A checkpoint of step s is two files in ``RUN_DIR/checkpoints/``: ``step_<s>.eqx`` (every array
leaf of the saved pytree, NumPy ``.npy`` records written by `equinox.tree_serialise_leaves`) and
``step_<s>.json`` (the step and any metadata). Each is written to a temporary file, flushed to
disk and renamed into place, and the JSON goes last: a checkpoint counts only once its JSON
exists, so a run killed at any moment leaves the previous checkpoint intact and loadable.
"""

import json
import os
from pathlib import Path
from typing import Any

import equinox as eqx

CHECKPOINT_DIR = "checkpoints"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read into the given structure (names the file)."""


def _paths(run_dir, step: int) -> tuple[Path, Path]:
    d = Path(run_dir) / CHECKPOINT_DIR
    stem = f"step_{step:09d}"
    return d / f"{stem}.eqx", d / f"{stem}.json"


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def list_checkpoints(run_dir) -> list[int]:
    """Steps of the complete checkpoints in `run_dir`, oldest first."""
    d = Path(run_dir) / CHECKPOINT_DIR
    if not d.is_dir():
        return []
    steps = []
    for meta in d.glob("step_*.json"):
        step = int(meta.stem.split("_")[1])
        if _paths(run_dir, step)[0].exists():
            steps.append(step)
    return sorted(steps)


def latest_checkpoint(run_dir) -> int | None:
    """The step of the newest complete checkpoint, or None."""
    steps = list_checkpoints(run_dir)
    return steps[-1] if steps else None


def save_checkpoint(
    run_dir, step: int, tree: Any, metadata: dict | None = None, *, keep: int = 3
) -> Path:
    """Save `tree` (model, optimiser state, keys, ...) as the checkpoint of `step`.

    `metadata` must be JSON-serialisable (e.g. the data position, the metrics so far). Keeps the
    newest `keep` checkpoints and deletes older ones (their JSON first, so a half-deleted one is
    never taken for complete). Returns the path of the arrays file.
    """
    arrays, meta = _paths(run_dir, step)
    arrays.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(arrays, lambda f: eqx.tree_serialise_leaves(f, tree))
    record = {"step": int(step), **(metadata or {})}
    _atomic_write(meta, lambda f: f.write(json.dumps(record, indent=1).encode()))
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        old_arrays, old_meta = _paths(run_dir, old)
        old_meta.unlink(missing_ok=True)
        old_arrays.unlink(missing_ok=True)
    return arrays


def load_checkpoint(run_dir, like: Any, step: int | None = None) -> tuple[Any, dict]:
    """Load the checkpoint of `step` (default: the latest) into the structure of `like`.

    `like` is a pytree of the same structure, shapes and dtypes (e.g. a freshly initialised model
    and optimiser state). Returns ``(tree, metadata)``. Raises `FileNotFoundError` when there is
    no such checkpoint and `CheckpointError` when it does not fit `like`.
    """
    step = latest_checkpoint(run_dir) if step is None else step
    if step is None:
        raise FileNotFoundError(f"no complete checkpoint in {Path(run_dir) / CHECKPOINT_DIR}")
    arrays, meta = _paths(run_dir, step)
    if not (arrays.exists() and meta.exists()):
        raise FileNotFoundError(f"no complete checkpoint of step {step} in {arrays.parent}")
    try:
        tree = eqx.tree_deserialise_leaves(arrays, like)
    except Exception as exc:
        raise CheckpointError(
            f"{arrays} does not fit the given structure (was it saved by a different config?): "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None
    return tree, json.loads(meta.read_text())
