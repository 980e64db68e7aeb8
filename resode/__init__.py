"""resode: residual networks as ODE solvers, in JAX.

The public API is what this module re-exports. `resode.schemes`, `resode.fixed_point` and
`resode.stepping` are pure functions on pytrees with no dependency on any neural-network code.
"""

from .fixed_point import (
    AbstractAdjoint,
    AbstractFixedPointSolver,
    FixedPointSolution,
    ImplicitAdjoint,
    Newton,
    Picard,
)
from .schemes import ButcherTableau, Scheme, get_scheme, list_schemes, stability_function
from .stepping import StepStats, integrate, step

__version__ = "0.1.0"

__all__ = [
    "AbstractAdjoint",
    "AbstractFixedPointSolver",
    "ButcherTableau",
    "FixedPointSolution",
    "ImplicitAdjoint",
    "Newton",
    "Picard",
    "Scheme",
    "StepStats",
    "get_scheme",
    "integrate",
    "list_schemes",
    "stability_function",
    "step",
]
