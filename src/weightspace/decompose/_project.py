"""Project unseen models onto a fitted subspace, always beside the mean-only baseline (and optionally add them).

For each model and unit, with ``x`` the member (task vector or raw weight) and ``μ``, ``P`` the unit's mean and
projector (whatever its method):

* ``mean_plus_basis`` = ``‖x − μ − P(x − μ)‖ / ‖x‖`` (what reconstruction from the subspace gives),
* ``mean_only``       = ``‖x − μ‖ / ‖x‖`` (the control: is the basis doing anything beyond the mean?),
* ``basis_only``      = ``‖x − P x‖ / ‖x‖`` (the subspace without the mean).

Totals pool the squared errors over units. ``add=True`` appends the models' coefficients (and private tensors)
to the archive, marked as added (not fitted), by rebuilding the archive directory atomically; unit members are
hard-linked, so adding costs the coefficients, not the bases.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from weightspace.backends import RunOptions, Task, open_executor
from weightspace.collection import model_names
from weightspace.decompose._archive import iter_private_specs, model_record
from weightspace.decompose._unitfit import DEFAULT_CHUNK_BYTES
from weightspace.errors import ArchiveError, InputError, ParameterError, ShapeMismatchError, TensorKeyError
from weightspace.io import ModelSource, expand_models, open_source
from weightspace.units import UnitMember, UnitSpec, UnitStack

if TYPE_CHECKING:
    from weightspace.decompose.subspace import SharedSubspace

__all__ = ["ProjectResult", "ProjectedModel", "UnitResidual", "open_base", "project_models"]

Progress = Callable[[str, int, int], None]
PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class UnitResidual:
    """Relative residuals of one unit of one projected model."""

    name: str
    mean_plus_basis: float
    mean_only: float
    basis_only: float


@dataclass(frozen=True)
class ProjectedModel:
    """Relative residuals of one projected model, pooled over units, and per unit.

    Attributes
    ----------
    name : str
    path : str or None
        Source path (None for an in-memory model).
    mean_plus_basis, mean_only, basis_only : float
    units : list of UnitResidual
    coefficients : dict of str to Tensor
        The model's coefficients per unit (not part of :meth:`ProjectResult.to_dict`).
    """

    name: str
    path: str | None
    mean_plus_basis: float
    mean_only: float
    basis_only: float
    units: list[UnitResidual]
    coefficients: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class ProjectResult:
    """What ``project`` measured (and whether the models were added to the archive)."""

    archive: str | None
    models: list[ProjectedModel]
    added: bool

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (the ``--json`` output); coefficients are left out."""
        out = asdict(self)
        for m in out["models"]:
            m.pop("coefficients", None)
        return out


def open_base(
    subspace: SharedSubspace, base: PathLike | None, *, allow_pickle: bool = False
) -> ModelSource | None:
    """The base model a task-vector subspace was fitted against, checked by sha256 (None if not needed)."""
    rec = subspace.base_
    if rec is None or subspace.kind_ == "peft":
        return None
    path = base if base is not None else rec.path
    if not Path(path).exists():
        raise InputError(
            "the archive stores task vectors relative to a base model that is not at its recorded path; "
            "pass --base PATH",
            path=path,
        )
    src = open_source(path, allow_pickle=allow_pickle)
    if src.sha256() != rec.sha256:
        raise ArchiveError(
            f"base model differs from the one the archive was built with (sha256 {src.sha256()[:12]}… vs "
            f"{rec.sha256[:12]}…); reconstructing against it would give wrong weights",
            path=path,
        )
    return src


def _check_compatible(subspace: SharedSubspace, src: ModelSource, specs: Sequence[UnitSpec]) -> None:
    is_peft = subspace.kind_ == "peft"
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


def _fresh_names(names: list[str], taken: set[str]) -> list[str]:
    out = []
    for n in names:
        cand, j = n, 2
        while cand in taken:
            cand, j = f"{n}-{j}", j + 1
        taken.add(cand)
        out.append(cand)
    return out


def _pooled(
    name: str, path: str | None, parts: list[tuple[str, Any]], coefs: dict[str, torch.Tensor]
) -> ProjectedModel:
    units = []
    tot = {"x": 0.0, "mb": 0.0, "m": 0.0, "b": 0.0}
    for unit, r in parts:
        vals = {"x": r.x_sq, "mb": r.mean_plus_basis_sq, "m": r.mean_only_sq, "b": r.basis_only_sq}
        for key, val in vals.items():
            tot[key] += val
        norm = vals["x"] ** 0.5 or 1.0
        units.append(
            UnitResidual(unit, vals["mb"] ** 0.5 / norm, vals["m"] ** 0.5 / norm, vals["b"] ** 0.5 / norm)
        )
    norm = tot["x"] ** 0.5 or 1.0
    return ProjectedModel(
        name, path, tot["mb"] ** 0.5 / norm, tot["m"] ** 0.5 / norm, tot["b"] ** 0.5 / norm, units, coefs
    )


def _project_unit(shared: tuple[Any, list[ModelSource], ModelSource | None], name: str, budget: int) -> list[Any]:
    """Residuals of every projected model in unit ``name`` (a task: the unit's stored tensors are read once)."""
    subspace, sources, base_src = shared
    unit = subspace.units_[name]
    stack = UnitStack(unit.spec, [UnitMember(src, unit.spec, base=base_src) for src in sources])
    return unit.residuals_many(stack, budget_bytes=budget)


def project_models(
    subspace: SharedSubspace,
    models: Sequence[PathLike] | Sequence[Mapping[str, torch.Tensor]],
    *,
    add: bool = False,
    base: PathLike | None = None,
    allow_pickle: bool = False,
    progress: Progress | None = None,
    run: RunOptions | None = None,
) -> ProjectResult:
    """See :meth:`SharedSubspace.project`."""
    units = subspace.units_
    specs = [u.spec for u in units.values()]
    items = list(models)
    if not items:
        raise InputError("no models given to project")
    if isinstance(items[0], Mapping):
        if add:
            raise ParameterError("add=True needs model files (their source records go into the archive)")
        for i, sd in enumerate(items):
            for name in units:
                if name not in sd:  # type: ignore[operator]
                    raise TensorKeyError(f"model {i} lacks this unit", tensor=name)
        parts_of: list[list[tuple[str, Any]]] = [[] for _ in items]
        for name, unit in units.items():
            with unit.pinned():  # the unit's stored tensors are read once for all models
                for i, sd in enumerate(items):
                    parts_of[i].append((name, unit.residuals(sd[name])))  # type: ignore[index]
        results = [
            _pooled(f"model-{i}", None, parts, {name: r.coefficients for name, r in parts})
            for i, parts in enumerate(parts_of)
        ]
        return ProjectResult(None, results, False)
    paths = expand_models(items)  # type: ignore[arg-type]
    if not paths:
        raise InputError("no models given to project")
    sources = [open_source(p, allow_pickle=allow_pickle) for p in paths]
    base_src = open_base(subspace, base, allow_pickle=allow_pickle)
    for src in sources:
        _check_compatible(subspace, src, specs)
    names = _fresh_names(model_names(paths), set(subspace.model_names_))
    per_model: list[list[tuple[str, Any]]] = [[] for _ in sources]
    coefs: list[dict[str, torch.Tensor]] = [{} for _ in sources]
    opts = run if run is not None else RunOptions()
    unit_names = list(units)
    results_by_unit: dict[int, list[Any]] = {}
    with open_executor(opts) as ex:
        shared = ex.share((subspace, sources, base_src))
        budget = max(ex.task_bytes(opts.cache_bytes), DEFAULT_CHUNK_BYTES)
        tasks = [Task(_project_unit, (shared, name, budget), f"unit '{name}'") for name in unit_names]
        for u, res in ex.run(tasks):
            results_by_unit[u] = res
            if progress is not None:
                progress("project", len(results_by_unit), len(units))
    for u, name in enumerate(unit_names):
        for j, r in enumerate(results_by_unit[u]):
            per_model[j].append((name, r))
            coefs[j][name] = r.coefficients
    results = [
        _pooled(n, str(src.path), parts, c)
        for n, src, parts, c in zip(names, sources, per_model, coefs, strict=True)
    ]
    if add:
        _append(subspace, names, sources, specs, results)
    return ProjectResult(None if subspace.path_ is None else str(subspace.path_), results, add)


def _append(
    subspace: SharedSubspace,
    names: list[str],
    sources: list[ModelSource],
    specs: Sequence[UnitSpec],
    results: list[ProjectedModel],
) -> None:
    if subspace.path_ is None:
        raise ParameterError("add=True needs a saved subspace; call save(path) first")
    unit_names = {s.name for s in specs}
    excluded = set(subspace.manifest_.excluded if subspace.manifest_ is not None else [])
    new_private = {
        name: [k for k in src.entries if k not in unit_names and k not in excluded]
        for name, src in zip(names, sources, strict=True)
    }
    new_records = []
    for name, src, res in zip(names, sources, results, strict=True):
        rec = model_record(name, src, specs, new_private[name])
        new_records.append(
            rec.model_copy(
                update={
                    "added": True,
                    "projection": {
                        "mean_plus_basis": res.mean_plus_basis,
                        "mean_only": res.mean_only,
                        "basis_only": res.basis_only,
                    },
                }
            )
        )
    old_specs, old_read = subspace._private_reader()
    new_where: dict[str, tuple[int, str]] = {}
    specs_priv = dict(old_specs)
    for stored, i, key, spec in iter_private_specs(
        names, sources, sorted({k for v in new_private.values() for k in v})
    ):
        if key in new_private[names[i]]:
            specs_priv[stored] = spec
            new_where[stored] = (i, key)

    def read(stored: str) -> torch.Tensor:
        if stored in new_where:
            i, key = new_where[stored]
            return sources[i].read(key)
        return old_read(stored)

    added_coefs = {
        s.name: torch.stack([res.coefficients[s.name] for res in results]) for s in specs
    }  # (n_new, *coef_shape)
    subspace._rewrite(
        subspace.path_,
        extra_models=new_records,
        extra_coefficients=added_coefs,
        private=(specs_priv, read),
    )
