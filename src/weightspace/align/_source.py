"""Aligned views of checkpoints: a :class:`~weightspace.io.ModelSource` that applies a transform on read.

An :class:`AlignedSource` reads its tensors from the original checkpoint and returns them permuted (and rescaled)
in its stored dtype, so a :class:`~weightspace.collection.Collection` of aligned sources streams into analyze,
compress and the writers like any other, with nothing rewritten on disk. Row chunks of a unit whose rows are
permuted read only the rows they need (one contiguous read per run of consecutive source rows).

:class:`AlignedCollection` is such a collection, carrying the alignment (what an archive of it stores so that
``reconstruct`` can undo it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from weightspace.align._match import Transform, expand, transform_tensor
from weightspace.align._spec import PermutationSpec
from weightspace.collection import Collection
from weightspace.errors import TensorKeyError
from weightspace.io import DTYPES, LoraModule, ModelSource

__all__ = ["AlignedCollection", "AlignedSource"]


class AlignedSource(ModelSource):
    """``source`` with ``transform`` applied to every tensor of ``spec`` when read.

    Parameters
    ----------
    source : ModelSource
        The checkpoint (full weights; never a PEFT adapter).
    spec : PermutationSpec
    transform : Transform

    Attributes
    ----------
    path, format, entries, metadata, configs
        Those of ``source`` (the aligned model keeps the layout, keys and dtypes of the original).
    """

    def __init__(self, source: ModelSource, spec: PermutationSpec, transform: Transform):
        super().__init__(Path(source.path))
        self.inner = source
        self.spec = spec
        self.transform = transform
        self.format = source.format
        self.entries = source.entries
        self.metadata = source.metadata
        self.configs = source.configs
        self._entries = {k: spec.entries(k) for k in spec.keys}

    def read(self, key: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        entries = self._entries.get(key)
        if not entries:
            return self.inner.read(key, rows)
        dtype = DTYPES[self.inner.entry(key).dtype][0]
        shape = self.entries[key].shape
        if rows is None:
            return transform_tensor(self.inner.read(key), entries, self.transform).to(dtype)
        r0, r1 = rows
        if r1 <= r0:
            return self.inner.read(key, rows)
        row_entry = next(((g, a) for g, a in entries if a.axis == 0), None)
        if row_entry is None:
            t = self.inner.read(key, rows).reshape(r1 - r0, *shape[1:]).to(torch.float64)
        else:
            # Rows of the aligned tensor are source rows in another order (scaled, for a scale group): read just
            # those, scale them by their own unit's factor, and transform the other axes as usual.
            g, a = row_entry
            perm = self.transform.perms.get(g.name)
            src_rows = (expand(perm, a.block) if perm is not None else torch.arange(shape[0]))[r0:r1]
            t = self._rows(key, src_rows).reshape(r1 - r0, *shape[1:]).to(torch.float64)
            if g.name in self.transform.scales:
                c = self.transform.scales[g.name].repeat_interleave(a.block)[src_rows]
                f = c if a.role == "out" else 1.0 / c
                t = t * f.reshape(-1, *([1] * (t.dim() - 1)))
        out = transform_tensor(t, entries, self.transform, skip_axes=(0,))
        return out.to(dtype).reshape(r1 - r0, -1)

    def _rows(self, key: str, src_rows: torch.Tensor) -> torch.Tensor:
        """Source rows ``src_rows`` (any order) of ``key``'s 2-D view, one read per run of consecutive rows."""
        order = torch.argsort(src_rows)
        wanted = src_rows[order].tolist()
        parts: list[torch.Tensor] = []
        start = prev = wanted[0]
        for r in [*wanted[1:], None]:
            if r is not None and r == prev + 1:
                prev = r
                continue
            parts.append(self.inner.read(key, (start, prev + 1)).reshape(prev + 1 - start, -1))
            if r is not None:
                start = prev = r
        sorted_rows = torch.cat(parts)
        return sorted_rows[torch.argsort(order)]

    def lora(self, key: str) -> tuple[torch.Tensor, torch.Tensor, LoraModule]:
        raise TensorKeyError("aligned views hold full weights, not LoRA updates", path=self.path, tensor=key)

    def files(self) -> list[Path]:
        return self.inner.files()

    def sha256(self) -> str:
        return self.inner.sha256()

    def nbytes_on_disk(self) -> int:
        return self.inner.nbytes_on_disk()

    @property
    def adapter_config(self) -> dict | None:
        return self.inner.adapter_config


class AlignedCollection(Collection):
    """A collection of :class:`AlignedSource` views, with the alignment an archive of it must store.

    Parameters
    ----------
    original : Collection
        The unaligned collection (its base, names, private and exclude patterns are kept).
    spec : PermutationSpec
    transforms : sequence of Transform
        One per model.
    archive_extras : mapping
        Manifest ``extras`` entries for an archive of this collection (``{"alignment": {...}}``).
    archive_members : mapping of str to mapping of str to Tensor
        Extra archive members (``{"align.safetensors": {...}}``).
    """

    def __init__(
        self,
        original: Collection,
        spec: PermutationSpec,
        transforms: Sequence[Transform],
        *,
        archive_extras: Mapping[str, Any] | None = None,
        archive_members: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    ):
        sources = [AlignedSource(s, spec, tf) for s, tf in zip(original.sources, transforms, strict=True)]
        super().__init__(
            sources,
            base=original.base,
            names=original.names,
            private=original.private_patterns,
            exclude=original.exclude_patterns,
        )
        self.original = original
        self.spec = spec
        self.transforms = list(transforms)
        self.archive_extras = dict(archive_extras or {})
        self.archive_members = {k: dict(v) for k, v in (archive_members or {}).items()}
