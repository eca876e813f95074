"""Shared-subspace extraction: the unit-fit registry (model-axis PCA, HOSVD, factored LoRA HOSVD), streaming
passes, and the one fitted object, :class:`SharedSubspace`, whose saved form is the ``.wsz`` archive."""

from weightspace.decompose._archive import (
    FORMAT,
    STORAGE_DTYPES,
    VERSION,
    Archive,
    ArchiveWriter,
    BaseRecord,
    LoraRecord,
    Manifest,
    ModelRecord,
    PrivateRecord,
    model_record,
)
from weightspace.decompose._gram import GramResult, Tick, center_gram
from weightspace.decompose._project import ProjectedModel, ProjectResult, UnitResidual, open_base
from weightspace.decompose._unitfit import (
    DEFAULT_CHUNK_BYTES,
    UNIT_FITS,
    FitParams,
    MemoryStore,
    Parametrisation,
    Residuals,
    UnitFit,
    UnitRecord,
    unit_fit_for,
)
from weightspace.decompose.hosvd import HOSVDUnitFit, TuckerRecord, TuckerUnit, hosvd, hosvd_cores, hosvd_factors
from weightspace.decompose.lora import AutoUnit, LoraHOSVDFit, LoraTuckerRecord, LoraTuckerUnit, lora_hosvd
from weightspace.decompose.pca import (
    PCARecord,
    PCASpectrum,
    PCAUnit,
    PCAUnitFit,
    pca_basis,
    pca_components,
    pca_spectrum,
)
from weightspace.decompose.rank import choose_rank, explained_variance_ratio, k_for_fraction
from weightspace.decompose.subspace import SharedSubspace

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "FORMAT",
    "STORAGE_DTYPES",
    "UNIT_FITS",
    "VERSION",
    "Archive",
    "ArchiveWriter",
    "AutoUnit",
    "BaseRecord",
    "FitParams",
    "GramResult",
    "HOSVDUnitFit",
    "LoraHOSVDFit",
    "LoraRecord",
    "LoraTuckerRecord",
    "LoraTuckerUnit",
    "Manifest",
    "MemoryStore",
    "ModelRecord",
    "PCARecord",
    "PCASpectrum",
    "PCAUnit",
    "PCAUnitFit",
    "Parametrisation",
    "PrivateRecord",
    "ProjectResult",
    "ProjectedModel",
    "Residuals",
    "SharedSubspace",
    "Tick",
    "TuckerRecord",
    "TuckerUnit",
    "UnitFit",
    "UnitRecord",
    "UnitResidual",
    "center_gram",
    "choose_rank",
    "explained_variance_ratio",
    "hosvd",
    "hosvd_cores",
    "hosvd_factors",
    "k_for_fraction",
    "lora_hosvd",
    "model_record",
    "open_base",
    "pca_basis",
    "pca_components",
    "pca_spectrum",
    "unit_fit_for",
]
