"""Type aliases shared across resode (jaxtyping), so shapes live in the signatures."""

from typing import Any, TypeAlias

from jaxtyping import Array, ArrayLike, Float, PyTree

#: A state: any pytree whose leaves are floating or complex arrays.
Y: TypeAlias = PyTree[Array]
#: Extra arguments of a vector field or fixed-point map (anything; arrays in it are differentiable).
Args: TypeAlias = PyTree[Any]
#: A scalar time or step size (Python number or 0-d array).
RealScalarLike: TypeAlias = float | int | Float[ArrayLike, ""]

__all__ = ["Array", "Args", "PyTree", "RealScalarLike", "Y"]
