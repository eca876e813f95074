"""Rebuild models from an archive, in the layout each came from.

Full checkpoints get back every key in the original order and dtype (units from ``μ + c V``, plus the base for
task-vector archives; private tensors verbatim). PEFT adapters become rank-r adapters again: the reconstructed
``ΔW`` of each module is truncated by SVD to the module's source rank with its ``lora_alpha`` semantics kept, and
the truncation error is reported. Everything is checked (names, base identity) before anything is written.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from weightspace._progress import Progress, report
from weightspace.compress._archive import Archive
from weightspace.errors import ArchiveError, InputError
from weightspace.io import DTYPES, ModelSource, lora_factors_from_delta, open_source, output_name, write_model

__all__ = ["open_base", "reconstruct", "reconstruct_tensors"]


def _torch_dtype(tag: str) -> torch.dtype:
    dt = DTYPES[tag][0]
    assert dt is not None
    return dt


def open_base(
    arc: Archive, base: str | os.PathLike[str] | None, *, allow_pickle: bool = False
) -> ModelSource | None:
    """The base model a task-vector archive was built against, checked by sha256 (None if not needed)."""
    rec = arc.manifest.get("base")
    if rec is None or arc.manifest["kind"] == "peft":
        return None
    path = base if base is not None else rec["path"]
    if not Path(path).exists():
        raise InputError(
            "the archive stores task vectors relative to a base model that is not at its recorded path; "
            "pass --base PATH",
            path=path,
        )
    src = open_source(path, allow_pickle=allow_pickle)
    if src.sha256() != rec["sha256"]:
        raise ArchiveError(
            f"base model differs from the one the archive was built with (sha256 {src.sha256()[:12]}… vs "
            f"{rec['sha256'][:12]}…); reconstructing against it would give wrong weights",
            path=path,
        )
    return src


def _source_layout(model: dict[str, Any]) -> str:
    fmt = model["source_format"]
    if fmt == "torch" and Path(model["source_path"]).suffix == "":
        return "torch-dir"
    return fmt


def reconstruct_tensors(arc: Archive, i: int, base: ModelSource | None) -> tuple[dict[str, torch.Tensor], float]:
    """File tensors of archived model ``i`` and the largest LoRA truncation error (0 for full checkpoints).

    Returns
    -------
    tensors : dict of str to Tensor
        File keys → tensors in the source dtypes (PEFT: ``lora_A``/``lora_B`` keys).
    max_truncation : float
        Largest relative Frobenius error of re-factoring a reconstructed ``ΔW`` at the source rank.
    """
    model = arc.manifest["models"][i]
    name = model["name"]
    units = arc.units
    out: dict[str, torch.Tensor] = {}
    worst = 0.0
    if arc.manifest["kind"] == "peft":
        lora = model["lora"]
        extras = model.get("extra_keys", {})
        by_file_key: dict[str, torch.Tensor] = {}
        for key, rec in lora.items():
            member = arc.member(i, key)  # (rows, cols) in the base weight's layout
            a_shape = tuple(rec["a_shape"])
            b, a, err = lora_factors_from_delta(
                member,
                rec["rank"],
                rec["scaling"],
                fan_in_fan_out=rec["fan_in_fan_out"],
                a_shape=a_shape if len(a_shape) > 2 else None,
            )
            worst = max(worst, err)
            dt = _torch_dtype(model["dtypes"][key])
            by_file_key[rec["a_key"]] = a.to(dt)
            by_file_key[rec["b_key"]] = b.reshape(rec["b_shape"]).to(dt)
        for key in model["private"]:
            by_file_key[extras.get(key, key)] = arc.private(name, key)
        for fk in model.get("file_key_order", list(by_file_key)):
            if fk in by_file_key:
                out[fk] = by_file_key.pop(fk)
        out.update(by_file_key)
        return out, worst
    private = set(model["private"])
    for key in model["key_order"]:
        if key in units:
            shape = tuple(units[key]["shape"])
            w = arc.member(i, key).reshape(shape)
            if base is not None:
                w = w + base.read(key).to(torch.float64).reshape(shape)
            out[key] = w.to(_torch_dtype(model["dtypes"][key]))
        elif key in private:
            out[key] = arc.private(name, key)
    return out, worst


def reconstruct(
    archive: str | os.PathLike[str] | Archive,
    out_dir: str | os.PathLike[str],
    names: Sequence[str] | None = None,
    *,
    base: str | os.PathLike[str] | None = None,
    allow_pickle: bool = False,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Write archived models back as checkpoints under ``out_dir``.

    Parameters
    ----------
    archive : path or Archive
    out_dir : path
        Created if needed; each model is written atomically as ``<name>.safetensors`` or ``<name>/``.
    names : sequence of str, optional
        Models to rebuild (default: all).
    base : path, optional
        The base model for task-vector archives (default: the path recorded at compress time; its sha256
        must match).

    Returns
    -------
    list of dict
        Per model: ``name``, ``path``, ``format`` and ``max_lora_truncation_error``.
    """
    arc = archive if isinstance(archive, Archive) else Archive(archive)
    wanted = list(names) if names else list(arc.model_names)
    indices = [arc.model_index(n) for n in wanted]
    base_src = open_base(arc, base, allow_pickle=allow_pickle)
    out_dir = Path(out_dir)
    results = []
    for done, i in enumerate(indices, 1):
        model = arc.manifest["models"][i]
        tensors, worst = reconstruct_tensors(arc, i, base_src)
        fmt = _source_layout(model)
        dest = out_dir / output_name(model["name"], "torch" if fmt == "torch" else fmt)
        write_model(dest, fmt, tensors, metadata=model.get("metadata") or None, configs=model.get("configs"))
        results.append(
            {"name": model["name"], "path": str(dest), "format": fmt, "max_lora_truncation_error": worst}
        )
        report(progress, "reconstruct", done, len(indices))
    return results
