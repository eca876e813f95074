"""What ``align`` returns, and what an archive of an aligned collection stores so ``reconstruct`` can undo it.

The archive keeps every model's permutations (``<model>/perm/<group>``, int64) and scale factors
(``<model>/scale/<group>``, float64) in one member, ``align.safetensors``, and a typed
:class:`AlignmentRecord` (the spec, the options, the group sizes) in the manifest's ``extras["alignment"]``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, StrictInt, ValidationError

from weightspace.align._file import spec_from_dict
from weightspace.align._match import Transform, transform_tensor
from weightspace.align._spec import PermutationSpec
from weightspace.errors import ArchiveError, InputError

__all__ = [
    "ALIGN_MEMBER",
    "AlignResult",
    "AlignmentRecord",
    "ModelAlignment",
    "alignment_tensors",
    "read_alignment",
    "unalign_tensors",
]

ALIGN_MEMBER = "align.safetensors"


@dataclass(frozen=True)
class ModelAlignment:
    """One model's alignment.

    Attributes
    ----------
    name, path : str
    distance_before, distance_after : float
        Euclidean distance (over the shared unit tensors, float64) to the target — the reference model, or the
        mean of the aligned models — before alignment (the model as given; for ``to="mean"``, to the mean of the
        models as given) and after. With scale canonicalisation both are measured between canonicalised models.
    moved_units : int
        Units that changed place, over all groups.
    sweeps : int
        Coordinate-descent sweeps of the last matching (0 for the reference itself).
    permutations : dict of str to list of int
        Per group: aligned unit ``i`` is the model's unit ``permutations[g][i]``.
    scales : dict of str to list of float
        Per scale group (``--symmetries scale``): factor ``c`` of each unit, in the model's own order.
    output : str or None
        The aligned checkpoint written, if any.
    """

    name: str
    path: str
    distance_before: float
    distance_after: float
    moved_units: int
    sweeps: int
    permutations: dict[str, list[int]]
    scales: dict[str, list[float]] = field(default_factory=dict)
    output: str | None = None


@dataclass(frozen=True)
class AlignResult:
    """The result of :func:`~weightspace.align.align`.

    Attributes
    ----------
    models : list of ModelAlignment
    reference : str
        The reference model's name, ``<base>`` (task vectors are aligned to their base), or for ``to="mean"``
        the model the mean was started from.
    to : {"reference", "mean"}
    symmetries : list of str
    seed : int
    spec : dict
        The permutation spec in the user-file format (``spec.json`` of the output).
    spec_text : str
        The spec in words, as printed.
    groups : dict of str to int
        Units per group.
    rounds : int
        Align-to-the-mean rounds (0 for ``to="reference"``).
    converged : bool
        Every matching stopped on a sweep without improvement (and, for the mean, a round without change).
    notes : list of str
    wall_s : float
    out : str or None
        The output directory, if written.
    transforms : list of Transform
        Per model (not part of :meth:`to_dict`; the permutations and scales are, as lists).
    """

    models: list[ModelAlignment]
    reference: str
    to: str
    symmetries: list[str]
    seed: int
    spec: dict[str, Any]
    spec_text: str
    groups: dict[str, int]
    rounds: int
    converged: bool
    notes: list[str]
    wall_s: float
    out: str | None = None
    transforms: list[Transform] = field(default_factory=list, repr=False, compare=False)

    @property
    def mean_distance_before(self) -> float:
        return sum(m.distance_before for m in self.models) / len(self.models)

    @property
    def mean_distance_after(self) -> float:
        return sum(m.distance_after for m in self.models) / len(self.models)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (``alignment.json``, the ``--json`` output)."""
        out = asdict(self)
        out.pop("transforms")
        out["mean_distance_before"] = self.mean_distance_before
        out["mean_distance_after"] = self.mean_distance_after
        return out


class AlignmentRecord(BaseModel):
    """``extras["alignment"]`` of an archive: how its models were aligned."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    version: StrictInt = 1
    member: Literal["align.safetensors"] = ALIGN_MEMBER
    spec: dict[str, Any]
    symmetries: list[str]
    reference: str
    to: str
    seed: StrictInt
    groups: dict[str, StrictInt]
    models: list[str]


def alignment_tensors(names: Sequence[str], transforms: Sequence[Transform]) -> dict[str, torch.Tensor]:
    """The ``align.safetensors`` member: ``<model>/perm/<group>`` (int64) and ``<model>/scale/<group>`` (float64)."""
    out: dict[str, torch.Tensor] = {}
    for name, tf in zip(names, transforms, strict=True):
        for g, p in tf.perms.items():
            out[f"{name}/perm/{g}"] = p.to(torch.int64).contiguous()
        for g, c in tf.scales.items():
            out[f"{name}/scale/{g}"] = c.to(torch.float64).contiguous()
    return out


def read_alignment(
    extras: Mapping[str, Any], read: Callable[[str], torch.Tensor], *, path: Any = None, only: str | None = None
) -> tuple[PermutationSpec, dict[str, Transform]] | None:
    """The spec and per-model transforms an archive stores, or None for an unaligned archive.

    Parameters
    ----------
    extras : mapping
        The manifest's ``extras``.
    read : callable
        ``read(tensor_name)`` from the ``align.safetensors`` member (any float or int dtype).
    path : path, optional
        The archive, named in errors.
    only : str, optional
        Read this model's transform only (models the alignment does not list — added later — get none).
    """
    raw = extras.get("alignment")
    if raw is None:
        return None
    try:
        rec = AlignmentRecord.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ArchiveError(
            f"manifest extras.alignment is malformed at {where}: {first['msg']}", path=path
        ) from None
    try:
        spec = spec_from_dict(rec.spec, path=path)
    except InputError as err:
        raise ArchiveError(f"manifest extras.alignment.spec: {err.message}", path=path) from None
    scaled = [g.name for g in spec.groups if g.scale] if "scale" in rec.symmetries else []
    transforms = {}
    for name in rec.models if only is None else [m for m in rec.models if m == only]:
        perms = {}
        if "permutation" in rec.symmetries:
            for g in spec.groups:
                p = read(f"{name}/perm/{g.name}").to(torch.int64)
                if sorted(p.tolist()) != list(range(rec.groups.get(g.name, -1))):
                    raise ArchiveError(
                        f"stored permutation of group '{g.name}' is not a permutation",
                        path=path,
                        tensor=f"{name}/perm/{g.name}",
                    )
                perms[g.name] = p
        scales = {g: read(f"{name}/scale/{g}").to(torch.float64) for g in scaled}
        transforms[name] = Transform(perms, scales)
    return spec, transforms


def unalign_tensors(
    tensors: Mapping[str, torch.Tensor], spec: PermutationSpec, tf: Transform
) -> dict[str, torch.Tensor]:
    """Undo an alignment on a model's tensors (each keeps its dtype); keys the spec does not touch are kept."""
    out = {}
    for key, t in tensors.items():
        entries = spec.entries(key)
        out[key] = transform_tensor(t, entries, tf, inverse=True).to(t.dtype) if entries else t
    return out
