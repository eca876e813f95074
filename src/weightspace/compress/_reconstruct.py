"""Rebuild models from an archive, in the layout each came from.

Full checkpoints get back every key in the original order and dtype (units from ``μ + c V``, plus the base for
task-vector archives; private tensors verbatim). PEFT adapters become rank-r adapters again: the reconstructed
``ΔW`` of each module is truncated by SVD to the module's source rank with its ``lora_alpha`` semantics kept, and
the truncation error is reported. Everything is checked (names, base identity) before anything is written.

The output folder is one output: every requested model is written into a temporary sibling, which is then swapped
into place in one rename, so a kill or an error leaves the previous folder or the new one, never a mix (models
rebuilt by an earlier run and not requested now are carried over by hard link; with ``--all`` the folder holds
exactly the archive's models). The folder may replace only an earlier ``reconstruct`` output unless ``overwrite``
(see :func:`weightspace._atomic.check_output`). Every written value is checked: a reconstruction that is NaN or
overflows its source dtype (float16 near 65504) fails naming the model and the tensor.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from weightspace._atomic import MARKER, atomic_dir, check_output, output_kind
from weightspace._progress import Progress, report
from weightspace.align import ALIGN_MEMBER, PermutationSpec, Transform, read_alignment, unalign_tensors
from weightspace.decompose import Archive, ModelRecord, SharedSubspace, open_base
from weightspace.errors import ArchiveError, NonFiniteError
from weightspace.io import DTYPES, ModelSource, lora_factors_from_delta, output_name, write_model

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
            member = units[key].member(i)  # (rows, cols) in the base weight's layout
            a_shape = tuple(rec.a_shape)
            b, a, err = lora_factors_from_delta(
                member,
                rec.rank,
                rec.scaling,
                fan_in_fan_out=rec.fan_in_fan_out,
                a_shape=a_shape if len(a_shape) > 2 else None,
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
                b = base.read(key).to(torch.float64).reshape(shape)
                if not bool(torch.isfinite(b).all()):
                    raise NonFiniteError("base tensor holds NaN or infinity", path=base.path, tensor=key)
                w = w + b
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


def _model_bytes(ss: SharedSubspace, i: int) -> int:
    """Bytes model ``i`` takes when rebuilt (dense units in their source dtypes; LoRA units as factors)."""
    model = ss.models_[i]
    total = 0
    for key, unit in ss.units_.items():
        tag = model.dtypes.get(key, "F32")
        item = DTYPES[tag][1] if tag in DTYPES else 4
        if model.lora and key in model.lora:
            rec = model.lora[key]
            total += (math.prod(rec.a_shape) + math.prod(rec.b_shape)) * item
        elif key in model.key_order:
            total += unit.spec.numel * item
    return total


def _link_tree(src: Path, dst: Path) -> None:
    """Carry an earlier output over into the new folder: hard links where possible, else copies."""

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    if src.is_dir() and not src.is_symlink():
        shutil.copytree(src, dst, copy_function=link, symlinks=True)
    elif src.is_file() and not src.is_symlink():
        link(str(src), str(dst))


def reconstruct(
    archive: str | os.PathLike[str] | SharedSubspace,
    out_dir: str | os.PathLike[str],
    names: Sequence[str] | None = None,
    *,
    base: str | os.PathLike[str] | None = None,
    allow_pickle: bool = False,
    aligned: bool = False,
    progress: Progress | None = None,
    overwrite: bool = False,
) -> list[ReconstructedModel]:
    """Write fitted models back as checkpoints under ``out_dir``, which is replaced as a whole, atomically.

    Parameters
    ----------
    archive : path or SharedSubspace
    out_dir : path
        The folder of rebuilt models: ``<name>.safetensors`` or ``<name>/`` per model. It is built next to its
        final place and swapped in with one rename. Models an earlier run wrote there and ``names`` does not
        request are kept; without ``names`` the folder holds exactly the archive's models.
    names : sequence of str, optional
        Models to rebuild (default: all).
    base : path, optional
        The base model for task-vector archives (default: the path recorded at compress time; its sha256
        must match).
    overwrite : bool, default False
        Replace an existing ``out_dir`` that is not an earlier ``reconstruct`` output (refused otherwise).
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
    inputs = [p for p in (ss.path_, base_src.path if base_src is not None else None) if p is not None]
    required = sum(_model_bytes(ss, i) for i in indices)
    check_output(out_dir, "models", overwrite=overwrite, inputs=inputs, required_bytes=required)
    keep_old = bool(names) and output_kind(out_dir) == "models"
    layouts = {i: _source_layout(ss.models_[i]) for i in indices}
    fnames = {i: output_name(ss.models_[i].name, "torch" if f == "torch" else f) for i, f in layouts.items()}
    results = []
    with atomic_dir(out_dir, kind="models") as tmp:
        if keep_old:
            for entry in out_dir.iterdir():
                if entry.name != MARKER and not entry.name.startswith(".") and entry.name not in fnames.values():
                    _link_tree(entry, tmp / entry.name)
        for done, i in enumerate(indices, 1):
            model = ss.models_[i]
            tensors, worst = reconstruct_tensors(ss, i, base_src, aligned=aligned)
            final = out_dir / fnames[i]
            # Errors name the final path (<out>/<model>...), not the temporary folder.
            write_model(
                tmp / fnames[i],
                layouts[i],
                tensors,
                metadata=model.metadata or None,
                configs=model.configs,
                label=final,
            )
            results.append(ReconstructedModel(model.name, str(final), layouts[i], worst))
            report(progress, "reconstruct", done, len(indices))
    return results
