"""Post-training measurements of a classifier's body, for the depth study: gradient flow through
the body and the field evaluations of one backward pass."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..analysis import gradient_flow
from ..nn import Classifier
from ..solvers import JFB, BackwardStats, ImplicitAdjoint, Phantom, backward_probe
from ..stepping._rk import implicit_vjp_counts

# Reverse mode through a scan (explicit stacks) or through diffrax's recursive checkpointing
# applies one VJP of the field per forward evaluation (recomputed steps are forward evaluations).
_ONE_VJP_PER_EVAL = {"plain", "residual"}


def _head_loss(model, label, classification):
    if getattr(model, "per_node", False):  # node classification: labelled nodes only

        def node_loss(z):
            out = jax.vmap(model.head)(z)
            valid = (label >= 0).astype(out.dtype)
            per = optax.softmax_cross_entropy_with_integer_labels(out, jnp.maximum(label, 0))
            return jnp.sum(per * valid) / jnp.maximum(jnp.sum(valid), 1.0)

        return node_loss

    def loss(z):
        if z.ndim > 1:
            z = jnp.mean(z, axis=tuple(range(1, z.ndim)))
        out = model.head(z)
        if classification:
            return optax.softmax_cross_entropy_with_integer_labels(out, label)
        return jnp.mean(jnp.square(out.reshape(label.shape) - label))

    return loss


# The compiled measurements take the model as an argument (not a closure), so that models of one
# structure (several seeds, a sweep's points) share one compilation.


@eqx.filter_jit
def _probe_cotangent(model, x, y, classification: bool, probe):
    def total(probe):
        def one(xi, yi):
            z, _ = model.body(model.stem(xi), inference=True, probe=probe)
            return _head_loss(model, yi, classification)(z)

        return jnp.sum(jax.vmap(one)(x, y))

    return jax.grad(total)(probe)


@eqx.filter_jit
def _grad_ratios(model, x, y, classification: bool):
    def ratio(xi, yi):
        norms = gradient_flow(model.body, model.stem(xi), _head_loss(model, yi, classification))
        return norms[0] / norms[-1]

    return jax.vmap(ratio)(x, y)


@eqx.filter_jit
def _forward_fevals(model, x):
    return jax.vmap(lambda xi: model(xi, inference=True))(x)[1].num_fevals


def _probed_vjps(model, x, y, classification) -> float:
    """Adjoint iterations plus parameter VJPs of the body's solves, per example, read from a
    [`resode.backward_probe`][] passed to the body."""
    cotangent = _probe_cotangent(model, x, y, classification, backward_probe())
    stats = BackwardStats.from_cotangent(cotangent)
    return float(stats.num_steps + stats.num_solves) / x.shape[0]


def measure_body(model, x, y, *, classification: bool) -> dict:
    """Evaluation-mode measurements of `model`'s body on the examples `x`, `y`.

    - `grad_flow`: median over examples of ``||dL/dy_0|| / ||dL/dy_N||``, the gradient norm at
      the body's input over that at its output (stacks; None for other bodies). Below 1:
      gradients shrink on their way back through depth; above 1: they grow.
    - `backward_vjps`: field VJPs per example in one backward pass: for explicit stacks one per
      forward evaluation; for an implicit stack the stage solves' adjoint iterations and
      parameter VJPs (observed with [`resode.backward_probe`][]) plus the VJPs of the stage
      derivatives combined after solving; for a DEQ with the implicit adjoint its adjoint
      iterations plus the parameter VJP, also observed with the probe (JFB: 1, phantom: its
      `steps`, by construction); for an ODE block with recursive checkpointing one per
      forward evaluation; None where it is not observed (the unrolled DEQ adjoint and the
      backsolve ODE adjoint).
    """
    out = {"grad_flow": None, "backward_vjps": None}
    if not isinstance(model, Classifier):  # a UNet, a sequence model: several bodies or none
        return out
    kind = model.body_kind
    if kind in ("plain", "residual", "implicit"):
        ratios = _grad_ratios(model, jnp.asarray(x), jnp.asarray(y), classification)
        out["grad_flow"] = float(np.median(np.asarray(ratios)))
    if kind in _ONE_VJP_PER_EVAL or (
        kind == "ode"
        and model.body.adjoint == "recursive_checkpoint"
        and model.body.solver != "kvaerno5"
    ):
        fevals = _forward_fevals(model, jnp.asarray(x))
        out["backward_vjps"] = float(np.mean(np.asarray(fevals)))
    elif kind == "implicit":
        explicit, per_iter = implicit_vjp_counts(model.body.scheme.tableau)
        solves = _probed_vjps(model, x, y, classification)
        out["backward_vjps"] = explicit * model.body.num_steps + per_iter * solves
    elif kind == "deq" and isinstance(model.body.adjoint, JFB):
        out["backward_vjps"] = 1.0  # autodiff through one step from z*
    elif kind == "deq" and isinstance(model.body.adjoint, Phantom):
        out["backward_vjps"] = float(model.body.adjoint.steps)  # autodiff through k steps
    elif kind == "deq" and isinstance(model.body.adjoint, ImplicitAdjoint):
        out["backward_vjps"] = _probed_vjps(model, x, y, classification)
    return out
