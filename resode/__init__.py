"""resode: residual networks as ODE solvers, in JAX.

The public API is what this module re-exports. `resode.schemes`, `resode.solvers` and
`resode.stepping` are pure functions on pytrees with no dependency on any neural-network code.
"""

from . import nn, robust
from .schemes import ButcherTableau, Scheme, get_scheme, list_schemes, stability_function
from .solvers import (
    JFB,
    AbstractAdjoint,
    AbstractFixedPointSolver,
    AbstractMonotoneLinear,
    AbstractSplitting,
    Anderson,
    BackwardStats,
    Broyden,
    ConvMonotone,
    DenseMonotone,
    FixedPointSolution,
    ForwardBackward,
    ImplicitAdjoint,
    Newton,
    PeacemanRachford,
    Phantom,
    Picard,
    Unrolled,
    backward_probe,
    fixed_point,
    monotone_fixed_point,
)
from .stepping import (
    AbstractReversibleMethod,
    Leapfrog,
    Momentum,
    ReverseStep,
    ReversibleHeun,
    StepStats,
    integrate,
    reversible_integrate,
    reversible_rebuild,
    step,
)

__version__ = "0.1.0"

__all__ = [
    "JFB",
    "AbstractAdjoint",
    "AbstractFixedPointSolver",
    "AbstractMonotoneLinear",
    "AbstractReversibleMethod",
    "AbstractSplitting",
    "Anderson",
    "BackwardStats",
    "Broyden",
    "ButcherTableau",
    "ConvMonotone",
    "DenseMonotone",
    "FixedPointSolution",
    "ForwardBackward",
    "ImplicitAdjoint",
    "Leapfrog",
    "Momentum",
    "Newton",
    "PeacemanRachford",
    "Phantom",
    "Picard",
    "ReverseStep",
    "ReversibleHeun",
    "Scheme",
    "StepStats",
    "Unrolled",
    "backward_probe",
    "fixed_point",
    "get_scheme",
    "integrate",
    "list_schemes",
    "monotone_fixed_point",
    "nn",
    "robust",
    "reversible_integrate",
    "reversible_rebuild",
    "stability_function",
    "step",
]
