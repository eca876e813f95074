"""Everything a merge checks before it writes anything: method, parameters, models, base, output layout.

:func:`plan_merge` turns the arguments of :func:`~weightspace.merge.merge` into a :class:`MergePlan`: the resolved
method and parameters, the collection, what is produced (a full model in the base's layout, or a PEFT adapter in
the first adapter's layout), every output tensor's spec, where each unit's result goes, what is copied from the
base, and what cannot be merged (private tensors) with the action taken. Reading files and mapping keys is left to
:mod:`weightspace.io` (:class:`~weightspace.io.Layout`, :func:`~weightspace.io.adapter_base_keys`,
:func:`~weightspace.io.lora_targets`).
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from weightspace._validation import NONE, Interval, Options, validate_params
from weightspace.collection import Collection
from weightspace.decompose import PCAUnit, SharedSubspace
from weightspace.errors import (
    ArchiveError,
    InputError,
    ParameterError,
    ShapeMismatchError,
    TensorKeyError,
    UnsupportedFormatError,
)
from weightspace.io import (
    Layout,
    LoraTarget,
    ModelSource,
    PeftSource,
    TensorSpec,
    adapter_base_keys,
    base_key_for,
    dtype_from_tag,
    lora_targets,
)
from weightspace.merge._registry import MERGE_METHODS, MergeMethod, MethodFn, _lookup
from weightspace.merge._result import MergeFormat, NotMerged

__all__ = ["MergePlan", "Models", "PathLike", "plan_merge"]

PathLike = str | os.PathLike[str]
Models = Collection | PathLike | Sequence[PathLike]
FormatChoice = Literal["auto", "full", "peft"]

_FORMATS = ("auto", "full", "peft")


@dataclass
class MergePlan:
    """Everything checked before a merge starts writing.

    Attributes
    ----------
    coll : Collection
        The models (and base).
    method, method_name, params
        The method (registered or a callable), its name and its resolved parameters.
    format : {"full", "peft"}
        What is produced.
    layout : Layout
        The output's layout (the base's, or the first adapter's with the new ``adapter_config.json``).
    specs : dict of str to (dtype, shape)
        Every output tensor by file key, in file order.
    unit_out : dict of str to str
        Unit → base key its merged weight is written to (full output).
    lora_out : dict of str to LoraTarget
        Unit → how its merged update is written as factors (PEFT output).
    copies : list of str
        Base keys copied verbatim (full output).
    not_merged : list of NotMerged
    rank : int or None
        Rank of a PEFT output.
    archive : object or None
        Where ``subspace`` takes each unit's basis from (``archive.basis(unit)``).
    weights : tuple of float or None
        Per-model weights, in model order.
    template : ModelSource or None
        The checkpoint a full output takes its layout and unmerged tensors from: the base, or, for a base-free
        method merging raw weights, the first model.
    add_base : bool
        Whether the merged result is added to the template's tensor (task vectors) or written as is (raw weights).
    """

    coll: Collection
    method: MergeMethod | MethodFn
    method_name: str
    params: dict[str, Any]
    format: MergeFormat
    layout: Layout
    specs: dict[str, TensorSpec]
    unit_out: dict[str, str] = field(default_factory=dict)
    lora_out: dict[str, LoraTarget] = field(default_factory=dict)
    copies: list[str] = field(default_factory=list)
    not_merged: list[NotMerged] = field(default_factory=list)
    rank: int | None = None
    archive: Any = None
    weights: tuple[float, ...] | None = None
    template: ModelSource | None = None
    add_base: bool = True

    @property
    def base(self) -> ModelSource | None:
        return self.coll.base


def _resolve_method(method: str | MergeMethod | MethodFn) -> tuple[MergeMethod | MethodFn, str]:
    registered = _lookup(method)  # unknown names raise, listing the valid ones
    if registered is not None:
        return registered, registered.name
    return method, getattr(method, "__name__", "custom")  # type: ignore[return-value]  (a plain callable)


def _resolve_params(method: MergeMethod | MethodFn, raw: Mapping[str, Any], has_archive: bool) -> dict[str, Any]:
    if not isinstance(method, MergeMethod):
        return dict(raw)
    for name in raw:
        param = method.params.get(name)
        if param is not None and not param.cli:
            hint = " Pass subspace= (--basis-archive) to give a shared basis per unit." if name == "basis" else ""
            raise ParameterError(
                f"The {name!r} parameter of merge method {method.name!r} is one tensor, not one per unit, and "
                f"cannot be set for a whole model.{hint}"
            )
    resolved = method.resolve_params(raw)
    if has_archive:
        if method.name != "subspace":
            raise ParameterError(
                f"a shared subspace (--basis-archive) applies to merge method 'subspace' only; got method {method.name!r}."
            )
        if isinstance(resolved.get("k"), float):
            raise ParameterError(
                "The 'k' parameter of merge method 'subspace' must be an int or None with a shared subspace (the "
                f"archive's basis is used as is, sliced to k rows). Got {resolved['k']!r} instead."
            )
    return resolved


def open_models(
    models: Models, base: PathLike | None, allow_pickle: bool, private: Sequence[str], exclude: Sequence[str]
) -> Collection:
    """The one rule for ``models``: a :class:`Collection` is used as is (it carries its base, private and exclude
    patterns, so those arguments must be left unset); a path or a sequence of paths is opened into one."""
    if isinstance(models, Collection):
        if base is not None or private or exclude:
            raise ParameterError(
                "base, private and exclude belong to the Collection when one is passed; build it with "
                "Collection.from_paths(models, base=..., private=..., exclude=...)."
            )
        return models
    paths = [models] if isinstance(models, (str, os.PathLike)) else list(models)
    return Collection.from_paths(
        paths, base=base, allow_pickle=allow_pickle, private=private, exclude=exclude, min_models=1
    )


def load_basis_archive(subspace: PathLike | SharedSubspace, coll: Collection) -> SharedSubspace:
    """The fitted subspace whose per-unit PCA basis ``subspace`` merges in, checked against the units to merge.

    ``subspace`` is a :class:`~weightspace.decompose.SharedSubspace` or the path of its archive.
    """
    ss = subspace if isinstance(subspace, SharedSubspace) else SharedSubspace.load(subspace)
    where = ss.path_
    for spec in coll.units:
        unit = ss.units_.get(spec.name)
        if unit is None:
            raise ArchiveError(
                "the archive has no basis for this unit of the models being merged; compress the same collection "
                "(same keys) to use its basis",
                path=where,
                tensor=spec.name,
            )
        if not isinstance(unit, PCAUnit):
            raise ArchiveError(
                f"this unit was compressed with {unit.method!r}; a subspace merge needs a PCA basis "
                f"(compress --method {PCAUnit.method})",
                path=where,
                tensor=spec.name,
            )
        if unit.spec.numel != spec.numel:
            raise ShapeMismatchError(
                f"the archive's unit has shape {tuple(unit.spec.shape)} but the models' has {spec.shape}",
                path=where,
                tensor=spec.name,
            )
    return ss


def _check_base_shapes(coll: Collection, base: ModelSource) -> None:
    """Refuse a base whose tensor disagrees with a shape every model shares (unless marked private)."""
    for p in coll.private.values():
        if any(fnmatch.fnmatchcase(p.key, pat) for pat in coll.private_patterns) or len(p.shapes) != coll.n_models:
            continue
        shapes = set(p.shapes.values())
        entry = base.entries.get(p.key)
        if entry is None or len(shapes) != 1:
            continue
        (shape,) = shapes
        if entry.shape != shape:
            raise ShapeMismatchError(
                f"the base has shape {entry.shape} but every model has {shape}; the base does not match these "
                f"models (if this is a per-task head, mark it per-model with --private '{p.key}')",
                path=base.path,
                tensor=p.key,
            )


def _adapter_base_hint(coll: Collection) -> str:
    if not coll.is_peft:
        return ""
    names = {str((s.adapter_config or {}).get("base_model_name_or_path") or "") for s in coll.sources}
    names.discard("")
    if len(names) == 1:
        return f" (adapter_config.json names {names.pop()!r} as base_model_name_or_path, which did not resolve)"
    return ""


def _plan_full(coll: Collection, plan_kw: dict[str, Any]) -> MergePlan:
    base = coll.base
    method = plan_kw["method"]
    if base is None and not coll.is_peft and isinstance(method, MergeMethod) and method.base_free:
        return _plan_raw(coll, plan_kw)
    if base is None:
        what = "PEFT adapters" if coll.is_peft else "full checkpoints"
        free = ", ".join(n for n in MERGE_METHODS.names() if MERGE_METHODS.get(n).base_free)
        raise InputError(
            f"merging {what} into a full model needs the base model they were fine-tuned from; pass --base BASE"
            + _adapter_base_hint(coll)
            + ("" if coll.is_peft else f" (methods that merge raw weights without a base: {free})"),
            path=coll.sources[0].path,
        )
    if base.format == "peft":
        raise UnsupportedFormatError(
            "the base must be a full checkpoint (a .safetensors file, an HF model directory or a pickle), "
            "not a PEFT adapter",
            path=base.path,
        )
    adapter = coll.sources[0].path
    if coll.is_peft:
        unit_out = adapter_base_keys({spec.name: spec.shape for spec in coll.units}, base, adapter=adapter)
    else:
        _check_base_shapes(coll, base)
        unit_out = {spec.name: spec.name for spec in coll.units}
    targets = set(unit_out.values())

    not_merged: list[NotMerged] = []
    left_out: set[str] = set()
    for p in coll.private.values():
        try:
            bkey: str | None = base_key_for(p.key, base, adapter=adapter) if coll.is_peft else p.key
        except TensorKeyError:
            bkey = None
        entry = base.entries.get(bkey) if bkey is not None else None
        if entry is None:
            action = "left out (the base has no such tensor)"
        elif bkey in targets:
            action = f"base key '{bkey}' holds a merged unit"
        elif entry.shape in set(p.shapes.values()) or coll.is_peft:
            # An adapter's full tensors (modules_to_save) are per-task weights, not deltas; the base's own stays.
            action = f"kept the base's tensor '{bkey}' {entry.shape}"
        else:
            action = f"left out (the base's shape {entry.shape} matches no model)"
            left_out.add(entry.key)
        not_merged.append(NotMerged(p.key, p.reason, dict(p.shapes), action, bkey))

    specs: dict[str, TensorSpec] = {}
    copies: list[str] = []
    for key, entry in base.entries.items():
        if key in left_out or entry.kind != "dense":
            continue
        specs[key] = (dtype_from_tag(entry.dtype, path=base.path, tensor=key), entry.shape)
        if key not in targets:
            copies.append(key)
    return MergePlan(
        coll=coll,
        format="full",
        layout=Layout.of(base),
        specs=specs,
        unit_out=unit_out,
        copies=copies,
        not_merged=not_merged,
        template=base,
        **plan_kw,
    )


def _plan_raw(coll: Collection, plan_kw: dict[str, Any]) -> MergePlan:
    """A base-free method on full checkpoints: merge the raw weights; layout and unmerged tensors of model 0."""
    first = coll.sources[0]
    units = {spec.name for spec in coll.units}
    not_merged = []
    for p in coll.private.values():
        entry = first.entries.get(p.key)
        action = (
            f"kept the first model's tensor {entry.shape}"
            if entry is not None and entry.kind == "dense"
            else "left out"
        )
        not_merged.append(NotMerged(p.key, p.reason, dict(p.shapes), action, p.key if entry is not None else None))
    specs: dict[str, TensorSpec] = {}
    copies: list[str] = []
    for key, entry in first.entries.items():
        if entry.kind != "dense":
            continue
        specs[key] = (dtype_from_tag(entry.dtype, path=first.path, tensor=key), entry.shape)
        if key not in units:
            copies.append(key)
    return MergePlan(
        coll=coll,
        format="full",
        layout=Layout.of(first),
        specs=specs,
        unit_out={spec.name: spec.name for spec in coll.units},
        copies=copies,
        not_merged=not_merged,
        template=first,
        add_base=False,
        **plan_kw,
    )


def _plan_peft(coll: Collection, rank: int | None, plan_kw: dict[str, Any]) -> MergePlan:
    if not coll.is_peft:
        raise InputError(
            "--format peft needs PEFT LoRA adapters as inputs; full checkpoints are merged into a full model "
            "(--format full)",
            path=coll.sources[0].path,
        )
    sources = [s for s in coll.sources if isinstance(s, PeftSource)]
    first = sources[0]  # every source of a PEFT collection is one
    out_rank = rank if rank is not None else max(mod.rank for s in sources for mod in s.modules.values())
    # The full tensors (modules_to_save) are not written, so the config must not promise them.
    overrides = {"modules_to_save": None} if coll.private else {}
    config = first.config.with_rank(out_rank, **overrides)
    lora_out = lora_targets(first, config, units=[u.name for u in coll.units])
    specs: dict[str, TensorSpec] = {}
    for t in lora_out.values():
        specs[t.a_key] = (t.dtype, t.a_shape)
        specs[t.b_key] = (t.dtype, t.b_shape)
    not_merged = [
        NotMerged(p.key, p.reason, dict(p.shapes), "left out (an adapter stores only the merged LoRA updates)")
        for p in coll.private.values()
    ]
    layout = Layout("peft", dict(first.metadata), {"adapter_config.json": json.dumps(config.raw, indent=2) + "\n"})
    return MergePlan(
        coll=coll,
        format="peft",
        layout=layout,
        specs=specs,
        lora_out=lora_out,
        not_merged=not_merged,
        rank=out_rank,
        **plan_kw,
    )


def plan_merge(
    models: Models,
    *,
    base: PathLike | None,
    method: str | MergeMethod | MethodFn,
    params: Mapping[str, Any] | None,
    format: FormatChoice,
    rank: int | None,
    subspace: SharedSubspace | PathLike | None,
    allow_pickle: bool,
    private: Sequence[str],
    exclude: Sequence[str],
    weights: Sequence[float] | None = None,
    dtype: str | None = None,
) -> MergePlan:
    """Check every argument of :func:`~weightspace.merge.merge` and lay out the output; nothing is written."""
    validate_params(
        "merge",
        {
            "format": [Options(_FORMATS)],
            "rank": [Interval(int, 1, None), NONE],
            "dtype": [Options(_OUT_DTYPES), NONE],
        },
        {"format": format, "rank": rank, "dtype": dtype},
    )
    fn, name = _resolve_method(method)
    resolved = _resolve_params(fn, dict(params or {}), subspace is not None)
    coll = open_models(models, base, allow_pickle, private, exclude)
    kind: MergeFormat = ("peft" if coll.is_peft else "full") if format == "auto" else format  # type: ignore[assignment]
    if rank is not None and kind != "peft":
        raise ParameterError("--rank sets the rank of a PEFT adapter output; it does not apply to full output.")
    archive = load_basis_archive(subspace, coll) if subspace is not None else None
    w = _check_weights(weights, coll, fn)
    plan_kw = {"method": fn, "method_name": name, "params": resolved, "archive": archive, "weights": w}
    plan = _plan_peft(coll, rank, plan_kw) if kind == "peft" else _plan_full(coll, plan_kw)
    if dtype is not None:
        plan.specs = _cast_specs(plan.specs, dtype)
    return plan


def _check_weights(
    weights: Sequence[float] | None, coll: Collection, method: MergeMethod | MethodFn
) -> tuple[float, ...] | None:
    if isinstance(method, MergeMethod) and method.n_models is not None and coll.n_models != method.n_models:
        raise ParameterError(
            f"merge method {method.name!r} merges exactly {method.n_models} models; got {coll.n_models}."
        )
    if weights is None:
        return None
    try:
        w = tuple(float(x) for x in weights)
    except (TypeError, ValueError):
        raise ParameterError(f"--weights must be numbers, one per model; got {weights!r}.") from None
    if len(w) != coll.n_models:
        raise ParameterError(
            f"--weights has {len(w)} value(s) for {coll.n_models} models ({', '.join(coll.names)}); give one per "
            "model, in the order of MODELS."
        )
    if isinstance(method, MergeMethod) and not method.weighted and any(x != 1.0 for x in w):
        takers = ", ".join(n for n in MERGE_METHODS.names() if MERGE_METHODS.get(n).weighted)
        raise ParameterError(
            f"merge method {method.name!r} takes no per-model weights (methods that do: {takers})."
        )
    return w


_OUT_DTYPES = ("float32", "float16", "bfloat16", "float64")


def _cast_specs(specs: dict[str, TensorSpec], dtype: str) -> dict[str, TensorSpec]:
    """Every floating-point output tensor in ``dtype`` (integer buffers keep theirs)."""
    import torch

    target = getattr(torch, dtype)
    return {k: ((target, shape) if dt.is_floating_point else (dt, shape)) for k, (dt, shape) in specs.items()}
