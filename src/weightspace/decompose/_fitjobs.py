"""The tasks of a :meth:`SharedSubspace.fit` run: one per unit (and one per source to hash), picklable for Dask.

A unit task reads its unit from the collection (paths its worker sees), fits it with the registered unit-fit class
and, for an archive, writes the unit's member itself and hashes it there: only the unit's record, coefficients and
member digest travel back to the caller, never a basis. The caller writes the coefficients, the private tensors and
the manifest last.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from weightspace.collection import Collection
from weightspace.decompose._archive import STORAGE_DTYPES, MemberDigest, UnitFileStore
from weightspace.decompose._unitfit import FitParams, MemoryStore, UnitFit, UnitRecord, unit_fit_for
from weightspace.units import UnitStack

__all__ = ["MemberFit", "fit_member", "fit_unit", "hash_sources", "stack_of"]


def stack_of(source: Collection | UnitStack, name: str) -> UnitStack:
    """Unit ``name`` of a collection, or an in-memory stack as is."""
    return source.stack(name) if isinstance(source, Collection) else source


def fit_unit(source: Collection | UnitStack, name: str, method: str, params: FitParams) -> UnitFit:
    """Fit one unit in memory (its stored tensors in a :class:`MemoryStore`)."""
    stack = stack_of(source, name)
    return unit_fit_for(method, stack.spec).fit(stack, params, MemoryStore())


@dataclass(frozen=True)
class MemberFit:
    """What a unit task returns when it wrote the unit's archive member itself."""

    record: UnitRecord
    coefficients: torch.Tensor
    digest: MemberDigest


def fit_member(
    source: Collection | UnitStack, name: str, method: str, params: FitParams, path: str, storage_dtype: str
) -> MemberFit:
    """Fit one unit, streaming its stored tensors into the archive member at ``path``; return the small parts."""
    stack = stack_of(source, name)
    store = UnitFileStore(path, STORAGE_DTYPES[storage_dtype])
    try:
        unit = unit_fit_for(method, stack.spec).fit(stack, params, store)
        digest = store.digest()
    except BaseException:
        store.abort()
        raise
    return MemberFit(unit.record(), unit.coefficients, digest)


def hash_sources(source: Collection, indices: Sequence[int]) -> list[str]:
    """sha256 of models ``indices`` of the collection (``-1``: its base), one task for a batch of models."""
    out = []
    for i in indices:
        src: Any = source.base if i < 0 else source.sources[i]
        out.append(src.sha256())
    return out
