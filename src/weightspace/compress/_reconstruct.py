"""Rebuild models from an archive, in the layout each came from.

Full checkpoints get back every key in the original order and dtype (units from ``μ + c V``, plus the base for
task-vector archives; private tensors verbatim). PEFT adapters become rank-r adapters again: the reconstructed
``ΔW`` of each module is truncated by SVD to the module's source rank with its ``lora_alpha`` semantics kept, and
the truncation error is reported. Factored LoRA units give that SVD from their k1 × k2 core (``U (M + C_i) Vᵀ``,
rank ≤ min(k1, k2)) without forming ``ΔW``. Everything is checked (names, base identity) before anything is written.

The output folder is one output: every requested model is written into a temporary sibling, which is then swapped
into place in one rename, so a kill or an error leaves the previous folder or the new one, never a mix (models
rebuilt by an earlier run and not requested now are carried over by hard link; with ``--all`` the folder holds
exactly the archive's models). The folder may replace only an earlier ``reconstruct`` output unless ``overwrite``
(see :func:`weightspace._atomic.check_output`). Every written value is checked: a reconstruction that is NaN or
overflows its source dtype (float16 near 65504) fails naming the model and the tensor.
"""

from __future__ import annotations

import contextlib
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
from weightspace.backends import DEFAULT_CACHE_BYTES
from weightspace.decompose import Archive, ModelRecord, SharedSubspace, member_groups, open_base
from weightspace.errors import ArchiveError, NonFiniteError
from weightspace.io import (
    DTYPES,
    Layout,
    LayoutWriter,
    ModelSource,
    check_finite_write,
    lora_factors_from_delta,
    lora_factors_from_svd,
    output_name,
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
            svd = unit.inverse_transform_svd(unit.coefficients[i])
            b, a, err = _lora_factors(rec, svd=svd, delta=None if svd is not None else unit.member(i))
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


def _output_specs(subspace: SharedSubspace, model: ModelRecord) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """Every file key :func:`reconstruct_tensors` gives model ``model``, in the same order, as (dtype, shape)."""
    units = subspace.units_
    name = model.name
    arc = subspace.archive_
    private_specs = arc.private_specs() if arc is not None and model.private else {}

    def private_spec(key: str) -> tuple[torch.dtype, tuple[int, ...]]:
        if arc is None:
            raise ArchiveError("private tensors live in a saved archive; save() the subspace first", tensor=key)
        spec = private_specs.get(f"{name}/{key}")
        if spec is None:
            raise ArchiveError("archive holds no such private tensor", tensor=f"{name}/{key}")
        return spec

    if subspace.kind_ == "peft":
        if not model.lora:
            raise ArchiveError("a PEFT model record holds no LoRA modules", tensor=name)
        by_file_key: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
        for key, rec in model.lora.items():
            if key not in units:
                raise ArchiveError("LoRA record names a unit the archive lacks", tensor=key)
            dt = _torch_dtype(model.dtypes.get(key, "F32"), name)
            by_file_key[rec.a_key] = (dt, tuple(rec.a_shape))
            by_file_key[rec.b_key] = (dt, tuple(rec.b_shape))
        for key in model.private:
            by_file_key[model.extra_keys.get(key, key)] = private_spec(key)
        out = {fk: by_file_key.pop(fk) for fk in model.file_key_order or list(by_file_key) if fk in by_file_key}
        out.update(by_file_key)
        return out
    private = set(model.private)
    specs: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
    for key in model.key_order:
        if key in units:
            specs[key] = (_torch_dtype(model.dtypes.get(key, "F32"), name), tuple(units[key].spec.shape))
        elif key in private:
            specs[key] = private_spec(key)
    return specs


class _Unalign:
    """Puts one model's tensors back in its own unit order (and scale), one tensor at a time."""

    def __init__(self, spec: PermutationSpec, transform: Transform):
        self.spec, self.transform = spec, transform

    def __call__(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        return unalign_tensors({key: tensor}, self.spec, self.transform)[key]


def _max_open_models() -> int:
    """Models written at once: their files stay open while every unit streams into them."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):  # pragma: no cover - not on POSIX
        soft = 1024
    return max(1, min(256, (soft - 64) // 4))


def reconstruct(
    archive: str | os.PathLike[str] | SharedSubspace,
    out_dir: str | os.PathLike[str],
    names: Sequence[str] | None = None,
    *,
    base: str | os.PathLike[str] | None = None,
    allow_pickle: bool = False,
    aligned: bool = False,
    progress: Progress | None = None,
    chunk_bytes: int = DEFAULT_CACHE_BYTES,
    overwrite: bool = False,
) -> list[ReconstructedModel]:
    """Write fitted models back as checkpoints under ``out_dir``, which is replaced as a whole, atomically.

    Units are the outer loop: each unit's stored tensors (mean, basis or factors) are read once and every
    requested model's member of it is computed in batched products and streamed into that model's open writer
    (up to a few hundred models at a time, the open-file limit permitting). Each model still appears atomically.

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
    chunk_bytes : int
        Budget of one batch of reconstructed members (float64).

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
    records = ss.models_
    plans = []
    for i in indices:
        model = records[i]
        fmt = _source_layout(model)
        fname = output_name(model.name, "torch" if fmt == "torch" else fmt)
        specs = _output_specs(ss, model)  # every spec checked before any write
        alignment = None if aligned or ss.kind_ == "peft" else _alignment(ss, model.name)
        undo = (
            _Unalign(alignment[0], alignment[1][model.name]) if alignment and model.name in alignment[1] else None
        )
        plans.append((i, model, fmt, fname, specs, undo))
    results: list[ReconstructedModel] = []
    step = _max_open_models()
    wanted_names = {p[3] for p in plans}
    # One temporary folder swapped in with one rename: a kill or an error leaves the previous folder or the new one.
    with atomic_dir(out_dir, kind="models") as tmp:
        if keep_old:  # models an earlier run wrote and this one does not rebuild are carried over (hard links)
            for entry in out_dir.iterdir():
                if entry.name != MARKER and not entry.name.startswith(".") and entry.name not in wanted_names:
                    _link_tree(entry, tmp / entry.name)
        for b0 in range(0, len(plans), step):
            batch = plans[b0 : b0 + step]
            worst = [0.0] * len(batch)
            with contextlib.ExitStack() as stack:
                writers = [
                    stack.enter_context(
                        LayoutWriter(
                            tmp / fname,
                            Layout(fmt, dict(model.metadata or {}), dict(model.configs or {})),
                            specs,
                            label=out_dir / fname,  # errors name the final path, not the temporary folder
                        )
                    )
                    for _, model, fmt, fname, specs, _ in batch
                ]
                for key, unit in ss.units_.items():
                    _write_unit(ss, key, unit, batch, writers, worst, base_src, chunk_bytes)
                for j, (_, model, _, _, _, undo) in enumerate(batch):
                    for key in model.private:
                        fk = model.extra_keys.get(key, key) if ss.kind_ == "peft" else key
                        t = _private(ss.archive_, model.name, key)
                        writers[j].write(fk, undo(fk, t) if undo is not None else t)
            for j, (_, model, fmt, fname, _, _) in enumerate(batch):
                results.append(ReconstructedModel(model.name, str(out_dir / fname), fmt, worst[j]))
            report(progress, "reconstruct", len(results), len(plans))
    return results


def _lora_factors(
    rec: Any,
    *,
    svd: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    delta: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Rank-r factors ``(B, A, relative error)`` of the module ``rec`` describes, from the update's thin SVD (a
    factored unit's, from its k1 × k2 core: no dense ΔW) or else from ``delta``, the dense update in the base
    weight's layout."""
    a_shape = tuple(rec.a_shape)
    ffo, conv_a = rec.fan_in_fan_out, (a_shape if len(a_shape) > 2 else None)
    if svd is not None:
        return lora_factors_from_svd(*svd, rec.rank, rec.scaling, fan_in_fan_out=ffo, a_shape=conv_a)
    assert delta is not None
    return lora_factors_from_delta(delta, rec.rank, rec.scaling, fan_in_fan_out=ffo, a_shape=conv_a)


def _write_lora(
    writer: LayoutWriter, model: ModelRecord, key: str, factors: tuple[torch.Tensor, torch.Tensor, float]
) -> float:
    """Write model ``model``'s factors of module ``key`` in its source dtype; return the relative error."""
    assert model.lora is not None
    rec = model.lora[key]
    b, a, err = factors
    dt = _torch_dtype(model.dtypes.get(key, "F32"), model.name)
    writer.write(rec.a_key, a.to(dt))
    writer.write(rec.b_key, b.reshape(rec.b_shape).to(dt))
    return err


def _write_unit(
    ss: SharedSubspace,
    key: str,
    unit: Any,
    batch: Sequence[tuple[int, ModelRecord, str, Path, Any, _Unalign | None]],
    writers: Sequence[LayoutWriter],
    worst: list[float],
    base: ModelSource | None,
    chunk_bytes: int,
) -> None:
    """Stream unit ``key`` of every model in ``batch`` into its writer, the unit's stored tensors read once."""
    peft = ss.kind_ == "peft"
    wanted = [j for j, (_, model, *_) in enumerate(batch) if not peft or (model.lora and key in model.lora)]
    if not wanted:
        return
    shape = tuple(unit.spec.shape)
    base_w = None if peft or base is None else base.read(key).to(torch.float64).reshape(shape)
    if base_w is not None and not bool(torch.isfinite(base_w).all()):
        assert base is not None
        raise NonFiniteError("base tensor holds NaN or infinity", path=base.path, tensor=key)
    with unit.pinned():
        if peft:  # factored units give each adapter's SVD from its k1 × k2 core, with no dense ΔW
            dense = []
            for j in wanted:
                model = batch[j][1]
                assert model.lora is not None
                svd = unit.inverse_transform_svd(unit.coefficients[batch[j][0]])
                if svd is None:
                    dense.append(j)
                    continue
                factors = _lora_factors(model.lora[key], svd=svd)
                worst[j] = max(worst[j], _write_lora(writers[j], model, key, factors))
            wanted = dense
        for g0, g1 in member_groups(len(wanted), unit.spec.numel, chunk_bytes):
            group = wanted[g0:g1]
            members = unit.members([batch[j][0] for j in group])  # (b, rows, cols), float64
            for m, j in zip(members, group, strict=True):
                model = batch[j][1]
                if peft:
                    assert model.lora is not None
                    factors = _lora_factors(model.lora[key], delta=m)
                    worst[j] = max(worst[j], _write_lora(writers[j], model, key, factors))
                    continue
                w = m.reshape(shape)
                if base_w is not None:
                    w = w + base_w
                stored = w.to(_torch_dtype(model.dtypes.get(key, "F32"), model.name))
                check_finite_write(w, stored, path=writers[j].label, tensor=key)  # names an overflow as such
                w = stored
                undo = batch[j][5]
                writers[j].write(key, undo(key, w) if undo is not None else w)
