"""Compress a collection into a ``.wsz`` archive, streaming unit by unit.

Two passes per unit. Pass 1 computes every unit's spectrum (Gram or TSQR for PCA, mode scatters for HOSVD) and
so fixes every ``k``; that is what lets ``basis.safetensors`` lay out its header before any basis exists. Pass 2
streams each unit's mean and basis straight into that file, chunk by chunk. Peak memory is therefore about
``N² + one chunk`` per unit on top of the interpreter, not the collection or even one unit across all models.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import weightspace
from weightspace._atomic import atomic_dir
from weightspace._progress import Progress, report
from weightspace._validation import Options, validate_params
from weightspace.collection import Collection
from weightspace.compress._archive import FORMAT, MEMBERS, VERSION, member_digest
from weightspace.decompose.hosvd import HOSVDUnitFit, hosvd_cores, hosvd_factors
from weightspace.decompose.pca import DEFAULT_CHUNK_BYTES, pca_components, pca_spectrum
from weightspace.decompose.rank import explained_variance_ratio
from weightspace.decompose.subspace import SharedSubspace, _scalar_rank
from weightspace.io import DTYPES, ModelSource, PeftSource, SafetensorsWriter, save_safetensors
from weightspace.units import UnitSpec, UnitStack

__all__ = ["compress", "model_record"]

_STORAGE = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


@dataclass
class _PCAPlan:
    """Phase-1 result kept between passes (the N × N Gram is dropped)."""

    center: bool
    singular_values: torch.Tensor
    left: torch.Tensor
    k: int
    solver: str
    mean_energy_fraction: float


def model_record(
    name: str, src: ModelSource, units: Sequence[UnitSpec], private_keys: Sequence[str]
) -> dict[str, Any]:
    """Everything ``reconstruct`` needs to write model ``name`` back in its own layout."""
    rec: dict[str, Any] = {
        "name": name,
        "source_path": str(Path(src.path).resolve()),
        "source_format": src.format,
        "source_sha256": src.sha256(),
        "source_bytes": src.nbytes_on_disk(),
        "metadata": src.metadata,
        "configs": src.configs,
        "dtypes": {u.name: src.entries[u.name].dtype for u in units},
        "private": list(private_keys),
        "key_order": list(src.entries),
    }
    if isinstance(src, PeftSource):
        rec["lora"] = {
            key: {
                "a_key": mod.a_key,
                "b_key": mod.b_key,
                "rank": mod.rank,
                "scaling": mod.scaling,
                "fan_in_fan_out": mod.fan_in_fan_out,
                "a_shape": list(src.raw_shape(mod.a_key)),
                "b_shape": list(src.raw_shape(mod.b_key)),
            }
            for key, mod in src.modules.items()
            if any(u.name == key for u in units)
        }
        rec["extra_keys"] = dict(src.extra_keys)
        rec["file_key_order"] = src.file_keys()
    return rec


def compress(
    collection: Collection,
    out: str | os.PathLike[str],
    *,
    method: str = "pca",
    n_components: int | float = 16,
    center: bool = True,
    svd_solver: str = "auto",
    modes: tuple[int, ...] = (1, 2),
    storage_dtype: str = "float32",
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Fit the shared subspace of ``collection`` and write it as an archive at ``out``.

    Parameters
    ----------
    collection : Collection
    out : path
        Archive directory (conventionally ``*.wsz``); replaced atomically if it exists.
    method, n_components, center, svd_solver, modes, chunk_bytes
        As in :class:`~weightspace.decompose.SharedSubspace`.
    storage_dtype : {"float32", "float64", "float16", "bfloat16"}
        dtype of the stored mean, basis and coefficients.
    progress : callable, optional
        ``progress(stage, done, total)``.

    Returns
    -------
    dict
        Summary: sizes on disk (measured), ratio, per-unit k and explained variance, wall time.
    """
    t0 = time.perf_counter()
    SharedSubspace(
        n_components=n_components,
        method=method,
        center=center,
        svd_solver=svd_solver,
        modes=modes,
        chunk_bytes=chunk_bytes,
    )._validate()
    validate_params("compress", {"storage_dtype": [Options(tuple(_STORAGE))]}, {"storage_dtype": storage_dtype})
    dtype = _STORAGE[storage_dtype]
    units = collection.units
    n = collection.n_models
    plans: dict[str, _PCAPlan | HOSVDUnitFit] = {}
    for i, spec in enumerate(units):
        stack = collection.stack(spec.name)
        if method == "hosvd" and spec.kind == "matrix":
            plans[spec.name] = hosvd_factors(stack, n_components, center=center, modes=modes)
        else:
            sp = pca_spectrum(
                stack, _scalar_rank(n_components), center=center, svd_solver=svd_solver, chunk_bytes=chunk_bytes
            )
            plans[spec.name] = _PCAPlan(
                center, sp.singular_values, sp.left, sp.k, sp.solver, sp.mean_energy_fraction
            )
        report(progress, "spectra", i + 1, len(units))

    basis_specs: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
    for spec in units:
        plan = plans[spec.name]
        basis_specs[f"mean/{spec.name}"] = (dtype, spec.shape)
        if isinstance(plan, HOSVDUnitFit):
            basis_specs[f"U/{spec.name}"] = (dtype, (spec.rows, plan.k1))
            basis_specs[f"V/{spec.name}"] = (dtype, (spec.cols, plan.k2))
        else:
            basis_specs[f"basis/{spec.name}"] = (dtype, (plan.k, *spec.shape))

    unit_records: list[dict[str, Any]] = []
    coefficients: dict[str, torch.Tensor] = {}
    with atomic_dir(out) as tmp:
        with SafetensorsWriter(tmp / "basis.safetensors", basis_specs) as wb:
            for i, spec in enumerate(units):
                stack = collection.stack(spec.name)
                plan = plans[spec.name]
                if isinstance(plan, HOSVDUnitFit):
                    wb.write(f"mean/{spec.name}", plan.mean.reshape(spec.shape))
                    wb.write(f"U/{spec.name}", plan.u)
                    wb.write(f"V/{spec.name}", plan.v)
                    coefficients[f"coef/{spec.name}"] = hosvd_cores(stack, plan).to(dtype)
                    unit_records.append(_hosvd_record(spec, plan))
                    plan.mean = torch.empty(0)  # release the mean as soon as it is written
                else:
                    _stream_pca_unit(wb, spec, stack, plan, chunk_bytes)
                    coefficients[f"coef/{spec.name}"] = (plan.left * plan.singular_values[: plan.k]).to(dtype)
                    unit_records.append(_pca_record(spec, plan))
                report(progress, "basis", i + 1, len(units))
        save_safetensors(tmp / "coefficients.safetensors", coefficients)
        private_by_model = _write_private(tmp / "private.safetensors", collection)
        models = [
            model_record(name, src, units, private_by_model[name])
            for name, src in zip(collection.names, collection.sources, strict=True)
        ]
        members = {m: member_digest(tmp / m) for m in MEMBERS}
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "created_by": f"weightspace {weightspace.__version__}",
            "method": method,
            "n_components": n_components,
            "center": center,
            "svd_solver": svd_solver,
            "modes": list(modes),
            "storage_dtype": storage_dtype,
            "kind": "peft" if collection.is_peft else "full",
            "delta": collection.is_delta,
            "base": _base_record(collection),
            "models": models,
            "units": unit_records,
            "private": [
                {"key": p.key, "reason": p.reason, "shapes": {m: list(s) for m, s in p.shapes.items()}}
                for p in collection.private.values()
            ],
            "excluded": collection.excluded,
            "members": members,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        archive_bytes = sum(f.stat().st_size for f in tmp.iterdir())
    model_bytes = sum(m["source_bytes"] for m in models)
    return {
        "archive": str(out),
        "n_models": n,
        "n_units": len(units),
        "method": method,
        "archive_bytes": archive_bytes,
        "models_bytes": model_bytes,
        "ratio": model_bytes / archive_bytes if archive_bytes else float("inf"),
        "units": [
            {k: r[k] for k in ("name", "shape", "method", "k", "k1", "k2", "evr_at_k", "solver") if k in r}
            for r in unit_records
        ],
        "n_private": len(collection.private),
        "wall_s": time.perf_counter() - t0,
    }


def _stream_pca_unit(
    wb: SafetensorsWriter, spec: UnitSpec, stack: UnitStack, plan: _PCAPlan, chunk_bytes: int
) -> None:
    d = spec.numel
    cols = spec.cols
    mean_key, basis_key = f"mean/{spec.name}", f"basis/{spec.name}"

    def sink(r0: int, r1: int, mean_c: torch.Tensor, basis_c: torch.Tensor) -> None:
        wb.write_flat(mean_key, r0 * cols, mean_c)
        for j in range(basis_c.shape[0]):
            wb.write_flat(basis_key, j * d + r0 * cols, basis_c[j])

    pca_components(stack, plan, chunk_bytes=chunk_bytes, sink=sink)


def _spec_record(spec: UnitSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "shape": list(spec.shape),
        "rows": spec.rows,
        "cols": spec.cols,
        "kind": spec.kind,
        "lora": spec.lora,
    }


def _pca_record(spec: UnitSpec, plan: _PCAPlan) -> dict[str, Any]:
    evr = explained_variance_ratio(plan.singular_values)
    return {
        **_spec_record(spec),
        "method": "pca",
        "k": plan.k,
        "solver": plan.solver,
        "singular_values": plan.singular_values.tolist(),
        "evr": evr.tolist(),
        "evr_at_k": float(evr[: plan.k].sum()),
        "mean_energy_fraction": plan.mean_energy_fraction,
    }


def _hosvd_record(spec: UnitSpec, fit: HOSVDUnitFit) -> dict[str, Any]:
    return {
        **_spec_record(spec),
        "method": "hosvd",
        "k1": fit.k1,
        "k2": fit.k2,
        "modes": list(fit.modes),
        "mode1_singular_values": fit.mode1_values.tolist(),
        "mode2_singular_values": fit.mode2_values.tolist(),
        "evr_at_k": fit.captured_fraction,
        "mean_energy_fraction": fit.mean_energy_fraction,
    }


def _base_record(collection: Collection) -> dict[str, Any] | None:
    if collection.base is None:
        return None
    b = collection.base
    return {"path": str(Path(b.path).resolve()), "format": b.format, "sha256": b.sha256()}


def _write_private(path: Path, collection: Collection) -> dict[str, list[str]]:
    specs: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
    where: list[tuple[int, str, str]] = []
    owned: dict[str, list[str]] = {name: [] for name in collection.names}
    for key in collection.private:
        for i, (name, src) in enumerate(zip(collection.names, collection.sources, strict=True)):
            entry = src.entries.get(key)
            if entry is None:
                continue
            tdt = DTYPES[entry.dtype][0]
            assert tdt is not None
            specs[f"{name}/{key}"] = (tdt, entry.shape)
            where.append((i, key, f"{name}/{key}"))
            owned[name].append(key)
    with SafetensorsWriter(path, specs) as w:
        for i, key, out_key in where:
            w.write(out_key, collection.read_private(i, key))
    return owned
