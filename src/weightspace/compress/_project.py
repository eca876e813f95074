"""Project unseen models onto an archive's subspace, always beside the mean-only baseline.

For each model and unit, with ``x`` the member (task vector or raw weight) and ``μ``, ``V`` from the archive:

* ``mean_plus_basis`` = ``‖x − μ − Vᵀ V (x − μ)‖ / ‖x‖`` (what reconstruction from the archive gives),
* ``mean_only``       = ``‖x − μ‖ / ‖x‖`` (the control: is the basis doing anything beyond the mean?),
* ``basis_only``      = ``‖x − Vᵀ V x‖ / ‖x‖`` (the subspace without the mean).

Totals pool the squared errors over units. ``add=True`` appends the models' coefficients (and private tensors)
to the archive, marked as added (not fitted), by rebuilding the archive directory atomically.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from typing import Any

import torch

from weightspace._atomic import atomic_dir
from weightspace._progress import Progress, report
from weightspace.collection import model_names
from weightspace.compress._archive import MEMBERS, Archive, member_digest
from weightspace.compress._compress import model_record
from weightspace.compress._reconstruct import open_base
from weightspace.errors import InputError, ShapeMismatchError, TensorKeyError
from weightspace.io import DTYPES, ModelSource, SafetensorsWriter, expand_models, open_source, save_safetensors
from weightspace.units import UnitMember, UnitSpec

__all__ = ["project"]

_STORAGE = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def _check_compatible(arc: Archive, src: ModelSource, specs: Sequence[UnitSpec]) -> None:
    is_peft = arc.manifest["kind"] == "peft"
    if (src.format == "peft") != is_peft:
        kind = "PEFT adapters" if is_peft else "full checkpoints"
        raise InputError(f"the archive holds {kind}; this model is {src.format}", path=src.path)
    for spec in specs:
        entry = src.entries.get(spec.name)
        if entry is None:
            raise TensorKeyError("model lacks a unit of the archive", path=src.path, tensor=spec.name)
        if entry.shape != spec.shape:
            raise ShapeMismatchError(
                f"shape {entry.shape} differs from the archive's {spec.shape}", path=src.path, tensor=spec.name
            )
        if is_peft and entry.kind != "lora":
            raise ShapeMismatchError(
                "the archive holds a LoRA update here, the model does not", path=src.path, tensor=spec.name
            )
        if not entry.is_float:
            raise ShapeMismatchError(f"dtype {entry.dtype} is not a float type", path=src.path, tensor=spec.name)


def project(
    archive: str | os.PathLike[str],
    models: Sequence[str | os.PathLike[str]],
    *,
    add: bool = False,
    base: str | os.PathLike[str] | None = None,
    allow_pickle: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Residuals of unseen models against an archive's subspace (and optionally store them in it).

    Parameters
    ----------
    archive : path
    models : sequence of path-like
        MODELS as on the command line (files, dirs, globs, ``@list``).
    add : bool, default False
        Append the projected models to the archive.
    base : path, optional
        Base model for task-vector archives (default: the recorded path; sha256 checked).

    Returns
    -------
    dict
        ``{"archive", "models": [{"name", "path", "mean_plus_basis", "mean_only", "basis_only",
        "units": [...]}], "added": bool}``.
    """
    arc = Archive(archive)
    paths = expand_models(models)
    if not paths:
        raise InputError("no models given to project")
    sources = [open_source(p, allow_pickle=allow_pickle) for p in paths]
    base_src = open_base(arc, base, allow_pickle=allow_pickle)
    specs = [UnitSpec(u["name"], tuple(u["shape"]), lora=bool(u.get("lora"))) for u in arc.manifest["units"]]
    for src in sources:
        _check_compatible(arc, src, specs)
    taken = set(arc.model_names)
    names = _fresh_names(model_names(paths), taken)
    sq = {n: {"x": 0.0, "mb": 0.0, "m": 0.0, "b": 0.0} for n in names}
    per_unit: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    new_coefs: dict[str, list[torch.Tensor]] = {s.name: [] for s in specs}
    for done, spec in enumerate(specs, 1):
        rec = arc.units[spec.name]
        mean = arc.mean(spec.name).reshape(-1)
        hosvd = rec["method"] == "hosvd"
        if hosvd:
            u, v = arc.factors(spec.name)
        else:
            basis = arc.basis(spec.name) if rec["k"] else torch.zeros(0, mean.numel(), dtype=torch.float64)
        for name, src in zip(names, sources, strict=True):
            x = UnitMember(src, spec, base=base_src).full().reshape(-1)  # (D,)
            xc = x - mean
            if hosvd:
                c = u.T @ xc.reshape(spec.rows, spec.cols) @ v  # (k1, k2)
                fit = (u @ c @ v.T).reshape(-1)
                xb = x.reshape(spec.rows, spec.cols)
                fit_raw = (u @ (u.T @ xb @ v) @ v.T).reshape(-1)
            else:
                c = basis @ xc  # (k,)
                fit = c @ basis
                fit_raw = (basis @ x) @ basis
            new_coefs[spec.name].append(c)
            parts = {
                "x": float(x @ x),
                "mb": float(((xc - fit) ** 2).sum()),
                "m": float(xc @ xc),
                "b": float(((x - fit_raw) ** 2).sum()),
            }
            for key, val in parts.items():
                sq[name][key] += val
            norm = parts["x"] ** 0.5 or 1.0
            per_unit[name].append(
                {
                    "name": spec.name,
                    "mean_plus_basis": parts["mb"] ** 0.5 / norm,
                    "mean_only": parts["m"] ** 0.5 / norm,
                    "basis_only": parts["b"] ** 0.5 / norm,
                }
            )
        report(progress, "project", done, len(specs))
    results = []
    for name, src in zip(names, sources, strict=True):
        t = sq[name]
        norm = t["x"] ** 0.5 or 1.0
        results.append(
            {
                "name": name,
                "path": str(src.path),
                "mean_plus_basis": t["mb"] ** 0.5 / norm,
                "mean_only": t["m"] ** 0.5 / norm,
                "basis_only": t["b"] ** 0.5 / norm,
                "units": per_unit[name],
            }
        )
    if add:
        _append(arc, names, sources, specs, new_coefs, results)
    return {"archive": str(arc.path), "models": results, "added": add}


def _fresh_names(names: list[str], taken: set[str]) -> list[str]:
    out = []
    for n in names:
        cand, j = n, 2
        while cand in taken:
            cand, j = f"{n}-{j}", j + 1
        taken.add(cand)
        out.append(cand)
    return out


def _append(
    arc: Archive,
    names: list[str],
    sources: list[ModelSource],
    specs: Sequence[UnitSpec],
    new_coefs: dict[str, list[torch.Tensor]],
    results: list[dict[str, Any]],
) -> None:
    manifest = json.loads(json.dumps(arc.manifest))
    dtype = _STORAGE[manifest.get("storage_dtype", "float32")]
    unit_names = {s.name for s in specs}
    excluded = set(manifest.get("excluded", []))
    coefs = {
        f"coef/{s.name}": torch.cat([arc.coefficients(s.name), torch.stack(new_coefs[s.name])]).to(dtype)
        for s in specs
    }
    old_private = arc._file("private.safetensors")
    with atomic_dir(arc.path) as tmp:
        try:
            os.link(arc.path / "basis.safetensors", tmp / "basis.safetensors")
        except OSError:
            shutil.copyfile(arc.path / "basis.safetensors", tmp / "basis.safetensors")
        save_safetensors(tmp / "coefficients.safetensors", coefs)
        specs_priv: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
        for key in old_private:
            info = old_private.info(key)
            tdt = info.torch_dtype
            assert tdt is not None
            specs_priv[key] = (tdt, info.shape)
        new_private: dict[str, list[str]] = {}
        for name, src in zip(names, sources, strict=True):
            keys = [k for k in src.entries if k not in unit_names and k not in excluded]
            new_private[name] = keys
            for k in keys:
                e = src.entries[k]
                tdt = DTYPES[e.dtype][0]
                if tdt is None:
                    raise InputError(f"dtype {e.dtype} cannot be stored", path=src.path, tensor=k)
                specs_priv[f"{name}/{k}"] = (tdt, e.shape)
        with SafetensorsWriter(tmp / "private.safetensors", specs_priv) as w:
            for key in old_private:
                w.write(key, old_private.read(key))
            for name, src in zip(names, sources, strict=True):
                for k in new_private[name]:
                    w.write(f"{name}/{k}", src.read(k))
        for name, src, res in zip(names, sources, results, strict=True):
            rec = model_record(name, src, specs, new_private[name])
            rec["added"] = True
            rec["projection"] = {k: res[k] for k in ("mean_plus_basis", "mean_only", "basis_only")}
            manifest["models"].append(rec)
        manifest["members"] = {m: member_digest(tmp / m) for m in MEMBERS}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
