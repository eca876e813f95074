"""Merge checkpoints on disk: stream a collection unit by unit through a merge method, write the source format.

:func:`merge_models` is the file-to-file entry point behind ``weightspace merge``; :func:`merged_state_dict` is the
same pipeline with an in-memory result (for evaluation). Both merge in **ΔW space**, one unit (tensor key) at a
time, so at most one unit's N task vectors are in memory:

* **Full checkpoints** need a base. Member ``i`` of a unit is the task vector ``W_i − W_base``; the output is
  ``W_base + merge(δ_1, …, δ_N)`` for every unit, in the base's layout (single ``.safetensors`` file, HF directory
  with its ``config.json``, or sharded directory following the base's shard map) and dtypes. Base tensors that are
  not units (buffers, excluded keys) are copied verbatim.
* **PEFT LoRA adapters** are merged as their updates ``ΔW_i = s_i B_i A_i``, never factor-wise: ``B·A`` is not
  linear in the factors, and a gauge change ``(B R, Rᵀ A)`` leaves ``ΔW`` unchanged but changes factor averages.
  The merged ``ΔW`` is written either as a PEFT adapter of rank ``R`` (truncated SVD; the relative truncation error
  is reported per module) or, with ``output="full"``, added to the base model.

Private tensors (shapes differ across models, e.g. task heads; keys matched by ``private``; full tensors inside
adapters) cannot be merged. The output keeps the base's tensor where the base has that key in one of the models'
shapes and leaves the key out otherwise; every such key is listed in the summary under ``not_merged``.

Everything is checked (method, parameters, base shapes and key mapping, archive bases, output path) before
anything is written, and the output appears atomically: an error half-way leaves the destination untouched.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from weightspace._atomic import atomic_dir, atomic_file
from weightspace._progress import Progress, report
from weightspace._validation import Interval, Options, validate_params
from weightspace.collection import Collection
from weightspace.errors import (
    ArchiveError,
    InputError,
    NonFiniteError,
    ParameterError,
    ShapeMismatchError,
    TensorKeyError,
    UnsupportedFormatError,
)
from weightspace.io import (
    DTYPES,
    LoraConfig,
    ModelSource,
    PeftSource,
    SafetensorsWriter,
    is_model_dir,
    lora_factors_from_delta,
    write_model,
)
from weightspace.merge._registry import MERGE_METHODS, MergeMethod, MethodFn, merge_deltas
from weightspace.units import UnitSpec

__all__ = ["list_methods", "merge_models", "merged_state_dict", "unit_seed"]

OutputKind = Literal["auto", "full", "peft"]
PathLike = str | os.PathLike[str]
ParamValue = str | float | int | bool | None

_SHARD_INDEX = "model.safetensors.index.json"
_FILE_FORMATS = ("safetensors", "torch")


# ---------------------------------------------------------------------------------------------- small helpers


def unit_seed(seed: int, key: str) -> int:
    """Seed of the random masks of unit ``key`` for a merge run with seed ``seed``.

    DARE-style methods draw one mask per entry from a ``torch.Generator``; with a single seed for every unit, all
    units of one shape would get the same masks. Each unit instead gets ``sha256(seed, key)`` truncated to 63 bits:
    deterministic, independent of unit order, and different across keys.

    Parameters
    ----------
    seed : int
        The run's seed (the method's ``seed`` parameter).
    key : str
        The unit's tensor key.

    Returns
    -------
    int
        A seed in ``[0, 2**63)``.

    Examples
    --------
    >>> unit_seed(0, "fc1.weight") == unit_seed(0, "fc1.weight")
    True
    >>> unit_seed(0, "fc1.weight") != unit_seed(0, "fc2.weight")
    True
    """
    digest = hashlib.sha256(f"{int(seed)}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def list_methods() -> list[dict[str, Any]]:
    """Every registered merge method with its parameters (type, range, default) and reference paper.

    Returns
    -------
    list of dict
        One dict per method, sorted by name: ``name``, ``doc`` (one line), ``reference_url`` and ``params``, a list
        of ``{"name", "constraint", "default", "doc", "cli"}``.

    Examples
    --------
    >>> [m["name"] for m in list_methods()][:3]
    ['dare', 'dare_ties', 'knots']
    >>> next(p for p in list_methods()[0]["params"] if p["name"] == "p")["constraint"]
    'a float in [0, 1)'
    """
    out = []
    for name in MERGE_METHODS.names():
        method = MERGE_METHODS.get(name)
        out.append(
            {
                "name": name,
                "doc": method.doc,
                "reference_url": method.reference_url,
                "params": [
                    {
                        "name": pname,
                        "constraint": param.describe(),
                        "default": param.default,
                        "doc": param.doc,
                        "cli": param.cli,
                    }
                    for pname, param in method.params.items()
                ],
            }
        )
    return out


def _matches(key: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, pat) for pat in patterns)


def _torch_dtype(tag: str, *, path: object, key: str) -> torch.dtype:
    dtype = DTYPES.get(tag, (None, 0))[0]
    if dtype is None:
        raise UnsupportedFormatError(f"dtype {tag} is not supported by this torch build", path=path, tensor=key)
    return dtype


def _view(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape a unit is merged in: ``(d_out, prod(rest))`` for ≥2-D weights, ``(numel,)`` for vectors."""
    if len(shape) >= 2:
        return (shape[0], math.prod(shape[1:]))
    return (math.prod(shape),)


def _norm(t: Tensor) -> float:
    return float(torch.linalg.vector_norm(t))


def _rel(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


# ------------------------------------------------------------------------------------------------ the plan


@dataclass
class _LoraOut:
    """How one LoRA unit is written as an adapter module."""

    a_key: str
    b_key: str
    a_shape: tuple[int, ...]
    b_shape: tuple[int, ...]
    dtype: torch.dtype
    scaling: float
    fan_in_fan_out: bool


@dataclass
class _Plan:
    """Everything checked before a merge starts writing."""

    coll: Collection
    method: MergeMethod | MethodFn
    method_name: str
    params: dict[str, Any]
    output: Literal["full", "peft"]
    out_format: str
    specs: dict[str, tuple[torch.dtype, tuple[int, ...]]]
    unit_out: dict[str, str] = field(default_factory=dict)  # unit -> base key (full output)
    lora_out: dict[str, _LoraOut] = field(default_factory=dict)  # unit -> adapter factors (peft output)
    copies: list[str] = field(default_factory=list)  # base keys copied verbatim
    not_merged: list[dict[str, Any]] = field(default_factory=list)
    rank: int | None = None
    archive: Any = None
    adapter_config: dict[str, Any] | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    configs: dict[str, str] = field(default_factory=dict)

    @property
    def base(self) -> ModelSource | None:
        return self.coll.base


def _resolve_method(method: str | MergeMethod | MethodFn) -> tuple[MergeMethod | MethodFn, str]:
    if isinstance(method, str):
        registered = MERGE_METHODS.get(method)  # unknown names raise, listing the valid ones
        return registered, registered.name
    if isinstance(method, MergeMethod):
        return method, method.name
    attached = getattr(method, "merge_method", None)
    if isinstance(attached, MergeMethod):
        return attached, attached.name
    if callable(method):
        return method, getattr(method, "__name__", "custom")
    raise ParameterError(f"method must be a merge-method name or a callable; got {type(method).__name__}.")


def _resolve_params(method: MergeMethod | MethodFn, raw: Mapping[str, Any], has_archive: bool) -> dict[str, Any]:
    if not isinstance(method, MergeMethod):
        return dict(raw)
    for name in raw:
        param = method.params.get(name)
        if param is not None and not param.cli:
            hint = (
                " Use basis_archive (--basis-archive) to give a shared basis per unit." if name == "basis" else ""
            )
            raise ParameterError(
                f"The {name!r} parameter of merge method {method.name!r} is one tensor, not one per unit, and "
                f"cannot be set for a whole model.{hint}"
            )
    resolved = method.resolve_params(raw)
    if has_archive:
        if method.name != "subspace":
            raise ParameterError(
                f"basis_archive applies to merge method 'subspace' only; got method {method.name!r}."
            )
        if isinstance(resolved.get("k"), float):
            raise ParameterError(
                "The 'k' parameter of merge method 'subspace' must be an int or None with basis_archive (the "
                f"archive's basis is used as is, sliced to k rows). Got {resolved['k']!r} instead."
            )
    return resolved


def _open_collection(
    models: Collection | Sequence[PathLike],
    base: PathLike | None,
    allow_pickle: bool,
    private: Sequence[str],
    exclude: Sequence[str],
) -> Collection:
    if isinstance(models, Collection):
        if base is not None or private or exclude:
            raise ParameterError(
                "base, private and exclude belong to the Collection when one is passed; build it with "
                "Collection.from_paths(models, base=..., private=..., exclude=...)."
            )
        return models
    if isinstance(models, (str, os.PathLike)):
        models = [models]
    return Collection.from_paths(
        list(models), base=base, allow_pickle=allow_pickle, private=private, exclude=exclude, min_models=1
    )


def _check_base_shapes(coll: Collection) -> None:
    """Refuse a base whose tensor disagrees with a shape every model shares (unless marked private)."""
    base = coll.base
    assert base is not None  # only called for full-checkpoint collections with a base
    for p in coll.private.values():
        if _matches(p.key, coll.private_patterns) or len(p.shapes) != coll.n_models:
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


def _base_key_for(key: str, base: ModelSource, where: object) -> str:
    """The base key of a PEFT unit: exact name, else the unique dotted-suffix match in either direction.

    PEFT module names are relative to the wrapped model (``bert.encoder.layer.0.attention.self.query``), while the
    base checkpoint may be saved from the inner model (``encoder.layer.0.attention.self.query.weight``) or from a
    wrapper with a longer prefix.
    """
    if key in base.entries:
        return key
    matches = [b for b in base.entries if key.endswith("." + b) or b.endswith("." + key)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        example = next(iter(base.entries), "(none)")
        raise TensorKeyError(
            f"adapter module weight '{key}' (from {where}) has no counterpart in the base: no base key equals it "
            f"or is a dotted suffix of it (or has it as a dotted suffix); base keys look like '{example}'",
            path=base.path,
            tensor=key,
        )
    listing = ", ".join(repr(m) for m in sorted(matches)[:5])
    raise TensorKeyError(
        f"adapter module weight '{key}' (from {where}) matches several base keys by dotted suffix ({listing}); "
        "rename the base keys or the adapter modules so the match is unique",
        path=base.path,
        tensor=key,
    )


def _full_format(base: ModelSource) -> str:
    if base.format == "torch":
        return "torch-dir" if Path(base.path).is_dir() else "torch"
    if base.format == "peft":
        raise UnsupportedFormatError(
            "the base must be a full checkpoint (a .safetensors file, an HF model directory or a pickle), "
            "not a PEFT adapter",
            path=base.path,
        )
    return base.format


def _private_records(coll: Collection) -> list[dict[str, Any]]:
    return [
        {"key": p.key, "reason": p.reason, "shapes": {m: list(s) for m, s in p.shapes.items()}}
        for p in coll.private.values()
    ]


def _plan_full(coll: Collection, plan_kw: dict[str, Any]) -> _Plan:
    base = coll.base
    if base is None:
        what = "PEFT adapters" if coll.is_peft else "full checkpoints"
        raise InputError(
            f"merging {what} into a full model needs the base model they were fine-tuned from; pass --base BASE "
            "(base=...)",
            path=coll.sources[0].path,
        )
    fmt = _full_format(base)
    unit_out: dict[str, str] = {}
    if coll.is_peft:
        for spec in coll.units:
            bkey = _base_key_for(spec.name, base, coll.sources[0].path)
            if bkey in unit_out.values():
                other = next(u for u, b in unit_out.items() if b == bkey)
                raise TensorKeyError(
                    f"adapter modules '{other}' and '{spec.name}' both map to this base key",
                    path=base.path,
                    tensor=bkey,
                )
            entry = base.entries[bkey]
            if entry.shape != spec.shape:
                raise ShapeMismatchError(
                    f"the base has shape {entry.shape} but the adapter update for '{spec.name}' (from "
                    f"{coll.sources[0].path}) has shape {spec.shape}",
                    path=base.path,
                    tensor=bkey,
                )
            if not entry.is_float:
                raise UnsupportedFormatError(
                    f"base dtype {entry.dtype} is not a float type; a LoRA update cannot be added to it",
                    path=base.path,
                    tensor=bkey,
                )
            unit_out[spec.name] = bkey
    else:
        _check_base_shapes(coll)
        unit_out = {spec.name: spec.name for spec in coll.units}
    targets = set(unit_out.values())

    not_merged: list[dict[str, Any]] = []
    left_out: set[str] = set()
    for rec in _private_records(coll):
        key = rec["key"]
        try:
            bkey: str | None = _base_key_for(key, base, coll.sources[0].path) if coll.is_peft else key
        except TensorKeyError:
            bkey = None
        entry = base.entries.get(bkey) if bkey is not None else None
        model_shapes = {tuple(s) for s in rec["shapes"].values()}
        if entry is None:
            rec["action"] = "left out (the base has no such tensor)"
        elif bkey in targets:
            rec["action"] = f"base key '{bkey}' holds a merged unit"
        elif entry.shape in model_shapes or coll.is_peft:
            # An adapter's full tensors (modules_to_save) are per-task weights, not deltas; the base's own stays.
            rec["action"] = f"kept the base's tensor '{bkey}' {entry.shape}"
        else:
            rec["action"] = f"left out (the base's shape {entry.shape} matches no model)"
            left_out.add(bkey)  # type: ignore[arg-type]
        rec["base_key"] = bkey
        not_merged.append(rec)

    specs: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
    copies: list[str] = []
    for key, entry in base.entries.items():
        if key in left_out or entry.kind != "dense":
            continue
        specs[key] = (_torch_dtype(entry.dtype, path=base.path, key=key), entry.shape)
        if key not in targets:
            copies.append(key)
    configs = dict(base.configs)
    return _Plan(
        coll=coll,
        output="full",
        out_format=fmt,
        specs=specs,
        unit_out=unit_out,
        copies=copies,
        not_merged=not_merged,
        metadata=dict(base.metadata),
        configs=configs,
        **plan_kw,
    )


def _plan_peft(coll: Collection, rank: int | None, plan_kw: dict[str, Any]) -> _Plan:
    if not coll.is_peft:
        raise InputError(
            "--output peft needs PEFT LoRA adapters as inputs; full checkpoints are merged into a full model "
            "(--output full)",
            path=coll.sources[0].path,
        )
    first = coll.sources[0]
    assert isinstance(first, PeftSource)  # every source of a PEFT collection is one
    sources = [s for s in coll.sources if isinstance(s, PeftSource)]
    unit_names = {u.name for u in coll.units}
    out_rank = rank if rank is not None else max(mod.rank for s in sources for mod in s.modules.values())
    cfg = first.config
    raw = json.loads(json.dumps(cfg.raw))  # a deep copy of plain JSON
    raw["r"] = out_rank
    raw["rank_pattern"] = {}
    if coll.private:
        # The full tensors (modules_to_save) are not written, so the config must not promise them.
        raw["modules_to_save"] = None
    out_cfg = LoraConfig(
        r=out_rank,
        lora_alpha=cfg.lora_alpha,
        use_rslora=cfg.use_rslora,
        fan_in_fan_out=cfg.fan_in_fan_out,
        rank_pattern={},
        alpha_pattern=dict(cfg.alpha_pattern),
        raw=raw,
    )
    lora_out: dict[str, _LoraOut] = {}
    for key, mod in first.modules.items():
        if key not in unit_names:
            continue
        a_src = first.raw_shape(mod.a_key)
        b_src = first.raw_shape(mod.b_key)
        tag = first.entries[key].dtype
        lora_out[key] = _LoraOut(
            a_key=mod.a_key,
            b_key=mod.b_key,
            a_shape=(out_rank, *a_src[1:]),
            b_shape=(b_src[0], out_rank, *b_src[2:]),
            dtype=_torch_dtype(tag, path=first.path, key=key),
            scaling=out_cfg.scaling_for(mod.module),
            fan_in_fan_out=mod.fan_in_fan_out,
        )
    specs: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
    order = {fk: i for i, fk in enumerate(first.file_keys())}
    for out in sorted(lora_out.values(), key=lambda o: (order.get(o.a_key, 0), o.a_key)):
        specs[out.a_key] = (out.dtype, out.a_shape)
        specs[out.b_key] = (out.dtype, out.b_shape)
    not_merged = []
    for rec in _private_records(coll):
        rec["action"] = "left out (an adapter stores only the merged LoRA updates)"
        not_merged.append(rec)
    meta = dict(first.metadata)
    return _Plan(
        coll=coll,
        output="peft",
        out_format="peft",
        specs=specs,
        lora_out=lora_out,
        not_merged=not_merged,
        rank=out_rank,
        adapter_config=raw,
        metadata=meta,
        configs={"adapter_config.json": json.dumps(raw, indent=2) + "\n"},
        **plan_kw,
    )


def _check_archive(path: PathLike, coll: Collection) -> Any:
    from weightspace.compress import Archive

    arc = Archive(path)
    for spec in coll.units:
        rec = arc.units.get(spec.name)
        if rec is None:
            raise ArchiveError(
                "the archive has no basis for this unit of the models being merged; compress the same collection "
                "(same keys) to use its basis",
                path=arc.path,
                tensor=spec.name,
            )
        if rec.get("method") != "pca":
            raise ArchiveError(
                f"this unit was compressed with {rec.get('method')!r}; a subspace merge needs a PCA basis "
                "(compress --method pca)",
                path=arc.path,
                tensor=spec.name,
            )
        if int(rec["rows"]) * int(rec["cols"]) != spec.numel:
            raise ShapeMismatchError(
                f"the archive's unit has shape {tuple(rec['shape'])} but the models' has {spec.shape}",
                path=arc.path,
                tensor=spec.name,
            )
    return arc


def _check_out_path(out: PathLike, fmt: str, coll: Collection) -> Path:
    dest = Path(out)
    inputs = [Path(s.path) for s in coll.sources] + ([Path(coll.base.path)] if coll.base is not None else [])
    resolved = dest.resolve()
    for p in inputs:
        if p.resolve() == resolved:
            raise InputError(
                "refusing to write the merged model over one of its inputs; choose another -o", path=dest
            )
    if fmt in _FILE_FORMATS:
        if dest.is_dir():
            raise InputError(
                f"output is an existing directory, but the merged model is a single {fmt} file like the base; "
                "name a file, e.g. -o merged.safetensors",
                path=dest,
            )
    else:
        if dest.exists() and not dest.is_dir():
            raise InputError("output exists and is a file, but the merged model is a directory", path=dest)
        if dest.is_dir() and any(dest.iterdir()) and not is_model_dir(dest):
            raise InputError(
                "refusing to replace a non-empty directory that is not a model directory; choose another -o",
                path=dest,
            )
    return dest


def _prepare(
    models: Collection | Sequence[PathLike],
    *,
    base: PathLike | None,
    method: str | MergeMethod | MethodFn,
    params: Mapping[str, ParamValue] | None,
    output: OutputKind,
    rank: int | None,
    basis_archive: PathLike | None,
    allow_pickle: bool,
    private: Sequence[str],
    exclude: Sequence[str],
) -> _Plan:
    validate_params(
        "merge_models",
        {"output": [Options(("auto", "full", "peft"))], "rank": [Interval(int, 1, None), Options((None,))]},
        {"output": output, "rank": rank},
    )
    fn, name = _resolve_method(method)
    resolved = _resolve_params(fn, dict(params or {}), basis_archive is not None)
    coll = _open_collection(models, base, allow_pickle, private, exclude)
    kind: Literal["full", "peft"] = ("peft" if coll.is_peft else "full") if output == "auto" else output
    if rank is not None and kind != "peft":
        raise ParameterError(
            "rank (--rank) sets the rank of a PEFT adapter output; it does not apply to full output."
        )
    archive = _check_archive(basis_archive, coll) if basis_archive is not None else None
    plan_kw = {"method": fn, "method_name": name, "params": resolved, "archive": archive}
    if kind == "peft":
        return _plan_peft(coll, rank, plan_kw)
    return _plan_full(coll, plan_kw)


# ------------------------------------------------------------------------------------------------- sinks


class _MemorySink:
    def __init__(self, plan: _Plan):
        self.tensors: dict[str, Tensor] = {}
        self._order = list(plan.specs)

    def put(self, key: str, tensor: Tensor) -> None:
        self.tensors[key] = tensor

    def result(self) -> dict[str, Tensor]:
        return {k: self.tensors[k] for k in self._order if k in self.tensors}


class _WriterSink:
    def __init__(self, writers: Mapping[str, SafetensorsWriter]):
        self._writers = writers

    def put(self, key: str, tensor: Tensor) -> None:
        self._writers[key].write(key, tensor)


@contextmanager
def _file_sink(plan: _Plan, dest: Path) -> Iterator[_WriterSink | _MemorySink]:
    """A sink writing straight into the output files, swapped into place only if the block succeeds."""
    fmt = plan.out_format
    meta = dict(plan.metadata)
    meta.setdefault("format", "pt")
    if fmt in ("torch", "torch-dir"):
        # Pickles cannot be streamed; the merged model is collected and written in one go.
        memory = _MemorySink(plan)
        yield memory
        write_model(dest, fmt, memory.result(), configs=plan.configs)
        return
    if fmt == "safetensors":
        with atomic_file(dest) as tmp, SafetensorsWriter(tmp, plan.specs, meta) as w:
            yield _WriterSink(dict.fromkeys(plan.specs, w))
        return
    weights = {"hf-dir": "model.safetensors", "peft": "adapter_model.safetensors"}
    with atomic_dir(dest) as tmp:
        configs = dict(plan.configs)
        with ExitStack() as stack:
            if fmt == "hf-sharded":
                index = json.loads(configs.pop(_SHARD_INDEX, "{}") or "{}")
                old_map = index.get("weight_map", {}) if isinstance(index, dict) else {}
                fallback = sorted(set(old_map.values()))[-1] if old_map else "model-00001-of-00001.safetensors"
                by_shard: dict[str, dict[str, tuple[torch.dtype, tuple[int, ...]]]] = {}
                for key, spec in plan.specs.items():
                    by_shard.setdefault(old_map.get(key, fallback), {})[key] = spec
                writers: dict[str, SafetensorsWriter] = {}
                for shard, specs in sorted(by_shard.items()):
                    w = stack.enter_context(SafetensorsWriter(tmp / shard, specs, meta))
                    writers.update(dict.fromkeys(specs, w))
                total = sum(math.prod(s) * _itemsize(d) for d, s in plan.specs.values())
                meta_block = index.get("metadata", {}) if isinstance(index, dict) else {}
                new_index = {
                    "metadata": {**meta_block, "total_size": total},
                    "weight_map": {k: shard for shard, sp in sorted(by_shard.items()) for k in sorted(sp)},
                }
                configs[_SHARD_INDEX] = json.dumps(new_index, indent=2)
            elif fmt in weights:
                w = stack.enter_context(SafetensorsWriter(tmp / weights[fmt], plan.specs, meta))
                writers = dict.fromkeys(plan.specs, w)
            else:
                raise UnsupportedFormatError(f"cannot write format {fmt!r}", path=dest)
            yield _WriterSink(writers)
        for name, text in configs.items():
            (tmp / name).write_text(text, encoding="utf-8")


def _itemsize(dtype: torch.dtype) -> int:
    """Bytes per element of ``dtype``."""
    return torch.empty((), dtype=dtype).element_size()


# ------------------------------------------------------------------------------------------------ the merge


def _wrap(err: Exception, key: str, what: str) -> Exception:
    """Re-raise a core error with the unit key, keeping its class (and so its exit code)."""
    if isinstance(err, InputError) and err.tensor is None:
        return type(err)(f"{what}: {err.message}", path=err.path, tensor=key)
    return err


def _unit_params(plan: _Plan, spec: UnitSpec) -> dict[str, Any]:
    kwargs = dict(plan.params)
    if "seed" in kwargs and isinstance(plan.method, MergeMethod):
        kwargs["seed"] = unit_seed(kwargs["seed"], spec.name)
    if plan.archive is not None:
        kwargs["basis"] = plan.archive.basis(spec.name)  # (k, rows * cols), float64
    return kwargs


def _run(plan: _Plan, sink: _MemorySink | _WriterSink, progress: Progress | None) -> dict[str, Any]:
    coll = plan.coll
    base = plan.base
    t0 = time.perf_counter()
    unit_rows: list[dict[str, Any]] = []
    diff_sq = 0.0
    mean_sq = 0.0
    worst: tuple[float, str | None] = (0.0, None)
    for done, spec in enumerate(coll.units, 1):
        view = _view(spec.shape)
        stack = coll.stack(spec.name).chunk(0, spec.rows)  # (n_models, D), the base read once
        deltas = [stack[i].reshape(view) for i in range(coll.n_models)]  # N × view
        kwargs = _unit_params(plan, spec)
        try:
            merged = merge_deltas(plan.method, deltas, **kwargs)  # float64, view
        except InputError as err:
            raise _wrap(err, spec.name, f"merging with {plan.method_name!r}") from err
        # The plain average, for the comparison column; accumulated in place rather than stacked, so that it
        # costs one unit of memory, not N.
        mean = deltas[0].clone()
        for d in deltas[1:]:
            mean += d
        mean /= len(deltas)
        del deltas
        row: dict[str, Any] = {
            "name": spec.name,
            "shape": list(spec.shape),
            "kind": spec.kind,
            "lora": spec.lora,
            "delta_norm": _norm(merged),
            "mean_delta_norm": _norm(mean),
        }
        d = _norm(merged - mean)
        row["rel_diff_from_mean"] = _rel(d, row["mean_delta_norm"])
        diff_sq += d**2
        mean_sq += row["mean_delta_norm"] ** 2
        if "seed" in kwargs and isinstance(plan.method, MergeMethod):
            row["seed"] = kwargs["seed"]
        if plan.archive is not None:
            row["basis_k"] = int(kwargs["basis"].shape[0])
        if plan.output == "full":
            assert base is not None  # _plan_full guarantees a base
            bkey = plan.unit_out[spec.name]
            dtype, shape = plan.specs[bkey]
            w = base.read(bkey).to(torch.float64).reshape(view) + merged
            out = w.reshape(shape).to(dtype)
            if not bool(torch.isfinite(out).all()):
                raise NonFiniteError(
                    f"base + merged update is not finite in {dtype} (overflow when casting back); scale the merge "
                    "down (lam) or write a wider dtype",
                    path=base.path,
                    tensor=bkey,
                )
            sink.put(bkey, out)
            if bkey != spec.name:
                row["base_key"] = bkey
        else:
            lo = plan.lora_out[spec.name]
            a_shape = lo.a_shape if len(lo.a_shape) > 2 else None
            b, a, err = lora_factors_from_delta(
                merged, plan.rank or 1, lo.scaling, fan_in_fan_out=lo.fan_in_fan_out, a_shape=a_shape
            )
            sink.put(lo.a_key, a.to(lo.dtype))
            sink.put(lo.b_key, b.reshape(lo.b_shape).to(lo.dtype))
            row["rank"] = plan.rank
            row["truncation_error"] = err
            if worst[1] is None or err > worst[0]:
                worst = (err, spec.name)
        unit_rows.append(row)
        report(progress, "merge", done, len(coll.units))
    if plan.output == "full":
        assert base is not None
        for key in plan.copies:
            sink.put(key, base.read(key))
    summary: dict[str, Any] = {
        "method": plan.method_name,
        "params": {k: v for k, v in plan.params.items() if not isinstance(v, Tensor)},
        "n_models": coll.n_models,
        "models": list(coll.names),
        "model_paths": [str(s.path) for s in coll.sources],
        "input": "peft" if coll.is_peft else "full",
        "output": plan.output,
        "format": plan.out_format,
        "base": None if base is None else str(base.path),
        "basis_archive": None if plan.archive is None else str(plan.archive.path),
        "n_units": len(unit_rows),
        "units": unit_rows,
        "rel_diff_from_mean": _rel(math.sqrt(diff_sq), math.sqrt(mean_sq)),
        "not_merged": plan.not_merged,
        "excluded": list(coll.excluded),
        "copied_from_base": list(plan.copies),
        "wall_s": time.perf_counter() - t0,
    }
    if plan.output == "peft":
        summary["rank"] = plan.rank
        summary["adapter_config_from"] = coll.names[0]
        summary["max_truncation_error"] = worst[0]
        summary["worst_truncation_module"] = worst[1]
    return summary


# ------------------------------------------------------------------------------------------------ public API


def merge_models(
    models: Collection | Sequence[PathLike],
    *,
    base: PathLike | None = None,
    method: str | MergeMethod | MethodFn,
    params: Mapping[str, ParamValue] | None = None,
    out: PathLike,
    output: OutputKind = "auto",
    rank: int | None = None,
    basis_archive: PathLike | None = None,
    allow_pickle: bool = False,
    private: Sequence[str] = (),
    exclude: Sequence[str] = (),
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Merge N checkpoints (or LoRA adapters) in ΔW space and write the result, atomically, in the source format.

    Parameters
    ----------
    models : Collection or sequence of path
        Fine-tuned full checkpoints, or PEFT LoRA adapter directories (files, dirs, globs, ``@list.txt``); or a
        :class:`~weightspace.collection.Collection` built with its base (then ``base``, ``private`` and
        ``exclude`` must be left unset).
    base : path, optional
        The model the inputs were fine-tuned from. Required for full checkpoints (task vectors are
        ``W_i − W_base``) and for ``output="full"`` with adapters (the update is added to it).
    method : str or callable
        A name in :data:`~weightspace.merge.MERGE_METHODS` (unknown names list the valid ones), or a callable
        ``fn(deltas, **params) -> Tensor`` applied to each unit's float64 deltas.
    params : mapping of str to str, float, int or bool, optional
        Method parameters; CLI strings are coerced (``{"density": "0.3"}``) and checked against the declared
        ranges. ``seed`` (DARE methods) is the run's seed: unit ``key`` uses ``unit_seed(seed, key)``.
    out : path
        Destination: a file for a single-file base (``.safetensors``, pickle), else a directory.
    output : {"auto", "full", "peft"}, default "auto"
        ``auto`` writes adapters for adapter inputs and a full model otherwise. ``full`` with adapters merges into
        the base (PEFT module names are matched to base keys exactly, else by a unique dotted suffix).
    rank : int ≥ 1, optional
        Rank of a PEFT output (default: the largest source rank). The merged ``ΔW`` of N rank-r adapters
        generally has rank up to N·r, so the truncation error is reported per module.
    basis_archive : path, optional
        A ``.wsz`` archive of (a superset of) these models' units, compressed with ``--method pca``. With
        ``method="subspace"``, each unit's task vectors are projected on the archive's stored basis
        (``Archive.basis(unit)``, shape ``(k, rows·cols)``) instead of a basis fitted from the deltas being merged.
        Note that an archive compressed with centering stores the basis of the *centered* task vectors.
    allow_pickle : bool, default False
        Read ``.bin``/``.pt`` pickles with torch's weights-only unpickler.
    private, exclude : sequence of str
        fnmatch patterns of keys to keep per model (never merged) or to leave out of the analysis (base tensors of
        excluded keys are still copied into a full output).
    progress : callable, optional
        ``progress(stage, done, total)`` after each unit.

    Returns
    -------
    dict
        JSON-able summary: ``method``, ``params``, ``models``, ``output``, ``format``, ``out``, ``units``
        (per unit: ``delta_norm``, ``mean_delta_norm``, ``rel_diff_from_mean``, and ``rank`` /
        ``truncation_error`` for adapter output, ``seed`` for DARE methods, ``basis_k`` with an archive),
        ``rel_diff_from_mean`` overall, ``not_merged`` (key, reason, shapes, action taken), ``copied_from_base``,
        ``excluded``,
        ``max_truncation_error`` and ``worst_truncation_module`` for adapter output, ``wall_s``.

    Raises
    ------
    InputError
        Missing base for full checkpoints, PEFT output from full inputs, bad output path. Subclasses:
        :class:`~weightspace.errors.ParameterError` (unknown method or parameter, out-of-range value),
        :class:`~weightspace.errors.ShapeMismatchError` (base and models disagree), :class:`TensorKeyError`
        (an adapter module with no base counterpart), :class:`NonFiniteError`. Nothing is written on error.

    Examples
    --------
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from safetensors.torch import save_file
    >>> d = Path(tempfile.mkdtemp())
    >>> save_file({"w": torch.zeros(2, 2)}, d / "base.safetensors")
    >>> save_file({"w": torch.eye(2)}, d / "a.safetensors")
    >>> save_file({"w": 3 * torch.eye(2)}, d / "b.safetensors")
    >>> s = merge_models([d / "a.safetensors", d / "b.safetensors"], base=d / "base.safetensors",
    ...                  method="mean", out=d / "merged.safetensors")
    >>> s["n_units"], s["format"]
    (1, 'safetensors')
    >>> from weightspace.io import DTYPES, open_source, PeftSource
    >>> open_source(d / "merged.safetensors").read("w")
    tensor([[2., 0.],
            [0., 2.]])
    """
    plan = _prepare(
        models,
        base=base,
        method=method,
        params=params,
        output=output,
        rank=rank,
        basis_archive=basis_archive,
        allow_pickle=allow_pickle,
        private=private,
        exclude=exclude,
    )
    dest = _check_out_path(out, plan.out_format, plan.coll)
    with _file_sink(plan, dest) as sink:
        summary = _run(plan, sink, progress)
    summary["out"] = str(dest)
    return summary


def merged_state_dict(
    models: Collection | Sequence[PathLike],
    *,
    base: PathLike | None = None,
    method: str | MergeMethod | MethodFn,
    params: Mapping[str, ParamValue] | None = None,
    output: OutputKind = "auto",
    rank: int | None = None,
    basis_archive: PathLike | None = None,
    allow_pickle: bool = False,
    private: Sequence[str] = (),
    exclude: Sequence[str] = (),
    progress: Progress | None = None,
) -> dict[str, Tensor]:
    """:func:`merge_models` with the result in memory instead of on disk (for evaluation).

    Parameters are those of :func:`merge_models` without ``out``.

    Returns
    -------
    dict of str to Tensor
        For a full output: the base's keys (in the base's order and dtypes) with every unit replaced by
        ``W_base + merged ΔW``; private keys follow the same keep/leave-out rule. For a PEFT output: the adapter's
        file keys (``base_model.model.….lora_A.weight`` ...) with rank-``R`` factors.

    Examples
    --------
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from safetensors.torch import save_file
    >>> d = Path(tempfile.mkdtemp())
    >>> save_file({"w": torch.ones(3)}, d / "base.safetensors")
    >>> save_file({"w": torch.tensor([2.0, 1.0, 1.0])}, d / "a.safetensors")
    >>> save_file({"w": torch.tensor([1.0, 1.0, 3.0])}, d / "b.safetensors")
    >>> merged_state_dict([d / "a.safetensors", d / "b.safetensors"], base=d / "base.safetensors",
    ...                   method="task_arithmetic", params={"lam": "0.5"})["w"]
    tensor([1.5000, 1.0000, 2.0000])
    """
    tensors, _ = merge_to_memory(
        models,
        base=base,
        method=method,
        params=params,
        output=output,
        rank=rank,
        basis_archive=basis_archive,
        allow_pickle=allow_pickle,
        private=private,
        exclude=exclude,
        progress=progress,
    )
    return tensors


def merge_to_memory(
    models: Collection | Sequence[PathLike],
    *,
    base: PathLike | None = None,
    method: str | MergeMethod | MethodFn,
    params: Mapping[str, ParamValue] | None = None,
    output: OutputKind = "auto",
    rank: int | None = None,
    basis_archive: PathLike | None = None,
    allow_pickle: bool = False,
    private: Sequence[str] = (),
    exclude: Sequence[str] = (),
    progress: Progress | None = None,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """:func:`merged_state_dict` that also returns the :func:`merge_models` summary (without ``out``)."""
    plan = _prepare(
        models,
        base=base,
        method=method,
        params=params,
        output=output,
        rank=rank,
        basis_archive=basis_archive,
        allow_pickle=allow_pickle,
        private=private,
        exclude=exclude,
    )
    sink = _MemorySink(plan)
    summary = _run(plan, sink, progress)
    return sink.result(), summary
