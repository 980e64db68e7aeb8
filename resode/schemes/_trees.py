"""Rooted trees and the Runge--Kutta order conditions (Butcher's theory).

A tableau has order p exactly when ``b . Phi(t) == 1 / gamma(t)`` for every rooted tree ``t`` with
at most p vertices, where ``Phi`` is the elementary weight and ``gamma`` the tree's density.
"""

import functools

import numpy as np

# A rooted tree is the sorted tuple of its children's trees; the single vertex is ().
Tree = tuple


def _canonical(children) -> Tree:
    return tuple(sorted(children))


def _add_leaf_everywhere(tree: Tree) -> set[Tree]:
    """All trees obtained from `tree` by attaching one new leaf to any one vertex."""
    out = {_canonical(tree + ((),))}
    for i, child in enumerate(tree):
        for grown in _add_leaf_everywhere(child):
            out.add(_canonical(tree[:i] + (grown,) + tree[i + 1 :]))
    return out


@functools.cache
def rooted_trees(order: int) -> tuple[Tree, ...]:
    """All rooted trees with exactly `order` vertices (1, 1, 2, 4, 9, 20, ... of them)."""
    if order < 1:
        raise ValueError(f"rooted_trees: order must be >= 1, got {order}.")
    if order == 1:
        return ((),)
    grown: set[Tree] = set()
    for tree in rooted_trees(order - 1):
        grown |= _add_leaf_everywhere(tree)
    return tuple(sorted(grown))


def tree_order(tree: Tree) -> int:
    return 1 + sum(tree_order(child) for child in tree)


def tree_density(tree: Tree) -> int:
    """gamma(t) = |t| * prod over children of gamma(child)."""
    out = tree_order(tree)
    for child in tree:
        out *= tree_density(child)
    return out


def _stage_weights(a: np.ndarray, tree: Tree) -> np.ndarray:
    """The vector g(t) with g(leaf) = 1 and g([t1..tm]) = prod_i (a @ g(t_i))."""
    out = np.ones(a.shape[0])
    for child in tree:
        out = out * (a @ _stage_weights(a, child))
    return out


def order_condition_residuals(tableau, order: int) -> dict[Tree, float]:
    """``b . Phi(t) - 1/gamma(t)`` for every tree with exactly `order` vertices."""
    return {
        tree: float(tableau.b @ _stage_weights(tableau.a, tree) - 1.0 / tree_density(tree))
        for tree in rooted_trees(order)
    }


def measured_order(tableau, max_order: int = 8, atol: float = 1e-10) -> int:
    """The largest p <= `max_order` such that every order condition up to p holds."""
    p = 0
    for q in range(1, max_order + 1):
        if max(abs(r) for r in order_condition_residuals(tableau, q).values()) > atol:
            break
        p = q
    return p
