"""Counters of what a step (or a whole integration) cost."""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int


class StepStats(eqx.Module):
    """What one step, or a whole `integrate`, did (forward pass only).

    **Fields:**

    - `num_fevals`: evaluations of the vector field f, including those inside stage solves.
    - `num_jvps`: Jacobian-vector products of f made by Newton's Krylov solves (each costs about
      one evaluation).
    - `root_steps`: nonlinear iterations of the implicit stage solves, summed (0 for explicit
      schemes).
    - `root_residual`: the largest final relative residual of any stage solve (in the state's
      dtype, at least float32).
    - `root_converged`: whether every stage solve met its tolerance.
    """

    num_fevals: Int[Array, ""]
    num_jvps: Int[Array, ""]
    root_steps: Int[Array, ""]
    root_residual: Float[Array, ""]
    root_converged: Bool[Array, ""]

    @classmethod
    def explicit(cls, num_fevals: int, dtype) -> "StepStats":
        return cls(
            num_fevals=jnp.asarray(num_fevals, jnp.int32),
            num_jvps=jnp.asarray(0, jnp.int32),
            root_steps=jnp.asarray(0, jnp.int32),
            root_residual=jnp.asarray(0, jnp.promote_types(dtype, jnp.float32)),
            root_converged=jnp.asarray(True),
        )

    def __add__(self, other: "StepStats") -> "StepStats":
        return StepStats(
            num_fevals=self.num_fevals + other.num_fevals,
            num_jvps=self.num_jvps + other.num_jvps,
            root_steps=self.root_steps + other.root_steps,
            root_residual=jnp.maximum(self.root_residual, other.root_residual),
            root_converged=self.root_converged & other.root_converged,
        )
