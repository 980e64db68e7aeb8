"""resode.train checkpoints: atomic, pickle-free, complete-or-absent."""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import resode.nn as rn
from resode.train import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from resode.train import _checkpoint as ckpt_module


def _state(seed=0):
    model = rn.build_classifier(
        in_shape=(6,), num_classes=3, width=5, num_steps=2, key=jax.random.PRNGKey(seed)
    )
    params = eqx.filter(model, eqx.is_inexact_array)
    opt_state = optax.adam(1e-3).init(params)
    # Make the optimiser state non-trivial.
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    _, opt_state = optax.adam(1e-3).update(grads, opt_state, params)
    return {
        "model": model,
        "opt": opt_state,
        "key": jax.random.PRNGKey(seed + 7),
        "step": jnp.array(seed),
    }


def _equal(a, b):
    la, lb = (
        jax.tree_util.tree_leaves(eqx.filter(a, eqx.is_array)),
        jax.tree_util.tree_leaves(eqx.filter(b, eqx.is_array)),
    )
    return len(la) == len(lb) and all(
        x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(la, lb, strict=True)
    )


def test_round_trip_of_model_optimiser_and_key(tmp_path):
    state = _state(1)
    save_checkpoint(tmp_path, 10, state, {"data_position": 10, "best_accuracy": 0.5})
    restored, meta = load_checkpoint(tmp_path, _state(0))
    assert _equal(restored, state)
    assert meta == {"step": 10, "data_position": 10, "best_accuracy": 0.5}
    # The restored model runs and matches.
    x = jnp.ones(6)
    np.testing.assert_array_equal(restored["model"](x)[0], state["model"](x)[0])


def test_latest_and_pruning(tmp_path):
    for step in (5, 10, 15, 20):
        save_checkpoint(tmp_path, step, _state(step), keep=2)
    assert list_checkpoints(tmp_path) == [15, 20]
    assert latest_checkpoint(tmp_path) == 20
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step_000000015.eqx",
        "step_000000015.json",
        "step_000000020.eqx",
        "step_000000020.json",
    ]
    restored, _ = load_checkpoint(tmp_path, _state(0), step=15)
    assert _equal(restored, _state(15))


def test_a_checkpoint_without_its_commit_marker_does_not_count(tmp_path):
    save_checkpoint(tmp_path, 1, _state(1))
    save_checkpoint(tmp_path, 2, _state(2))
    (tmp_path / "checkpoints" / "step_000000002.json").unlink()  # killed before the marker
    (tmp_path / "checkpoints" / "step_000000003.eqx.123.tmp").write_bytes(b"partial")
    assert latest_checkpoint(tmp_path) == 1
    restored, meta = load_checkpoint(tmp_path, _state(0))
    assert meta["step"] == 1 and _equal(restored, _state(1))


def test_a_kill_while_writing_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, _state(1))

    def dies(f, tree):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_module.eqx, "tree_serialise_leaves", dies)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, _state(2))
    monkeypatch.undo()
    assert list_checkpoints(tmp_path) == [1]
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))  # cleaned up
    restored, _ = load_checkpoint(tmp_path, _state(0))
    assert _equal(restored, _state(1))


def test_files_are_arrays_and_json_not_pickle(tmp_path):
    save_checkpoint(tmp_path, 4, _state(4), {"note": "hi"})
    meta = json.loads((tmp_path / "checkpoints" / "step_000000004.json").read_text())
    assert meta == {"step": 4, "note": "hi"}
    raw = (tmp_path / "checkpoints" / "step_000000004.eqx").read_bytes()
    assert raw.startswith(b"\x93NUMPY")  # .npy records
    with open(tmp_path / "checkpoints" / "step_000000004.eqx", "rb") as f:
        first = np.load(f, allow_pickle=False)  # would raise if a record needed pickle
    assert first.shape is not None


def test_missing_and_mismatched_checkpoints_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        load_checkpoint(tmp_path, _state(0))
    save_checkpoint(tmp_path, 3, _state(3))
    other = {
        "model": rn.build_classifier(
            in_shape=(6,), num_classes=3, width=9, key=jax.random.PRNGKey(0)
        )
    }
    with pytest.raises(CheckpointError, match="step_000000003.eqx does not fit"):
        load_checkpoint(tmp_path, other)
    with pytest.raises(FileNotFoundError, match="step 99"):
        load_checkpoint(tmp_path, _state(0), step=99)
