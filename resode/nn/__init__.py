"""Equinox layers: one vector field as a ResNet, an implicit ResNet, a neural ODE or a DEQ."""

from ._adapters import AdaptedField, adapter_mask, add_adapters
from ._deq import DEQ
from ._diagnostics import Diagnostics
from ._fields import (
    AbstractVectorField,
    AttentionField,
    ConvField,
    FunctionField,
    GraphField,
    MLPField,
    conv_same,
    normalized_laplacian,
    soft_threshold,
)
from ._models import BODIES, STEMS, Classifier, Stem, build_classifier, count_params
from ._monotone_deq import MonotoneDEQ
from ._ode import ODEBlock
from ._stack import ResidualStack

__all__ = [
    "AdaptedField",
    "adapter_mask",
    "add_adapters",
    "BODIES",
    "DEQ",
    "STEMS",
    "Classifier",
    "FunctionField",
    "Stem",
    "build_classifier",
    "conv_same",
    "count_params",
    "AbstractVectorField",
    "AttentionField",
    "ConvField",
    "Diagnostics",
    "GraphField",
    "MLPField",
    "MonotoneDEQ",
    "ODEBlock",
    "ResidualStack",
    "normalized_laplacian",
    "soft_threshold",
]
