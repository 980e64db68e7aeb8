"""resode: residual networks as ODE solvers, in JAX.

The public API is what this module re-exports. `resode.schemes`, `resode.solvers` and
`resode.stepping` are pure functions on pytrees with no dependency on any neural-network code.
"""

from . import nn
from .schemes import ButcherTableau, Scheme, get_scheme, list_schemes, stability_function
from .solvers import (
    JFB,
    AbstractAdjoint,
    AbstractFixedPointSolver,
    Anderson,
    BackwardStats,
    Broyden,
    FixedPointSolution,
    ImplicitAdjoint,
    Newton,
    Phantom,
    Picard,
    Unrolled,
    backward_probe,
    fixed_point,
)
from .stepping import StepStats, integrate, step

__version__ = "0.1.0"

__all__ = [
    "JFB",
    "AbstractAdjoint",
    "AbstractFixedPointSolver",
    "Anderson",
    "BackwardStats",
    "Broyden",
    "ButcherTableau",
    "FixedPointSolution",
    "ImplicitAdjoint",
    "Newton",
    "Phantom",
    "Picard",
    "Scheme",
    "StepStats",
    "Unrolled",
    "backward_probe",
    "fixed_point",
    "get_scheme",
    "integrate",
    "list_schemes",
    "nn",
    "stability_function",
    "step",
]
