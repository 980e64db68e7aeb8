"""Named Runge--Kutta schemes: a validated tableau plus its order, nothing else."""

import dataclasses
import math

from numpy.typing import ArrayLike

from ._tableau import ButcherTableau
from ._trees import measured_order


@dataclasses.dataclass(frozen=True, eq=False)
class Scheme:
    """A Runge--Kutta scheme: a name, a [`ButcherTableau`][] and its order of accuracy.

    **Arguments:**

    - `name`: a label (used in error messages and reports).
    - `tableau`: the coefficients.
    - `order`: the classical order. If omitted it is measured from the rooted-tree order
      conditions (up to order 8). If given, the order conditions up to it are checked, so a typo in
      a user's tableau is caught here rather than as a silently less accurate solve.

    `implicit` is true when any stage depends on itself or a later stage.
    """

    name: str
    tableau: ButcherTableau
    order: int

    def __init__(self, name: str, tableau: ButcherTableau, order: int | None = None):
        if not isinstance(tableau, ButcherTableau):
            raise TypeError(
                f"Scheme {name!r}: `tableau` must be a ButcherTableau, got {type(tableau)}."
            )
        measured = measured_order(tableau)
        if order is None:
            order = measured
        if not isinstance(order, int) or order < 1:
            raise ValueError(f"Scheme {name!r}: `order` must be an integer >= 1, got {order!r}.")
        if measured < order:
            raise ValueError(
                f"Scheme {name!r}: declared order {order}, but the tableau satisfies the order "
                f"conditions only up to order {measured}."
            )
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "tableau", tableau)
        object.__setattr__(self, "order", order)

    @property
    def implicit(self) -> bool:
        return self.tableau.implicit

    @classmethod
    def from_tableau(
        cls,
        a: ArrayLike,
        b: ArrayLike,
        c: ArrayLike | None = None,
        *,
        order: int | None = None,
        name: str = "custom",
    ) -> "Scheme":
        """Build a scheme from a user's own coefficients (validated; order measured if omitted)."""
        return cls(name, ButcherTableau(a, b, c), order)


_G = 1.0 - 1.0 / math.sqrt(2.0)  # SDIRK2's gamma: L-stable and stiffly accurate.
_S3 = math.sqrt(3.0) / 6.0

_SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in (
        Scheme("euler", ButcherTableau([[0.0]], [1.0]), 1),
        Scheme("midpoint", ButcherTableau([[0, 0], [1 / 2, 0]], [0, 1]), 2),
        Scheme("heun", ButcherTableau([[0, 0], [1, 0]], [1 / 2, 1 / 2]), 2),
        Scheme("ralston", ButcherTableau([[0, 0], [2 / 3, 0]], [1 / 4, 3 / 4]), 2),
        Scheme(
            "kutta3",
            ButcherTableau([[0, 0, 0], [1 / 2, 0, 0], [-1, 2, 0]], [1 / 6, 2 / 3, 1 / 6]),
            3,
        ),
        Scheme(
            "ssprk3",
            ButcherTableau([[0, 0, 0], [1, 0, 0], [1 / 4, 1 / 4, 0]], [1 / 6, 1 / 6, 2 / 3]),
            3,
        ),
        Scheme(
            "rk4",
            ButcherTableau(
                [[0, 0, 0, 0], [1 / 2, 0, 0, 0], [0, 1 / 2, 0, 0], [0, 0, 1, 0]],
                [1 / 6, 1 / 3, 1 / 3, 1 / 6],
            ),
            4,
        ),
        Scheme(
            "rk38",
            ButcherTableau(
                [[0, 0, 0, 0], [1 / 3, 0, 0, 0], [-1 / 3, 1, 0, 0], [1, -1, 1, 0]],
                [1 / 8, 3 / 8, 3 / 8, 1 / 8],
            ),
            4,
        ),
        Scheme("backward_euler", ButcherTableau([[1.0]], [1.0]), 1),
        Scheme("trapezoid", ButcherTableau([[0, 0], [1 / 2, 1 / 2]], [1 / 2, 1 / 2]), 2),
        Scheme("implicit_midpoint", ButcherTableau([[1 / 2]], [1.0]), 2),
        Scheme("sdirk2", ButcherTableau([[_G, 0], [1 - _G, _G]], [1 - _G, _G]), 2),
        Scheme(
            "gauss_legendre4",
            ButcherTableau([[1 / 4, 1 / 4 - _S3], [1 / 4 + _S3, 1 / 4]], [1 / 2, 1 / 2]),
            4,
        ),
        Scheme(
            "radau_iia3", ButcherTableau([[5 / 12, -1 / 12], [3 / 4, 1 / 4]], [3 / 4, 1 / 4]), 3
        ),
    )
}


def list_schemes() -> tuple[str, ...]:
    """The names accepted by [`get_scheme`][] (and by every `scheme=` argument)."""
    return tuple(_SCHEMES)


def get_scheme(name: "str | Scheme | ButcherTableau") -> Scheme:
    """Look up a named scheme.

    A [`Scheme`][] is returned as it is, and a bare [`ButcherTableau`][] is wrapped with its
    measured order, so every `scheme=` argument in resode accepts all three.

    Raises `ValueError` naming the valid schemes when `name` is unknown.
    """
    if isinstance(name, Scheme):
        return name
    if isinstance(name, ButcherTableau):
        return Scheme("custom", name)
    if not isinstance(name, str):
        raise TypeError(
            f"scheme must be a name, a Scheme or a ButcherTableau, got {type(name).__name__}."
        )
    try:
        return _SCHEMES[name]
    except KeyError:
        raise ValueError(
            f"Unknown scheme {name!r}. Valid schemes: {', '.join(list_schemes())}."
        ) from None
