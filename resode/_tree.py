"""Small pytree arithmetic used by the solvers and the Runge--Kutta engine (private)."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from ._custom_types import PyTree


def real_dtype(tree: PyTree) -> jnp.dtype:
    """The common real dtype of a pytree of floating/complex arrays (float32 for complex64...).

    Raises `TypeError` naming the offending leaf if any leaf is not floating or complex.
    """
    dtypes = []
    for path, leaf in jtu.tree_flatten_with_path(tree)[0]:
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise TypeError(
                f"State leaf y{jtu.keystr(path)} has dtype {dtype}; states must be floating or "
                "complex arrays."
            )
        dtypes.append(jnp.finfo(dtype).dtype)
    if not dtypes:
        raise ValueError("The state is an empty pytree; it needs at least one array leaf.")
    return jnp.result_type(*dtypes)


def sq_norm(tree: PyTree) -> jax.Array:
    """Squared 2-norm over all leaves (complex-aware), in the real dtype of the tree."""
    total = None
    for leaf in jtu.tree_leaves(tree):
        leaf = jnp.asarray(leaf)
        part = jnp.sum(jnp.real(leaf * jnp.conj(leaf)))
        total = part if total is None else total + part
    return total


def norm(tree: PyTree) -> jax.Array:
    return jnp.sqrt(sq_norm(tree))


def astype(tree: PyTree, dtype) -> PyTree:
    return jtu.tree_map(lambda x: jnp.asarray(x).astype(dtype), tree)


def all_finite(tree: PyTree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jtu.tree_leaves(tree)]
    return jnp.stack(leaves).all()


def where(pred, on_true: PyTree, on_false: PyTree) -> PyTree:
    return jtu.tree_map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def sub(a: PyTree, b: PyTree) -> PyTree:
    return jtu.tree_map(lambda x, y: x - y, a, b)


def add(a: PyTree, b: PyTree) -> PyTree:
    return jtu.tree_map(lambda x, y: x + y, a, b)


def axpy(alpha, x: PyTree, y: PyTree) -> PyTree:
    """alpha * x + y, leafwise, keeping each leaf's dtype."""
    return jtu.tree_map(lambda u, v: (alpha * u + v).astype(v.dtype), x, y)


def lincomb(y: PyTree, h, coeffs: Sequence[float], ks: Sequence[PyTree]) -> PyTree:
    """``y + h * sum_j coeffs[j] * ks[j]`` leafwise, skipping zero coefficients at trace time.

    `coeffs` are static Python/NumPy floats, so a tableau's zeros cost nothing. Each output leaf
    keeps the dtype of the corresponding leaf of `y`.
    """
    terms = [(float(c), k) for c, k in zip(coeffs, ks, strict=True) if c != 0]
    if not terms:
        return y

    # Fold h into the scalar coefficients: one array multiply per term, as in hand-written code.
    scaled = [h * c for c, _ in terms]

    def leaf(y_leaf, *k_leaves):
        acc = y_leaf
        for hc, k in zip(scaled, k_leaves, strict=True):
            acc = acc + hc * k
        return acc.astype(y_leaf.dtype)

    return jtu.tree_map(leaf, y, *[k for _, k in terms])


def matmul_stages(y: PyTree, h, a: np.ndarray, ks: PyTree) -> PyTree:
    """``y + h * (a @ ks)`` for stacked stages: `ks` leaves have a leading axis of size s.

    Returns stacked stage values (leading axis s); `y` is broadcast along it.
    """

    def leaf(y_leaf, k_leaf):
        mix = jnp.tensordot(jnp.asarray(a, dtype=k_leaf.dtype), k_leaf, axes=1)
        return (y_leaf[None] + h * mix).astype(y_leaf.dtype)

    return jtu.tree_map(leaf, y, ks)
