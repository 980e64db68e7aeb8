"""Fixed-step Runge--Kutta stepping on pytrees: `step`, `integrate` and their `StepStats`;
reversible stepping (`reversible_integrate`) whose backward pass rebuilds the states."""

from ._integrate import integrate, step
from ._reversible import (
    ADJOINTS,
    REVERSIBLE_METHODS,
    AbstractReversibleMethod,
    Leapfrog,
    Momentum,
    ReverseStep,
    ReversibleHeun,
    resolve_method,
    reversible_integrate,
    reversible_rebuild,
)
from ._stats import StepStats

__all__ = [
    "ADJOINTS",
    "REVERSIBLE_METHODS",
    "AbstractReversibleMethod",
    "Leapfrog",
    "Momentum",
    "ReverseStep",
    "ReversibleHeun",
    "StepStats",
    "integrate",
    "resolve_method",
    "reversible_integrate",
    "reversible_rebuild",
    "step",
]
