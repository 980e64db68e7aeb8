"""One diagnostics record for every kind of body, returnable from jit."""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array


class Diagnostics(eqx.Module):
    """What a body did on its forward pass (per example; batched under `jax.vmap`).

    **Fields:**

    - `num_fevals`: evaluations of the vector field, including those inside stage, equilibrium
      or adaptive solves (-1 where the solver does not expose it: diffrax's implicit Kvaerno).
    - `num_jvps`: Jacobian-vector products made by Newton's Krylov solves.
    - `solver_steps`: nonlinear iterations (implicit stages summed, or the DEQ solve), or the
      adaptive ODE solver's steps (accepted and rejected).
    - `residual`: the largest final relative residual of any solve (0 when nothing is solved).
    - `converged`: whether every solve met its tolerance (for an ODE block: diffrax succeeded).

    For DEQs the backward solve is observed through [`resode.backward_probe`][].
    """

    num_fevals: Array
    num_jvps: Array
    solver_steps: Array
    residual: Array
    converged: Array

    @classmethod
    def explicit(cls, num_fevals: int, dtype) -> "Diagnostics":
        """The record of a body that solves nothing: `num_fevals` evaluations, converged."""
        zero = jnp.array(0, jnp.int32)
        return cls(
            num_fevals=jnp.asarray(num_fevals, jnp.int32),
            num_jvps=zero,
            solver_steps=zero,
            residual=jnp.zeros((), jnp.promote_types(dtype, jnp.float32)),
            converged=jnp.array(True),
        )

    def summary(self) -> dict[str, Array]:
        """Batch means (maximum for `residual`, fraction for `converged`), for logging."""
        return {
            "num_fevals": jnp.mean(self.num_fevals),
            "num_jvps": jnp.mean(self.num_jvps),
            "solver_steps": jnp.mean(self.solver_steps),
            "residual": jnp.max(self.residual),
            "fraction_converged": jnp.mean(self.converged.astype(jnp.float32)),
        }
