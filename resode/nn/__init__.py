"""Equinox layers: one vector field as a ResNet, an implicit ResNet, a neural ODE or a DEQ."""

from ._adapters import AdaptedField, adapter_mask, add_adapters, remove_adapters
from ._deq import DEQ
from ._diagnostics import Diagnostics
from ._fields import (
    MONOTONE_ACTIVATIONS,
    AbstractVectorField,
    AttentionField,
    ConvField,
    DissipativeField,
    FunctionField,
    GraphField,
    MLPField,
    conv_same,
    normalized_laplacian,
    soft_threshold,
)
from ._models import (
    BODIES,
    STEMS,
    Classifier,
    SequenceClassifier,
    Stem,
    build_classifier,
    call_body,
    count_params,
    make_body,
)
from ._monotone_deq import MonotoneDEQ
from ._ode import ODEBlock
from ._spectral import (
    SPECTRAL_METHODS,
    buffer_mask,
    conv_symbol_norm,
    update_spectral_state,
)
from ._stack import ResidualStack
from ._transformer import NORMS, TransformerBlock, TransformerEncoder
from ._unet import UNet, combine_diagnostics

__all__ = [
    "AdaptedField",
    "adapter_mask",
    "add_adapters",
    "remove_adapters",
    "BODIES",
    "DEQ",
    "STEMS",
    "Classifier",
    "SequenceClassifier",
    "FunctionField",
    "Stem",
    "build_classifier",
    "conv_same",
    "count_params",
    "AbstractVectorField",
    "AttentionField",
    "ConvField",
    "DissipativeField",
    "MONOTONE_ACTIVATIONS",
    "Diagnostics",
    "GraphField",
    "MLPField",
    "MonotoneDEQ",
    "ODEBlock",
    "ResidualStack",
    "normalized_laplacian",
    "soft_threshold",
    "SPECTRAL_METHODS",
    "conv_symbol_norm",
    "buffer_mask",
    "update_spectral_state",
    "make_body",
    "call_body",
    "combine_diagnostics",
    "UNet",
    "NORMS",
    "TransformerBlock",
    "TransformerEncoder",
]
