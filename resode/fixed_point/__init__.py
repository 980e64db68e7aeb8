"""Fixed-point solvers, adjoints and the implicit-differentiation primitive.

These sit below `resode.stepping`: an implicit Runge--Kutta stage is a fixed point, solved and
differentiated by the same machinery as a deep-equilibrium layer.
"""

from ._adjoint import AbstractAdjoint, ImplicitAdjoint, solve_fixed_point
from ._iterate import default_tol, iterate
from ._solution import FixedPointSolution
from ._solvers import AbstractFixedPointSolver, Newton, Picard

__all__ = [
    "AbstractAdjoint",
    "AbstractFixedPointSolver",
    "FixedPointSolution",
    "ImplicitAdjoint",
    "Newton",
    "Picard",
    "default_tol",
    "iterate",
    "solve_fixed_point",
]
