"""The Butcher tableau: static NumPy data, validated on construction."""

import dataclasses

import numpy as np
from numpy.typing import ArrayLike

_ATOL = 1e-12


def _frozen(x: ArrayLike, name: str, ndim: int) -> np.ndarray:
    arr = np.array(x, dtype=np.float64)
    if arr.ndim != ndim:
        raise ValueError(f"ButcherTableau: `{name}` must be {ndim}-D, got shape {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"ButcherTableau: `{name}` has non-finite entries: {arr}.")
    arr.setflags(write=False)
    return arr


@dataclasses.dataclass(frozen=True, eq=False)
class ButcherTableau:
    """Coefficients of an s-stage Runge--Kutta method.

    The stages are ``Y_i = y + h * sum_j a[i, j] * f(t + c[j] h, Y_j)`` and the step is
    ``y_next = y + h * sum_i b[i] * f(t + c[i] h, Y_i)``.

    This is static data (float64 NumPy arrays, read-only), not a pytree node: it is hashable by
    identity and is closed over by the stepping code, so that zero coefficients are skipped at
    trace time. Construction checks that the shapes agree, that ``sum(b) == 1`` (consistency) and
    that the row sums of ``a`` equal ``c``.

    **Arguments:**

    - `a`: the ``(s, s)`` stage matrix.
    - `b`: the ``(s,)`` weights.
    - `c`: the ``(s,)`` nodes. If omitted, the row sums of ``a``.
    """

    a: np.ndarray
    b: np.ndarray
    c: np.ndarray

    def __init__(self, a: ArrayLike, b: ArrayLike, c: ArrayLike | None = None):
        a_ = _frozen(a, "a", 2)
        b_ = _frozen(b, "b", 1)
        s = b_.shape[0]
        if s == 0:
            raise ValueError("ButcherTableau: needs at least one stage.")
        if a_.shape != (s, s):
            raise ValueError(
                f"ButcherTableau: `a` must have shape ({s}, {s}) to match `b`, got {a_.shape}."
            )
        c_ = _frozen(a_.sum(axis=1) if c is None else c, "c", 1)
        if c_.shape != (s,):
            raise ValueError(
                f"ButcherTableau: `c` must have shape ({s},) to match `b`, got {c_.shape}."
            )
        if abs(b_.sum() - 1.0) > _ATOL:
            raise ValueError(f"ButcherTableau: the weights `b` must sum to 1, got {b_.sum()!r}.")
        rows = a_.sum(axis=1)
        if not np.allclose(rows, c_, rtol=0.0, atol=_ATOL):
            raise ValueError(f"ButcherTableau: the row sums of `a` ({rows}) must equal `c` ({c_}).")
        object.__setattr__(self, "a", a_)
        object.__setattr__(self, "b", b_)
        object.__setattr__(self, "c", c_)

    @property
    def num_stages(self) -> int:
        return self.b.shape[0]

    @property
    def explicit(self) -> bool:
        """Strictly lower triangular ``a``: every stage is an explicit formula."""
        return bool(np.all(np.triu(self.a) == 0))

    @property
    def diagonally_implicit(self) -> bool:
        """Lower triangular ``a`` with some nonzero diagonal: stages are solved one at a time."""
        return bool(np.all(np.triu(self.a, 1) == 0)) and not self.explicit

    @property
    def implicit(self) -> bool:
        return not self.explicit

    @property
    def algebraically_stable(self) -> bool:
        """``b >= 0`` and ``M = diag(b) a + aᵀ diag(b) - b bᵀ`` positive semi-definite (Burrage &
        Butcher 1979): the scheme is B-stable, so a step is non-expansive, ``|y'_1 - y'_2| <=
        |y_1 - y_2|``, for every step size and every field with ``<f(a) - f(b), a - b> <= 0``
        (backward Euler, Gauss and Radau IIA are; the trapezoid rule and explicit schemes are
        not)."""
        if np.any(self.b < -_ATOL):
            return False
        bm = np.diag(self.b) @ self.a
        m = bm + bm.T - np.outer(self.b, self.b)
        return bool(np.min(np.linalg.eigvalsh(m)) >= -1e-12)

    @property
    def stiffly_accurate(self) -> bool:
        """``b`` equals the last row of ``a``: the last stage value is the step's result."""
        return bool(np.array_equal(self.b, self.a[-1]))

    def __repr__(self) -> str:
        return f"ButcherTableau(a={self.a.tolist()}, b={self.b.tolist()}, c={self.c.tolist()})"
