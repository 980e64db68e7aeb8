"""Fixed-point solvers, adjoints, the implicit-differentiation primitive and `fixed_point`.

These sit below `resode.stepping`: an implicit Runge--Kutta stage is a fixed point, solved and
differentiated by the same machinery as a deep-equilibrium layer.
"""

from ._adjoint import (
    JFB,
    AbstractAdjoint,
    BackwardStats,
    ImplicitAdjoint,
    Phantom,
    Unrolled,
    backward_probe,
    solve_fixed_point,
)
from ._fixed_point import ADJOINTS, SOLVERS, fixed_point, resolve_adjoint, resolve_solver
from ._iterate import default_tol, iterate, precision_floor
from ._monotone import (
    SPLITTINGS,
    AbstractMonotoneLinear,
    AbstractSplitting,
    ConvMonotone,
    DenseMonotone,
    ForwardBackward,
    PeacemanRachford,
    monotone_fixed_point,
    resolve_splitting,
)
from ._solution import FixedPointSolution
from ._solvers import AbstractFixedPointSolver, Anderson, Broyden, Newton, Picard

__all__ = [
    "ADJOINTS",
    "JFB",
    "SOLVERS",
    "SPLITTINGS",
    "AbstractAdjoint",
    "AbstractFixedPointSolver",
    "AbstractMonotoneLinear",
    "AbstractSplitting",
    "Anderson",
    "BackwardStats",
    "Broyden",
    "ConvMonotone",
    "DenseMonotone",
    "ForwardBackward",
    "FixedPointSolution",
    "ImplicitAdjoint",
    "Newton",
    "PeacemanRachford",
    "Phantom",
    "Picard",
    "Unrolled",
    "backward_probe",
    "default_tol",
    "fixed_point",
    "iterate",
    "monotone_fixed_point",
    "precision_floor",
    "resolve_adjoint",
    "resolve_solver",
    "resolve_splitting",
    "solve_fixed_point",
]
