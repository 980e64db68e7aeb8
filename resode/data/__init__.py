"""Embedded datasets (made locally or read from installed packages; never downloaded)."""

from ._dataset import Dataset, batch_indices
from ._sets import (
    DATASETS,
    concentric_spheres,
    crossing1d,
    digits,
    fingerprint,
    harmonic_oscillator,
    karate,
    list_datasets,
    load,
    lotka_volterra,
    mnist1d,
    retrieval,
    sbm,
    spirals,
    stiff_linear,
    van_der_pol,
)

__all__ = [
    "DATASETS",
    "Dataset",
    "batch_indices",
    "concentric_spheres",
    "crossing1d",
    "digits",
    "fingerprint",
    "harmonic_oscillator",
    "karate",
    "list_datasets",
    "load",
    "lotka_volterra",
    "mnist1d",
    "retrieval",
    "sbm",
    "spirals",
    "stiff_linear",
    "van_der_pol",
]
