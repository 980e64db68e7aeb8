"""MonotoneDEQ: an equilibrium layer whose fixed point exists and is unique for every input."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray

from ..solvers import ConvMonotone, DenseMonotone, monotone_fixed_point, resolve_splitting
from ._deq import solve_budget
from ._diagnostics import Diagnostics


class MonotoneDEQ(eqx.Module):
    r"""The equilibrium $z^* = \mathrm{relu}(W z^* + U x + b)$ with W monotone (Winston & Kolter).

    $W = (1 - m) I - A^\top A + B - B^\top$, so $\mathrm{sym}(I - W) \succeq mI$ whatever A and B
    are: the equilibrium exists and is unique for every input, and the splitting solvers converge
    (Peaceman--Rachford for every step, forward--backward for steps below
    $2m / \|I - W\|^2$). Gradients are exact (implicit function theorem), solved by the same
    splitting ([`resode.monotone_fixed_point`][]).

    **Arguments:**

    - `features`: the state's size (dense) or channels (convolutional).
    - `in_features`: the input's size or channels (default `features`).
    - `spatial_shape`: `None` (default) for a dense layer on vectors; ``(length,)`` or
      ``(height, width)`` for a convolutional layer on (channels, *spatial) states, where A and B
      are circular convolutions ([`resode.ConvMonotone`][]) and U is a "SAME" convolution.
    - `kernel_size`: of the convolutions (default 3).
    - `monotonicity`: the margin m in (0, 1] (default 0.1).
    - `solver`: ``"peaceman_rachford"`` (default), ``"forward_backward"`` or an object
      ([`resode.PeacemanRachford`][], [`resode.ForwardBackward`][]).
    - `tol` (relative, default 1e-4), `max_steps` (default 30), `eval_tol`, `eval_max_steps`:
      as in [`DEQ`][].

    Call as ``layer(x, z0=None, *, inference=False, probe=None) -> (z, Diagnostics)``, on one
    example (vmap over a batch). `Diagnostics.num_fevals` counts applications of W,
    `solver_steps` the splitting iterations, `num_jvps` GMRES steps of a matrix-free resolvent.
    """

    linear: DenseMonotone | ConvMonotone
    inject: eqx.nn.Linear | eqx.nn.Conv
    solver: object = eqx.field(static=True)
    tol: float = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    eval_tol: float | None = eqx.field(static=True)
    eval_max_steps: int | None = eqx.field(static=True)

    def __init__(
        self,
        features: int,
        *,
        in_features: int | None = None,
        spatial_shape: tuple[int, ...] | None = None,
        kernel_size: int = 3,
        monotonicity: float = 0.1,
        solver="peaceman_rachford",
        tol: float = 1e-4,
        max_steps: int = 30,
        eval_tol: float | None = None,
        eval_max_steps: int | None = None,
        key: PRNGKeyArray,
    ):
        in_features = features if in_features is None else in_features
        k_lin, k_in = jax.random.split(key)
        if spatial_shape is None:
            self.linear = DenseMonotone(features, monotonicity=monotonicity, key=k_lin)
            self.inject = eqx.nn.Linear(in_features, features, key=k_in)
        else:
            spatial_shape = tuple(spatial_shape)
            self.linear = ConvMonotone(
                features,
                spatial_shape,
                kernel_size=kernel_size,
                monotonicity=monotonicity,
                key=k_lin,
            )
            self.inject = eqx.nn.Conv(
                len(spatial_shape), in_features, features, kernel_size, padding="SAME", key=k_in
            )
        solver = resolve_splitting(solver)
        if solver.alpha is not None:  # a layer's step is a constant, never a trained parameter
            solver = dataclasses.replace(solver, alpha=float(solver.alpha))
        self.solver = solver
        if not tol > 0:
            raise ValueError(f"MonotoneDEQ: `tol` must be > 0, got {tol!r}.")
        if not (isinstance(max_steps, int) and max_steps >= 1):
            raise ValueError(
                f"MonotoneDEQ: `max_steps` must be an integer >= 1, got {max_steps!r}."
            )
        self.tol = tol
        self.max_steps = max_steps
        self.eval_tol = eval_tol
        self.eval_max_steps = eval_max_steps

    @property
    def monotonicity(self) -> float:
        """The margin m."""
        return self.linear.monotonicity

    def __call__(self, x: Array, z0: Array | None = None, *, inference: bool = False, probe=None):
        tol, max_steps = solve_budget(self, inference)
        bias = self.inject(x)
        sol = monotone_fixed_point(
            self.linear,
            bias,
            z0,
            solver=self.solver,
            tol=tol,
            max_steps=max_steps,
            probe=probe,
        )
        diag = Diagnostics(
            num_fevals=sol.num_steps,
            num_jvps=sol.stats.get("num_linear_steps", jnp.array(0, jnp.int32)),
            solver_steps=sol.num_steps,
            residual=sol.residual,
            converged=sol.converged,
        )
        return sol.value, diag
