"""flax.nnx interop: an nnx module as a resode vector field, and a resode body inside an nnx model.

Imported on demand (``import resode.nn.nnx``) so that the rest of resode does not load flax.
"""

from typing import Any

import equinox as eqx
import jax
from flax import nnx

from ._fields import AbstractVectorField

__all__ = [
    "NNXField",
    "ResodeLayer",
]


class NNXField(AbstractVectorField):
    """An nnx module whose ``__call__(t, y, args)`` is a vector field, as an equinox field.

    The module is split into its graph definition (static) and state (arrays, trained), so it can
    be stepped, scanned, vmapped into untied stacks and differentiated like any resode field.
    """

    state: Any
    graphdef: Any = eqx.field(static=True)

    def __init__(self, module: nnx.Module):
        self.graphdef, self.state = nnx.split(module)

    def __call__(self, t, y, args=None):
        return nnx.merge(self.graphdef, self.state)(t, y, args)

    def to_nnx(self) -> nnx.Module:
        """The (possibly trained) nnx module back."""
        return nnx.merge(self.graphdef, self.state)


class ResodeLayer(nnx.Module):
    """Any equinox module (e.g. a `ResidualStack`, `DEQ` or `ODEBlock`) inside an nnx model.

    Each floating-point array becomes an `nnx.Param` (trained by `nnx.Optimizer` like any other
    parameter); the rest is kept as static structure. Calling the layer calls the module, and
    `module()` returns the equinox module with the current parameters.
    """

    def __init__(self, module: eqx.Module):
        params, static = eqx.partition(module, eqx.is_inexact_array)
        leaves, treedef = jax.tree_util.tree_flatten(params)
        self.params = nnx.List([nnx.Param(leaf) for leaf in leaves])  # one Param per array
        self.treedef = treedef
        self.static = static

    def module(self) -> eqx.Module:
        """The equinox module with the current (possibly trained) parameters."""
        leaves = [p.get_value() for p in self.params]
        return eqx.combine(jax.tree_util.tree_unflatten(self.treedef, leaves), self.static)

    def __call__(self, *args, **kwargs):
        return self.module()(*args, **kwargs)
