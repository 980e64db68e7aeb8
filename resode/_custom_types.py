"""Type aliases shared across resode (jaxtyping), so shapes live in the signatures."""

from typing import Any, TypeAlias

from jaxtyping import Array, ArrayLike, Bool, Float, Int, PyTree

#: A state: any pytree whose leaves are floating or complex arrays.
Y: TypeAlias = PyTree[Array]
#: Extra arguments of a vector field or fixed-point map (anything; arrays in it are differentiable).
Args: TypeAlias = PyTree[Any]
#: A scalar time or step size (Python number or 0-d array).
RealScalarLike: TypeAlias = float | int | Float[ArrayLike, ""]
#: A 0-d boolean array.
BoolScalar: TypeAlias = Bool[Array, ""]
#: A 0-d integer array.
IntScalar: TypeAlias = Int[Array, ""]
#: A 0-d floating array.
RealScalar: TypeAlias = Float[Array, ""]

__all__ = [
    "Array",
    "Args",
    "BoolScalar",
    "IntScalar",
    "PyTree",
    "RealScalar",
    "RealScalarLike",
    "Y",
]
