"""Rebuild models from an archive, in the layout each came from.

Full checkpoints get back every key in the original order and dtype (units from ``μ + c V``, plus the base for
task-vector archives; private tensors verbatim). PEFT adapters become rank-r adapters again: the reconstructed
``ΔW`` of each module is truncated by SVD to the module's source rank with its ``lora_alpha`` semantics kept, and
the truncation error is reported. Factored LoRA units give that SVD from their k1 × k2 core (``U (M + C_i) Vᵀ``,
rank ≤ min(k1, k2)) without forming ``ΔW``. Everything is checked (names, base identity) before anything is
written.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from weightspace._progress import Progress, report
from weightspace.align import ALIGN_MEMBER, PermutationSpec, Transform, read_alignment, unalign_tensors
from weightspace.decompose import Archive, ModelRecord, SharedSubspace, open_base
from weightspace.errors import ArchiveError
from weightspace.io import (
    DTYPES,
    ModelSource,
    lora_factors_from_delta,
    lora_factors_from_svd,
    output_name,
    write_model,
)

__all__ = ["ReconstructedModel", "reconstruct", "reconstruct_tensors"]


@dataclass(frozen=True)
class ReconstructedModel:
    """One model written back by :func:`reconstruct`."""

    name: str
    path: str
    format: str
    max_lora_truncation_error: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _torch_dtype(tag: str, model: str) -> torch.dtype:
    dt = DTYPES[tag][0] if tag in DTYPES else None
    if dt is None:
        raise ArchiveError(f"manifest records dtype {tag!r}, which cannot be written", tensor=model)
    return dt


def _source_layout(model: ModelRecord) -> str:
    fmt = model.source_format
    if fmt == "torch" and Path(model.source_path).suffix == "":
        return "torch-dir"
    if fmt == "memory":
        return "safetensors"
    return fmt


def _alignment(subspace: SharedSubspace, name: str) -> tuple[PermutationSpec, dict[str, Transform]] | None:
    extras = subspace.manifest_.extras if subspace.manifest_ is not None else {}
    if "alignment" not in extras:
        return None
    arc = subspace.archive_
    if arc is None:
        raise ArchiveError("the alignment of a fit lives in its saved archive; save() the subspace first")
    return read_alignment(extras, lambda key: arc.read_member(ALIGN_MEMBER, key), path=arc.path, only=name)


def reconstruct_tensors(
    subspace: SharedSubspace, i: int, base: ModelSource | None, *, aligned: bool = False
) -> tuple[dict[str, torch.Tensor], float]:
    """File tensors of fitted model ``i`` and the largest LoRA truncation error (0 for full checkpoints).

    For an archive of an aligned collection (``compress(..., align=...)``) the tensors are put back in the
    model's own unit order (and scale) unless ``aligned=True``.

    Returns
    -------
    tensors : dict of str to Tensor
        File keys → tensors in the source dtypes (PEFT: ``lora_A``/``lora_B`` keys).
    max_truncation : float
        Largest relative Frobenius error of re-factoring a reconstructed ``ΔW`` at the source rank.
    """
    model = subspace.models_[i]
    name = model.name
    units = subspace.units_
    arc = subspace.archive_
    out: dict[str, torch.Tensor] = {}
    worst = 0.0
    if subspace.kind_ == "peft":
        if not model.lora:
            raise ArchiveError("a PEFT model record holds no LoRA modules", tensor=name)
        by_file_key: dict[str, torch.Tensor] = {}
        for key, rec in model.lora.items():
            if key not in units:
                raise ArchiveError("LoRA record names a unit the archive lacks", tensor=key)
            unit = units[key]
            a_shape = tuple(rec.a_shape)
            ffo, conv_a = rec.fan_in_fan_out, (a_shape if len(a_shape) > 2 else None)
            svd = unit.inverse_transform_svd(unit.coefficients[i])  # factored units: no dense ΔW
            if svd is not None:
                b, a, err = lora_factors_from_svd(*svd, rec.rank, rec.scaling, fan_in_fan_out=ffo, a_shape=conv_a)
            else:  # the member, (rows, cols) in the base weight's layout
                member = unit.member(i)
                b, a, err = lora_factors_from_delta(
                    member, rec.rank, rec.scaling, fan_in_fan_out=ffo, a_shape=conv_a
                )
            worst = max(worst, err)
            dt = _torch_dtype(model.dtypes.get(key, "F32"), name)
            by_file_key[rec.a_key] = a.to(dt)
            by_file_key[rec.b_key] = b.reshape(rec.b_shape).to(dt)
        for key in model.private:
            by_file_key[model.extra_keys.get(key, key)] = _private(arc, name, key)
        for fk in model.file_key_order or list(by_file_key):
            if fk in by_file_key:
                out[fk] = by_file_key.pop(fk)
        out.update(by_file_key)
        return out, worst
    private = set(model.private)
    for key in model.key_order:
        if key in units:
            shape = tuple(units[key].spec.shape)
            w = units[key].member(i).reshape(shape)
            if base is not None:
                w = w + base.read(key).to(torch.float64).reshape(shape)
            out[key] = w.to(_torch_dtype(model.dtypes.get(key, "F32"), name))
        elif key in private:
            out[key] = _private(arc, name, key)
    alignment = None if aligned else _alignment(subspace, name)
    if alignment is not None and name in alignment[1]:
        out = unalign_tensors(out, alignment[0], alignment[1][name])
    return out, worst


def _private(arc: Archive | None, model: str, key: str) -> torch.Tensor:
    if arc is None:
        raise ArchiveError("private tensors live in a saved archive; save() the subspace first", tensor=key)
    return arc.private(model, key)


def reconstruct(
    archive: str | os.PathLike[str] | SharedSubspace,
    out_dir: str | os.PathLike[str],
    names: Sequence[str] | None = None,
    *,
    base: str | os.PathLike[str] | None = None,
    allow_pickle: bool = False,
    aligned: bool = False,
    progress: Progress | None = None,
) -> list[ReconstructedModel]:
    """Write fitted models back as checkpoints under ``out_dir``.

    Parameters
    ----------
    archive : path or SharedSubspace
    out_dir : path
        Created if needed; each model is written atomically as ``<name>.safetensors`` or ``<name>/``.
    names : sequence of str, optional
        Models to rebuild (default: all).
    base : path, optional
        The base model for task-vector archives (default: the path recorded at compress time; its sha256
        must match).
    aligned : bool, default False
        For an archive of an aligned collection: write the aligned models instead of putting every model back
        in its own unit order.

    Returns
    -------
    list of ReconstructedModel
    """
    ss = archive if isinstance(archive, SharedSubspace) else SharedSubspace.load(archive)
    wanted = list(names) if names else list(ss.model_names_)
    indices = [ss.model_index(n) for n in wanted]
    base_src = open_base(ss, base, allow_pickle=allow_pickle)
    out_dir = Path(out_dir)
    results = []
    for done, i in enumerate(indices, 1):
        model = ss.models_[i]
        tensors, worst = reconstruct_tensors(ss, i, base_src, aligned=aligned)
        fmt = _source_layout(model)
        dest = out_dir / output_name(model.name, "torch" if fmt == "torch" else fmt)
        write_model(dest, fmt, tensors, metadata=model.metadata or None, configs=model.configs)
        results.append(ReconstructedModel(model.name, str(dest), fmt, worst))
        report(progress, "reconstruct", done, len(indices))
    return results
