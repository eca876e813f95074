"""Compression archives (``.wsz``): compress a collection, reconstruct models, project unseen ones.

Each entry point is a few lines over :class:`~weightspace.decompose.SharedSubspace`, whose saved form the
archive is: ``compress`` = ``fit(..., out=)``, ``project`` = ``load(...).project(...)``, ``reconstruct`` writes
``load(...).reconstruct(i)`` back in each model's source format.
"""

from weightspace._callable import make_callable
from weightspace._words import ratio_words
from weightspace.compress._compress import CompressResult, UnitSummary, compress
from weightspace.compress._project import project
from weightspace.compress._reconstruct import ReconstructedModel, reconstruct, reconstruct_tensors
from weightspace.decompose import ProjectedModel, ProjectResult, UnitResidual

__all__ = [
    "CompressResult",
    "ProjectResult",
    "ProjectedModel",
    "ReconstructedModel",
    "UnitResidual",
    "UnitSummary",
    "compress",
    "project",
    "ratio_words",
    "reconstruct",
    "reconstruct_tensors",
]

make_callable(__name__)  # weightspace.compress(...) calls compress(...)
