"""Butcher tableaux, named schemes, order conditions and stability functions (static NumPy)."""

from ._scheme import Scheme, get_scheme, list_schemes
from ._stability import stability_function
from ._tableau import ButcherTableau
from ._trees import measured_order, order_condition_residuals, rooted_trees

__all__ = [
    "ButcherTableau",
    "Scheme",
    "get_scheme",
    "list_schemes",
    "measured_order",
    "order_condition_residuals",
    "rooted_trees",
    "stability_function",
]
