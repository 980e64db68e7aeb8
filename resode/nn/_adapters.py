"""Residual adapters: zero-initialised branches added to a trained model's residual fields.

A residual step ``y + h f(y)`` becomes ``y + h (f(y) + a(y))`` with a small field `a` whose
last layer starts at zero (Rebuffi et al., "Learning multiple visual domains with residual
adapters", NeurIPS 2017, use parallel adapters of this kind): the adapted model computes exactly
what the base model computed, and training only the adapters (`adapter_mask`, or the config key
``train.trainable: adapters``) leaves the base weights as they were.
"""

import equinox as eqx
import jax
from jaxtyping import Array, PRNGKeyArray

from ._deq import DEQ
from ._fields import AbstractVectorField, MLPField
from ._models import Classifier
from ._ode import ODEBlock
from ._stack import ResidualStack


class AdaptedField(AbstractVectorField):
    """``base(t, y, args) + adapter(t, y, args)``: a field with a parallel adapter branch."""

    base: AbstractVectorField
    adapter: AbstractVectorField

    def __call__(self, t, y: Array, args: Array | None = None) -> Array:
        return self.base(t, y, args) + self.adapter(t, y, args)


def _state_dim(field) -> int:
    if isinstance(field, AdaptedField):
        return _state_dim(field.base)
    if isinstance(field, MLPField):
        return int(field.layers[-1].weight.shape[-2])
    raise TypeError(
        f"add_adapters: cannot infer the state size of a {type(field).__name__} field; give `dim`."
    )


def _adapt_field(field, hidden: int, stacked: int | None, dim: int | None, key) -> AdaptedField:
    dim = _state_dim(field) if dim is None else dim
    dtype = jax.tree_util.tree_leaves(eqx.filter(field, eqx.is_inexact_array))[0].dtype

    def make(k):
        adapter = MLPField(dim, hidden, zero_init=True, key=k)
        return jax.tree_util.tree_map(
            lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, adapter
        )

    adapter = (
        make(key) if stacked is None else eqx.filter_vmap(make)(jax.random.split(key, stacked))
    )
    return AdaptedField(field, adapter)


def add_adapters(model, hidden: int = 8, *, key: PRNGKeyArray, dim: int | None = None):
    """`model` with a zero-initialised residual adapter beside each residual field.

    **Arguments:** `model`: a [`ResidualStack`][], [`DEQ`][] or [`ODEBlock`][], or a
    [`Classifier`][] whose body is one; `hidden`: the adapters' hidden width (an
    [`MLPField`][] ``dim -> hidden -> dim`` each, last layer zero); `key`; `dim`: the state size
    (default: read from an `MLPField` base field).

    An untied stack gets one adapter per step (a ResNet's per-block adapters), a tied stack, a
    DEQ or an ODE block one adapter for its one field. The returned model computes exactly what
    `model` computes until the adapters are trained; train them alone with `adapter_mask`.
    Raises `TypeError` for a body without a residual field (plain stacks, monotone DEQs).
    """
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        raise ValueError(f"add_adapters: `hidden` must be a positive int, got {hidden!r}.")
    if isinstance(model, Classifier):
        if model.body is None:
            raise TypeError("add_adapters: the classifier has no body (model.body.kind 'none').")
        return eqx.tree_at(
            lambda m: m.body, model, add_adapters(model.body, hidden, key=key, dim=dim)
        )
    if isinstance(model, ResidualStack):
        if not model.skip:
            raise TypeError("add_adapters: a plain stack (skip=False) has no residual branch.")
        stacked = None if model.tied else model.num_steps
        return eqx.tree_at(
            lambda m: m.field, model, _adapt_field(model.field, hidden, stacked, dim, key)
        )
    if isinstance(model, (DEQ, ODEBlock)):
        return eqx.tree_at(
            lambda m: m.field, model, _adapt_field(model.field, hidden, None, dim, key)
        )
    raise TypeError(
        f"add_adapters: no residual field to adapt in a {type(model).__name__} (residual stacks, "
        "DEQs, ODE blocks and classifiers with one of them as body)."
    )


def adapter_mask(model):
    """A pytree of bools over `model`'s leaves: True on the parameters of every adapter branch
    (for [`resode.train.Trainer`][]'s `trainable`, `eqx.partition` or `optax.masked`)."""

    def mark(node):
        if isinstance(node, AdaptedField):
            return AdaptedField(
                jax.tree_util.tree_map(lambda _: False, node.base),
                jax.tree_util.tree_map(lambda _: True, node.adapter),
            )
        return jax.tree_util.tree_map(lambda _: False, node)

    return jax.tree_util.tree_map(mark, model, is_leaf=lambda x: isinstance(x, AdaptedField))


def remove_adapters(model):
    """The base model inside an adapted one: every [`AdaptedField`][] replaced by its base field
    (for serving a task or domain without its adapters; the inverse of [`add_adapters`][])."""
    return jax.tree_util.tree_map(
        lambda n: n.base if isinstance(n, AdaptedField) else n,
        model,
        is_leaf=lambda n: isinstance(n, AdaptedField),
    )


__all__ = ["AdaptedField", "add_adapters", "adapter_mask", "remove_adapters"]
