"""The record a fixed-point or stage solve returns."""

import equinox as eqx
from jaxtyping import Array, Bool, Float, Int

from .._custom_types import PyTree


class FixedPointSolution(eqx.Module):
    """What a solve found and how it got there.

    **Fields:**

    - `value`: the returned iterate z. When the solve converged it satisfies
      ``||f(z) - z|| <= tol * ||f(z)||``; when it did not, it is the iterate with the lowest
      relative residual seen (always finite if any iterate was).
    - `num_steps`: how many iterations ran (evaluations of the map inside the loop; a starting
      point that already satisfies the tolerance counts one).
    - `residual`: the relative residual ``||f(z) - z|| / ||f(z)||`` of `value`.
    - `converged`: whether `residual` met the tolerance. Nothing is raised when it did not.
    - `stats`: solver-specific counters, e.g. ``num_linear_steps`` (Krylov iterations of Newton).
    """

    value: PyTree[Array]
    num_steps: Int[Array, ""]
    residual: Float[Array, ""]
    converged: Bool[Array, ""]
    stats: dict[str, Array]
