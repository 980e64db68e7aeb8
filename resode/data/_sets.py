"""The embedded datasets: made here or read from an installed package, never downloaded."""

import hashlib
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ._dataset import Dataset


def _split(x, y, test_fraction, seed, stratify):
    from sklearn.model_selection import train_test_split

    return train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y if stratify else None
    )


def digits(*, seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes), scaled to [0, 1].

    Inputs have shape ``(1, 8, 8)`` (a conv2d stem uses them as images; an mlp stem flattens).
    The split is stratified and fixed by `seed` (default: 1437 train, 360 test).
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]
    y = bunch.target.astype(np.int32)
    x_tr, x_te, y_tr, y_te = _split(x, y, test_fraction, seed, stratify=True)
    return Dataset(
        "digits", "classification", 10, x_tr, y_tr, x_te, y_te, digits.__doc__.split("\n")[0]
    )


def _cache_dir(cache_dir) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("RESODE_CACHE", Path.home() / ".cache" / "resode"))


def mnist1d(*, seed: int = 42, num_samples: int = 5000, cache_dir=None) -> Dataset:
    """MNIST-1D (Greydanus, 2020): 1-D signals of length 40, 10 classes, made locally.

    Generated with the `mnist1d` package's `make_dataset` (its download path is never used) and
    cached as a NumPy ``.npz`` file under `cache_dir` (default ``$RESODE_CACHE`` or
    ``~/.cache/resode``). Inputs have shape ``(1, 40)``; the package's own 80/20 split.
    """
    args_key = f"mnist1d-seed{seed}-n{num_samples}"
    path = _cache_dir(cache_dir) / f"{args_key}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in ("x", "y", "x_test", "y_test")}
    else:
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.seed, args.num_samples = seed, num_samples
        state = np.random.get_state()  # noqa: NPY002  (make_dataset reseeds the global RNG)
        try:
            data = make_dataset(args)
        finally:
            np.random.set_state(state)  # noqa: NPY002
        arrays = {k: np.asarray(data[k]) for k in ("x", "y", "x_test", "y_test")}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)  # atomic: a concurrent or killed run never sees half a file
    f32 = lambda a: a.astype(np.float32)[:, None]
    return Dataset(
        "mnist1d",
        "classification",
        10,
        f32(arrays["x"]),
        arrays["y"].astype(np.int32),
        f32(arrays["x_test"]),
        arrays["y_test"].astype(np.int32),
        "MNIST-1D: 1-D signals of length 40, 10 classes",
    )


def spirals(
    *, num_samples: int = 1000, noise: float = 0.05, turns: float = 1.5, seed: int = 0
) -> Dataset:
    """Two interleaved 2-D spirals, one per class (a classic test of nonlinear separation)."""
    rng = np.random.default_rng(seed)
    n = num_samples // 2
    r = np.sqrt(rng.uniform(0.05, 1.0, n))
    theta = 2 * np.pi * turns * r
    arm = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)
    x = np.concatenate([arm, -arm]) + noise * rng.normal(size=(2 * n, 2))
    y = np.concatenate([np.zeros(n), np.ones(n)]).astype(np.int32)
    x_tr, x_te, y_tr, y_te = _split(x.astype(np.float32), y, 0.2, seed, stratify=True)
    return Dataset(
        "spirals", "classification", 2, x_tr, y_tr, x_te, y_te, "two interleaved 2-D spirals"
    )


def concentric_spheres(
    *, num_samples: int = 1000, dim: int = 2, radii=(0.5, 1.0, 1.5), seed: int = 0
) -> Dataset:
    """Augmented neural ODEs' g: class 0 inside the ball ``|x| <= r1``, class 1 in the shell
    ``r2 <= |x| <= r3`` (Dupont et al., 2019). A neural ODE in `dim` dimensions cannot separate
    them without augmentation; half the points per class."""
    r1, r2, r3 = radii
    if not 0 < r1 < r2 < r3:
        raise ValueError(f"concentric_spheres: radii must satisfy 0 < r1 < r2 < r3, got {radii}.")
    rng = np.random.default_rng(seed)
    n = num_samples // 2

    def shell(lo, hi, count):
        d = rng.normal(size=(count, dim))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        # Uniform in volume between radii lo and hi.
        u = rng.uniform(lo**dim, hi**dim, count) ** (1.0 / dim)
        return d * u[:, None]

    x = np.concatenate([shell(0.0, r1, n), shell(r2, r3, n)]).astype(np.float32)
    y = np.concatenate([np.zeros(n), np.ones(n)]).astype(np.int32)
    x_tr, x_te, y_tr, y_te = _split(x, y, 0.2, seed, stratify=True)
    return Dataset(
        "concentric_spheres",
        "classification",
        2,
        x_tr,
        y_tr,
        x_te,
        y_te,
        concentric_spheres.__doc__.split("\n")[0],
    )


def crossing1d(*, num_samples: int = 200, seed: int = 0) -> Dataset:
    """The 1-D map g(-1) = 1, g(1) = -1: a regression that no 1-D neural ODE can fit, because its
    trajectories would have to cross (Dupont et al., 2019). Inputs are -1 or 1, targets -x."""
    rng = np.random.default_rng(seed)
    x = rng.choice(np.array([-1.0, 1.0], np.float32), size=(num_samples, 1))
    y = -x
    n_test = num_samples // 5
    return Dataset(
        "crossing1d",
        "regression",
        0,
        x[n_test:],
        y[n_test:],
        x[:n_test],
        y[:n_test],
        "g(-1) = 1, g(1) = -1",
    )


# --- ODE trajectory sets -----------------------------------------------------------------------


def _trajectories(f, y0s, t1, num_times, substeps, scheme="rk4"):
    from ..stepping import integrate

    def one(y0):
        _, ys = integrate(
            lambda t, y, a: f(y),
            y0,
            0.0,
            t1,
            (num_times - 1) * substeps,
            scheme=scheme,
            save_trajectory=True,
        )
        return ys[::substeps]

    return np.asarray(jax.jit(jax.vmap(one))(jnp.asarray(y0s)))


def _dynamics(name, description, y0s, trajs, ts, seed):
    n_test = len(y0s) // 5
    return Dataset(
        name,
        "dynamics",
        0,
        y0s[n_test:].astype(np.float32),
        trajs[n_test:].astype(np.float32),
        y0s[:n_test].astype(np.float32),
        trajs[:n_test].astype(np.float32),
        description,
        ts=ts.astype(np.float32),
    )


def harmonic_oscillator(
    *,
    num_samples: int = 256,
    num_times: int = 50,
    t1: float = 10.0,
    omega: float = 1.0,
    seed: int = 0,
) -> Dataset:
    """x'' = -omega^2 x as (x, v); exact solution (a rotation). Initial states ~ N(0, I)."""
    rng = np.random.default_rng(seed)
    y0s = rng.normal(size=(num_samples, 2))
    ts = np.linspace(0.0, t1, num_times)
    c, s = np.cos(omega * ts), np.sin(omega * ts)
    x = y0s[:, None, 0] * c + y0s[:, None, 1] / omega * s
    v = -y0s[:, None, 0] * omega * s + y0s[:, None, 1] * c
    return _dynamics(
        "harmonic_oscillator",
        harmonic_oscillator.__doc__.split("\n")[0],
        y0s,
        np.stack([x, v], -1),
        ts,
        seed,
    )


def lotka_volterra(
    *,
    num_samples: int = 256,
    num_times: int = 50,
    t1: float = 15.0,
    params=(1.5, 1.0, 3.0, 1.0),
    seed: int = 0,
) -> Dataset:
    """Predator-prey: x' = a x - b x y, y' = -c y + d x y; initial states ~ U(0.5, 3)^2.

    Trajectories from resode's RK4 with 40 substeps per observation interval."""
    a, b, c, d = params
    rng = np.random.default_rng(seed)
    y0s = rng.uniform(0.5, 3.0, size=(num_samples, 2))
    f = lambda y: jnp.stack([a * y[0] - b * y[0] * y[1], -c * y[1] + d * y[0] * y[1]])
    ts = np.linspace(0.0, t1, num_times)
    return _dynamics(
        "lotka_volterra",
        lotka_volterra.__doc__.split("\n")[0],
        y0s,
        _trajectories(f, y0s, t1, num_times, 40),
        ts,
        seed,
    )


def van_der_pol(
    *, num_samples: int = 256, num_times: int = 50, t1: float = 10.0, mu: float = 1.0, seed: int = 0
) -> Dataset:
    """x'' = mu (1 - x^2) x' - x as (x, v); initial states ~ U(-2, 2)^2 (RK4, 40 substeps)."""
    rng = np.random.default_rng(seed)
    y0s = rng.uniform(-2.0, 2.0, size=(num_samples, 2))
    f = lambda y: jnp.stack([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])
    ts = np.linspace(0.0, t1, num_times)
    return _dynamics(
        "van_der_pol",
        van_der_pol.__doc__.split("\n")[0],
        y0s,
        _trajectories(f, y0s, t1, num_times, 40),
        ts,
        seed,
    )


def stiff_linear(
    *,
    num_samples: int = 256,
    num_times: int = 50,
    t1: float = 1.0,
    stiffness: float = 1000.0,
    seed: int = 0,
) -> Dataset:
    """y' = A y, eigenvalues -1 and -`stiffness` (a rotated diagonal); exact: expm(A t) y0.

    Explicit schemes need h < 2 / stiffness to stay stable on it; implicit ones do not."""
    rng = np.random.default_rng(seed)
    theta = np.pi / 6
    Q = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    A = Q @ np.diag([-1.0, -stiffness]) @ Q.T
    y0s = rng.normal(size=(num_samples, 2))
    ts = np.linspace(0.0, t1, num_times)
    import scipy.linalg  # here, not at import: it costs 0.08 s of every start-up

    trajs = np.stack([y0s @ scipy.linalg.expm(A * t).T for t in ts], axis=1)
    return _dynamics("stiff_linear", stiff_linear.__doc__.split("\n")[0], y0s, trajs, ts, seed)


def _node_split(labels, num_classes, per_class, seed):
    """(y_train, y_test) of one graph: `per_class` labelled training nodes per class (drawn by
    `seed`), every other node a test node; -1 marks nodes outside a split."""
    rng = np.random.default_rng(seed)
    train = np.zeros(labels.shape[0], bool)
    for c in range(num_classes):
        nodes = np.flatnonzero(labels == c)
        train[rng.choice(nodes, size=min(per_class, nodes.size - 1), replace=False)] = True
    y_train = np.where(train, labels, -1).astype(np.int32)[None]
    y_test = np.where(train, -1, labels).astype(np.int32)[None]
    return y_train, y_test


def sbm(
    *,
    num_nodes: int = 300,
    num_classes: int = 3,
    p_in: float = 0.05,
    p_out: float = 0.005,
    num_features: int = 16,
    signal: float = 0.5,
    per_class: int = 10,
    seed: int = 0,
) -> Dataset:
    """A stochastic block model: node classification on one graph made locally.

    `num_nodes` nodes in `num_classes` equal blocks; an edge joins two nodes with probability
    `p_in` inside a block and `p_out` across. Features: a class mean of norm `signal` (random
    direction per class) plus standard normal noise in `num_features` dimensions, so features
    alone classify poorly and the graph helps. `per_class` labelled training nodes per class, the
    rest are test nodes. Inputs ``(1, num_nodes, num_features)``; see `Dataset.adjacency`.
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(num_nodes) % num_classes
    rng.shuffle(labels)
    same = labels[:, None] == labels[None, :]
    upper = np.triu(rng.random((num_nodes, num_nodes)) < np.where(same, p_in, p_out), 1)
    adjacency = (upper | upper.T).astype(np.float32)
    means = rng.normal(size=(num_classes, num_features))
    means *= signal / np.linalg.norm(means, axis=1, keepdims=True)
    x = (means[labels] + rng.normal(size=(num_nodes, num_features))).astype(np.float32)[None]
    y_train, y_test = _node_split(labels, num_classes, per_class, seed)
    return Dataset(
        "sbm", "classification", num_classes, x, y_train, x.copy(), y_test,
        sbm.__doc__.split("\n")[0], adjacency=adjacency,
    )  # fmt: skip


# Zachary's karate club (Zachary, "An information flow model for conflict and fission in small
# groups", J. Anthropological Research 33, 1977): 34 members, 78 friendships, node numbering and
# club split as in networkx's karate_club_graph.
_KARATE_EDGES = {
    0: (1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 17, 19, 21, 31),
    1: (2, 3, 7, 13, 17, 19, 21, 30),
    2: (3, 7, 8, 9, 13, 27, 28, 32),
    3: (7, 12, 13),
    4: (6, 10),
    5: (6, 10, 16),
    6: (16,),
    8: (30, 32, 33),
    9: (33,),
    13: (33,),
    14: (32, 33),
    15: (32, 33),
    18: (32, 33),
    19: (33,),
    20: (32, 33),
    22: (32, 33),
    23: (25, 27, 29, 32, 33),
    24: (25, 27, 31),
    25: (31,),
    26: (29, 33),
    27: (33,),
    28: (31, 33),
    29: (32, 33),
    30: (32, 33),
    31: (32, 33),
    32: (33,),
}
_KARATE_MR_HI = (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 16, 17, 19, 21)


def karate(*, per_class: int = 2, seed: int = 0) -> Dataset:
    """Zachary's karate club (1977): 34 members, 78 friendships, 2 classes (the club each joined).

    A real graph, embedded (the edge list and split of networkx's `karate_club_graph`). No node
    attributes: the features are one-hot node identities (34). `per_class` labelled training
    members per class (drawn by `seed`), the rest are test nodes. See `Dataset.adjacency`.
    """
    adjacency = np.zeros((34, 34), np.float32)
    for a, others in _KARATE_EDGES.items():
        adjacency[a, list(others)] = 1.0
    adjacency = np.maximum(adjacency, adjacency.T)
    labels = np.ones(34, np.int64)
    labels[list(_KARATE_MR_HI)] = 0
    x = np.eye(34, dtype=np.float32)[None]
    y_train, y_test = _node_split(labels, 2, per_class, seed)
    return Dataset(
        "karate", "classification", 2, x, y_train, x.copy(), y_test,
        karate.__doc__.split("\n")[0], adjacency=adjacency,
    )  # fmt: skip


def retrieval(
    *,
    num_pairs: int = 4,
    num_keys: int = 8,
    num_values: int = 8,
    num_samples: int = 3000,
    seed: int = 0,
) -> Dataset:
    """Associative recall (a sequence task that needs attention): key-value pairs, then a query.

    Each sequence holds `num_pairs` (key, value) pairs and then a query key; the label is the
    value paired with the query.

    Keys are distinct draws from `num_keys`, values from `num_values`; tokens are one-hot over the
    ``num_keys + num_values`` symbols, so an input is ``(2 num_pairs + 1, num_keys + num_values)``
    (the sequence axis first, as [`resode.nn.AttentionField`][] takes it). 80/20 split.
    """
    rng = np.random.default_rng(seed)
    vocab = num_keys + num_values
    keys = np.argsort(rng.random((num_samples, num_keys)), axis=1)[:, :num_pairs]
    values = rng.integers(0, num_values, (num_samples, num_pairs))
    which = rng.integers(0, num_pairs, num_samples)
    tokens = np.empty((num_samples, 2 * num_pairs + 1), np.int64)
    tokens[:, 0:-1:2] = keys
    tokens[:, 1:-1:2] = num_keys + values
    tokens[:, -1] = keys[np.arange(num_samples), which]
    x = np.eye(vocab, dtype=np.float32)[tokens]
    y = values[np.arange(num_samples), which].astype(np.int32)
    n_train = int(0.8 * num_samples)
    return Dataset(
        "retrieval", "classification", num_values, x[:n_train], y[:n_train], x[n_train:],
        y[n_train:], retrieval.__doc__.split("\n")[0].rstrip(","),
    )  # fmt: skip


SHAPE_CLASSES = ("background", "disc", "square", "triangle")
"""The pixel classes of the [`shapes`][] segmentation set, in label order."""


def shapes(
    *,
    size: int = 24,
    num_samples: int = 1500,
    max_shapes: int = 3,
    noise: float = 0.3,
    seed: int = 0,
) -> Dataset:
    """Noisy images of discs, squares and triangles with per-pixel labels (dense prediction).

    Each ``(1, size, size)`` image holds 1 to `max_shapes` filled shapes of random kind, centre
    and radius (2 to ``size / 5`` pixels), all of brightness 1 on a 0 background, plus Gaussian
    noise of standard deviation `noise`; a later shape covers an earlier one. The label of a pixel
    is the kind of shape covering it (``SHAPE_CLASSES``: 0 background, 1 disc, 2 square,
    3 triangle), so `y` has shape ``(examples, size, size)`` (int32): telling a pixel's class
    needs the shape around it (context), placing the boundary needs the pixel itself (detail).
    80/20 split. Train with a ``unet`` stem (per-pixel logits; accuracy is per pixel) and score
    with [`resode.analysis.segmentation_iou`][].
    """
    if size < 8:
        raise ValueError(f"shapes: `size` must be >= 8, got {size}.")
    if max_shapes < 1:
        raise ValueError(f"shapes: `max_shapes` must be >= 1, got {max_shapes}.")
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    labels = np.zeros((num_samples, size, size), np.int32)
    r_max = max(3, size // 5)
    for n in range(num_samples):
        for _ in range(rng.integers(1, max_shapes + 1)):
            kind = int(rng.integers(1, 4))
            r = rng.uniform(2.0, r_max)
            cy, cx = rng.uniform(r, size - 1 - r, 2)
            if kind == 1:
                inside = (rows - cy) ** 2 + (cols - cx) ** 2 <= r * r
            elif kind == 2:
                inside = (np.abs(rows - cy) <= r * 0.85) & (np.abs(cols - cx) <= r * 0.85)
            else:  # apex up, base at cy + r
                depth = rows - (cy - r)
                inside = (depth >= 0) & (rows <= cy + r) & (np.abs(cols - cx) <= 0.6 * depth)
            labels[n][inside] = kind
    clean = (labels > 0).astype(np.float32)
    x = (clean + noise * rng.standard_normal(clean.shape).astype(np.float32))[:, None]
    n_train = int(0.8 * num_samples)
    return Dataset(
        "shapes", "classification", len(SHAPE_CLASSES), x[:n_train], labels[:n_train],
        x[n_train:], labels[n_train:], shapes.__doc__.split("\n")[0],
    )  # fmt: skip


DATASETS = {
    "digits": digits,
    "mnist1d": mnist1d,
    "spirals": spirals,
    "concentric_spheres": concentric_spheres,
    "crossing1d": crossing1d,
    "harmonic_oscillator": harmonic_oscillator,
    "lotka_volterra": lotka_volterra,
    "van_der_pol": van_der_pol,
    "stiff_linear": stiff_linear,
    "sbm": sbm,
    "karate": karate,
    "retrieval": retrieval,
    "shapes": shapes,
}
"""Dataset names mapped to the functions that make them."""


def list_datasets() -> tuple[str, ...]:
    """The names [`load`][] accepts."""
    return tuple(DATASETS)


def load(name: str, **options) -> Dataset:
    """Load (make) a dataset by name; `options` go to its maker (e.g. ``seed``, ``num_samples``).

    Raises `ValueError` naming the valid datasets for an unknown name, and `TypeError` naming the
    accepted options for an unknown option.
    """
    try:
        maker = DATASETS[name]
    except KeyError:
        raise ValueError(f"Unknown dataset {name!r}. Valid: {', '.join(DATASETS)}.") from None
    import inspect

    accepted = [p for p in inspect.signature(maker).parameters]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(
            f"Dataset {name!r} has no option {unknown[0]!r}; its options: {', '.join(accepted)}."
        )
    return maker(**options)


def fingerprint(dataset: Dataset) -> str:
    """A short hash of a dataset's arrays (to record in a run, or to check determinism)."""
    h = hashlib.sha256()
    arrays = [dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test]
    if dataset.adjacency is not None:
        arrays.append(dataset.adjacency)
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]
