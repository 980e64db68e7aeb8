"""resode.data: every embedded dataset loads with its documented shapes, reproducibly, offline."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resode import data

SHAPES = {
    "digits": ((1, 8, 8), "classification", 10),
    "mnist1d": ((1, 40), "classification", 10),
    "spirals": ((2,), "classification", 2),
    "concentric_spheres": ((2,), "classification", 2),
    "crossing1d": ((1,), "regression", 0),
    "harmonic_oscillator": ((2,), "dynamics", 0),
    "lotka_volterra": ((2,), "dynamics", 0),
    "van_der_pol": ((2,), "dynamics", 0),
    "stiff_linear": ((2,), "dynamics", 0),
    "sbm": ((300, 16), "classification", 3),  # one graph; labels per node, -1 outside the split
    "karate": ((34, 34), "classification", 2),
    "retrieval": ((9, 16), "classification", 8),
    "shapes": ((1, 24, 24), "classification", 4),
}


def test_retrieval_label_is_the_value_of_the_query_key():
    ds = data.load("retrieval", num_samples=200, seed=1)
    tok = ds.x_train.argmax(-1)  # (n, 9) symbols
    for row, label in zip(tok, ds.y_train, strict=True):
        keys, values, query = row[0:-1:2], row[1:-1:2] - 8, row[-1]
        assert len(set(keys)) == 4 and query in keys and np.all(keys < 8)
        assert values[list(keys).index(query)] == label


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RESODE_CACHE", str(tmp_path))


def test_every_dataset_is_listed():
    assert set(data.list_datasets()) == set(SHAPES)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_dataset_shapes_and_determinism(name):
    ds = data.load(name)
    shape, task, classes = SHAPES[name]
    assert ds.input_shape == shape and ds.task == task and ds.num_classes == classes
    assert ds.x_train.dtype == np.float32 and len(ds.x_train) == len(ds.y_train)
    if ds.adjacency is None:
        assert len(ds.x_train) > len(ds.x_test) > 0
    else:  # one graph, its nodes split by label masks
        assert len(ds.x_train) == len(ds.x_test) == 1
        assert np.all((ds.y_train >= 0) ^ (ds.y_test >= 0))
        assert (ds.y_train >= 0).sum() < (ds.y_test >= 0).sum()
    assert np.all(np.isfinite(ds.x_train)) and np.all(np.isfinite(ds.y_train))
    if task == "classification" and ds.adjacency is not None:
        assert set(np.unique(ds.y_train)) == set(range(-1, classes))
    elif task == "classification":
        assert ds.y_train.dtype == np.int32 and set(np.unique(ds.y_train)) == set(range(classes))
    if task == "dynamics":
        assert ds.y_train.shape == (len(ds.x_train), len(ds.ts), 2)
        np.testing.assert_allclose(ds.y_train[:, 0], ds.x_train, rtol=1e-6)  # starts at the input
    assert data.fingerprint(data.load(name)) == data.fingerprint(ds)


def test_digits_split_is_stratified_and_fixed():
    ds = data.load("digits")
    assert (len(ds.x_train), len(ds.x_test)) == (1437, 360)
    counts = np.bincount(ds.y_test, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    assert data.fingerprint(data.load("digits", seed=1)) != data.fingerprint(ds)


def test_mnist1d_is_cached_as_npz_and_reread(tmp_path):
    first = data.mnist1d(cache_dir=tmp_path, num_samples=500)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1
    again = data.mnist1d(cache_dir=tmp_path, num_samples=500)
    np.testing.assert_array_equal(first.x_train, again.x_train)
    with np.load(files[0], allow_pickle=False) as f:  # plain arrays, no pickle
        assert set(f.files) == {"x", "y", "x_test", "y_test"}


def test_mnist1d_leaves_numpy_global_rng_alone(tmp_path):
    np.random.seed(123)  # noqa: NPY002
    expected = np.random.rand()  # noqa: NPY002
    np.random.seed(123)  # noqa: NPY002
    data.mnist1d(cache_dir=tmp_path, num_samples=200)
    assert np.random.rand() == expected  # noqa: NPY002


def test_loading_needs_no_network(tmp_path):
    """Every dataset loads in a process where sockets and requests raise."""
    code = f"""
import socket, requests
def no(*a, **k): raise RuntimeError("network used")
socket.socket.connect = no
socket.create_connection = no
requests.get = requests.post = requests.Session.request = no
import os
os.environ["RESODE_CACHE"] = {str(tmp_path)!r}
from resode import data
for name in data.list_datasets():
    data.load(name)
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_trajectory_sets_follow_their_equations():
    ho = data.load("harmonic_oscillator")
    energy = np.sum(ho.y_train**2, axis=-1)  # omega = 1: x^2 + v^2 is conserved
    np.testing.assert_allclose(energy, energy[:, :1].repeat(energy.shape[1], 1), rtol=1e-5)
    lv = data.load("lotka_volterra")
    a, b, c, d = 1.5, 1.0, 3.0, 1.0
    x, y = lv.y_train[..., 0].astype(np.float64), lv.y_train[..., 1].astype(np.float64)
    invariant = d * x - c * np.log(x) + b * y - a * np.log(y)  # conserved quantity
    np.testing.assert_allclose(invariant, invariant[:, :1].repeat(x.shape[1], 1), rtol=1e-4)
    stiff = data.load("stiff_linear")
    assert np.all(np.abs(stiff.y_train[:, -1]) < np.abs(stiff.y_train[:, 0]).max() + 1e-6)


def test_concentric_spheres_radii():
    ds = data.concentric_spheres(radii=(0.5, 1.0, 1.5), num_samples=400)
    r = np.linalg.norm(ds.x_train, axis=1)
    assert np.all(r[ds.y_train == 0] <= 0.5 + 1e-6)
    assert np.all((r[ds.y_train == 1] >= 1.0 - 1e-6) & (r[ds.y_train == 1] <= 1.5 + 1e-6))
    with pytest.raises(ValueError, match="radii"):
        data.concentric_spheres(radii=(1.0, 0.5, 2.0))


def test_crossing1d_targets():
    ds = data.load("crossing1d")
    np.testing.assert_array_equal(ds.y_train, -ds.x_train)
    assert set(np.unique(ds.x_train)) == {-1.0, 1.0}


def test_bad_names_and_options():
    with pytest.raises(ValueError, match="Unknown dataset 'cifar10'.*digits"):
        data.load("cifar10")
    with pytest.raises(TypeError, match="no option 'size'.*num_samples"):
        data.load("spirals", size=10)


def test_batch_indices_are_epochs_of_a_keyed_permutation():
    key = jax.random.PRNGKey(0)
    n, b = 10, 3
    per_epoch = n // b
    idx = jax.jit(lambda s: data.batch_indices(key, s, n, b))
    epoch0 = np.concatenate([np.asarray(idx(s)) for s in range(per_epoch)])
    assert len(set(epoch0.tolist())) == per_epoch * b  # no repeats within an epoch
    epoch1 = np.concatenate([np.asarray(idx(s)) for s in range(per_epoch, 2 * per_epoch)])
    assert not np.array_equal(epoch0, epoch1)  # a new order each epoch
    np.testing.assert_array_equal(idx(4), data.batch_indices(key, jnp.array(4), n, b))  # resumable
    assert not np.array_equal(idx(0), data.batch_indices(jax.random.PRNGKey(1), 0, n, b))
    with pytest.raises(ValueError, match="batch_size"):
        data.batch_indices(key, 0, 10, 11)
