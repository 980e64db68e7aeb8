"""Every ```python block of the README runs (with the inputs it assumes defined here)."""

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _inputs():
    keys = jax.random.split(jax.random.PRNGKey(0), 8)
    d, batch, steps = 4, 3, 20
    W = 0.3 * jax.random.normal(keys[0], (d, d))
    U = jax.random.normal(keys[1], (d, d)) / 2
    x = jax.random.normal(keys[2], (batch, d))
    return {
        "d": d,
        "y0": jax.random.normal(keys[3], (batch, d)),
        "W": W,
        "b": jnp.zeros(d),
        "U": U,
        "Ws": 0.3 * jax.random.normal(keys[4], (steps, d, d)),
        "bs": jnp.zeros((steps, d)),
        "args": (W, jnp.zeros(d)),
        "params": (W, U, x),
        "target": jax.random.normal(keys[5], (batch, d)),
        "z0": jnp.zeros((batch, d)),
        "xs": jax.random.normal(keys[6], (5, d)),
    }


@pytest.mark.slow  # ~20-55 s (subprocesses / full runs); `make test-slow`
def test_readme_blocks_run_in_order(tmp_path, monkeypatch):
    """A reader runs the blocks top to bottom; later blocks may use names defined earlier.
    (In a temporary directory: some examples write files, e.g. checkpoints.)"""
    # The examples run from a scratch copy of the checkout's configs (they write run directories).
    import shutil

    shutil.copytree(Path(__file__).parents[1] / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RESODE_CACHE", str(tmp_path / "cache"))
    assert len(BLOCKS) >= 1
    namespace = _inputs()
    for index, block in enumerate(BLOCKS):
        exec(compile(block, f"README python block {index}", "exec"), namespace)
