"""Shared-subspace extraction: model-axis PCA (streaming float64 Gram / TSQR) and HOSVD of order 1–2."""

from weightspace.decompose._gram import GramResult, Tick, center_gram
from weightspace.decompose.hosvd import HOSVDUnitFit, hosvd, hosvd_cores, hosvd_factors
from weightspace.decompose.pca import (
    DEFAULT_CHUNK_BYTES,
    PCASpectrum,
    PCAUnitFit,
    pca_basis,
    pca_components,
    pca_spectrum,
)
from weightspace.decompose.rank import choose_rank, explained_variance_ratio, k_for_fraction
from weightspace.decompose.subspace import SharedSubspace

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "GramResult",
    "HOSVDUnitFit",
    "PCASpectrum",
    "PCAUnitFit",
    "SharedSubspace",
    "Tick",
    "center_gram",
    "choose_rank",
    "explained_variance_ratio",
    "hosvd",
    "hosvd_cores",
    "hosvd_factors",
    "k_for_fraction",
    "pca_basis",
    "pca_components",
    "pca_spectrum",
]
