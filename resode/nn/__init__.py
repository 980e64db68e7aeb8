"""Equinox layers: one vector field as a ResNet, an implicit ResNet, a neural ODE or a DEQ."""

from ._deq import DEQ
from ._diagnostics import Diagnostics
from ._fields import (
    AbstractVectorField,
    AttentionField,
    ConvField,
    GraphField,
    MLPField,
    normalized_laplacian,
)
from ._ode import ODEBlock
from ._stack import ResidualStack

__all__ = [
    "DEQ",
    "AbstractVectorField",
    "AttentionField",
    "ConvField",
    "Diagnostics",
    "GraphField",
    "MLPField",
    "ODEBlock",
    "ResidualStack",
    "normalized_laplacian",
]
