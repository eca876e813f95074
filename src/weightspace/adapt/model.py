"""Inject, save, load and merge coefficient-only subspace adapters on any torch model.

Which weight a layer ends up with depends on what the archive's members are:

* **task vectors** (``manifest["delta"]`` true: compressed with ``--base``, or PEFT adapters): the adapter adds
  ``ΔW = m·μ + Σ c_j V_j`` to the model's own weights, ``W = W0 + ΔW``. The model must therefore hold the
  archive's base weights (``manifest["base"]`` records its path and sha256) — load them before ``inject``;
* **raw weights** (no base): ``W = m·μ + Σ c_j V_j`` *replaces* ``W0`` (the model's weights are ignored while
  the adapter is active and restored by :func:`unload`). Without the mean this is only meaningful for an
  archive fitted with ``center=False``, and ``inject`` warns otherwise.

Only coefficient vectors (and ``modules_to_save``, e.g. task heads) require grad after :func:`inject`; every
other parameter is frozen, and :func:`merge_into_base` / :func:`unload` restore the original flags.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from weightspace._atomic import atomic_dir
from weightspace._version import __version__
from weightspace.adapt.config import ADAPTER_TYPE, SubspaceAdapterConfig, matches_module
from weightspace.adapt.layer import SubspaceLayer, supports, wrap_layer
from weightspace.decompose import UNIT_FITS, Parametrisation, SharedSubspace, unit_fit_for
from weightspace.errors import (
    ArchiveError,
    InputError,
    ParameterError,
    ShapeMismatchError,
    TensorKeyError,
)
from weightspace.io import SafetensorsFile, save_safetensors
from weightspace.units import UnitSpec

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "adapter_layers",
    "archive_fingerprint",
    "inject",
    "load",
    "merge_into_base",
    "save",
    "trainable_parameters",
    "unload",
]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_FORMAT_VERSION = 1
_STATE_ATTR = "_weightspace_adapter"


@dataclass
class _AdapterState:
    """What ``inject`` leaves on the model (as a plain attribute) for save/merge/unload."""

    config: SubspaceAdapterConfig
    delta: bool
    archive_path: str | None
    archive_sha256: str | None
    modules_to_save: list[str]
    requires_grad: dict[str, bool] = field(default_factory=dict)


@dataclass
class _Target:
    name: str
    module: nn.Module
    weight: Parametrisation
    bias: Parametrisation | None


def archive_fingerprint(path: str | os.PathLike[str]) -> str:
    """sha256 of an archive's ``manifest.json``, which pins every member's sha256: the archive's identity."""
    p = Path(path) / "manifest.json"
    try:
        return hashlib.sha256(p.read_bytes()).hexdigest()
    except OSError as err:
        raise ArchiveError(f"cannot read the manifest ({err.strerror})", path=p) from None


def adapter_layers(model: nn.Module) -> dict[str, SubspaceLayer]:
    """Every :class:`SubspaceLayer` of ``model`` by module name, in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, SubspaceLayer)}


def _state(model: nn.Module) -> _AdapterState:
    state = getattr(model, _STATE_ATTR, None)
    if not isinstance(state, _AdapterState):
        raise ParameterError("model carries no subspace adapter; call weightspace.adapt.inject (or load) first")
    return state


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _modules_to_save(model: nn.Module, patterns: tuple[str, ...]) -> list[str]:
    names = [n for n, _ in model.named_modules() if n and matches_module(n, patterns)]
    # A pattern that also matches the children of a matched module ("head" and "head.0") keeps the outermost.
    outer = [n for n in names if not any(n.startswith(o + ".") for o in names if o != n)]
    for pat in patterns:
        if not any(matches_module(n, [pat]) for n in names):
            raise InputError(f"modules_to_save pattern {pat!r} matches no module of the model")
    return outer


def _listing(names: list[str], limit: int = 8) -> str:
    more = f", … ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(repr(n) for n in names[:limit]) + more


# ------------------------------------------------------------------------------------------------ planning
def _plan(model: nn.Module, config: SubspaceAdapterConfig, archive: SharedSubspace) -> list[_Target]:
    save_names = _modules_to_save(model, config.modules_to_save) if config.modules_to_save else []

    def saved(name: str) -> bool:
        return any(name == s or name.startswith(s + ".") for s in save_names)

    matrix_units = [u for u, fit in archive.units_.items() if fit.spec.kind == "matrix"]
    chosen: list[tuple[str, nn.Module]] = []
    if config.target_modules is None:
        for name, mod in model.named_modules():
            if name and supports(mod) and not saved(name) and f"{name}.weight" in matrix_units:
                chosen.append((name, mod))
        if not chosen:
            supported = [n for n, m in model.named_modules() if n and supports(m)]
            raise InputError(
                "no Linear/Conv module of the model has a weight key that is a matrix unit of the archive "
                f"(modules: {_listing(supported)}; archive units: {_listing(matrix_units)}); pass target_modules "
                "or use the model the archive was fitted on",
                path=archive.path_,
            )
    else:
        for name, mod in model.named_modules():
            if not name or not matches_module(name, config.target_modules):
                continue
            if saved(name):
                raise ParameterError(
                    f"module '{name}' matches both target_modules and modules_to_save; a module is either "
                    "re-parametrised or fully trained"
                )
            if supports(mod):
                chosen.append((name, mod))
            elif not any(True for _ in mod.children()):
                raise ParameterError(
                    f"target module '{name}' is a {type(mod).__name__}; only nn.Linear and nn.Conv1d/2d/3d can be "
                    "re-parametrised. Narrow target_modules"
                )
        if not chosen:
            supported = [n for n, m in model.named_modules() if n and supports(m)]
            raise InputError(
                f"target_modules {list(config.target_modules)} match no Linear/Conv module of the model "
                f"(modules: {_listing(supported)})"
            )
    targets = []
    for name, mod in chosen:
        weight = _unit_basis(archive, config, name, mod, "weight")
        bias = None
        if (
            config.bias == "subspace"
            and getattr(mod, "bias", None) is not None
            and f"{name}.bias" in archive.units_
        ):
            bias = _unit_basis(archive, config, name, mod, "bias")
        targets.append(_Target(name, mod, weight, bias))
    return targets


def _unit_basis(
    archive: SharedSubspace, config: SubspaceAdapterConfig, name: str, mod: nn.Module, role: str
) -> Parametrisation:
    unit = f"{name}.{role}"
    tensor: torch.Tensor = getattr(mod, role)
    fit = archive.units_.get(unit)
    if fit is None:
        near = [u for u in archive.units_ if u.endswith("." + role)]
        raise TensorKeyError(
            f"target module '{name}' has no matching unit in the archive (looked for '{unit}'; archive units: "
            f"{_listing(near)}); check target_modules or the archive",
            path=archive.path_,
            tensor=unit,
        )
    if tuple(fit.spec.shape) != tuple(tensor.shape):
        raise ShapeMismatchError(
            f"module '{name}' {role} has shape {tuple(tensor.shape)} but archive unit '{unit}' has shape "
            f"{tuple(fit.spec.shape)}; the archive was fitted on another architecture",
            path=archive.path_,
            tensor=unit,
        )
    # The variant names a method; the registry says which fit it gives this unit (e.g. auto → pca for full weights).
    if (
        role == "weight"
        and config.variant is not None
        and fit.method != unit_fit_for(config.variant, fit.spec).method
    ):
        raise ParameterError(
            f"archive unit '{unit}' was fitted with {fit.method}, but the adapter variant is {config.variant!r}; "
            f"pass variant={fit.method!r} or leave variant unset (or recompress the archive with --method "
            f"{config.variant})"
        )
    k = config.capped(unit, fit.k)  # type: ignore[arg-type]
    return fit.parametrisation(k, init=config.init, use_mean=config.use_mean)


# ------------------------------------------------------------------------------------------------ install
def _install(
    model: nn.Module,
    config: SubspaceAdapterConfig,
    targets: list[_Target],
    save_names: list[str],
    *,
    delta: bool,
    archive_path: str | None,
    archive_sha256: str,
) -> nn.Module:
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    layers = []
    for t in targets:
        layer = wrap_layer(t.module, delta=delta)
        layer.update_layer(t.weight, t.bias, persistent=config.save_basis)
        layers.append((t.name, layer))
    # Replace only after every layer was built, so a failure leaves the model untouched.
    for name, layer in layers:
        _set_module(model, name, layer)
    for p in model.parameters():
        p.requires_grad_(False)
    for _, layer in layers:
        for role in layer.units:
            getattr(layer, f"{role}_coef").requires_grad_(True)
    for name in save_names:
        for p in model.get_submodule(name).parameters():
            p.requires_grad_(True)
    state = _AdapterState(
        config.replace(archive_sha256=archive_sha256), delta, archive_path, archive_sha256, save_names, flags
    )
    object.__setattr__(model, _STATE_ATTR, state)
    return model


def inject(model: nn.Module, config: SubspaceAdapterConfig, subspace: SharedSubspace | None = None) -> nn.Module:
    """Re-parametrise the targeted layers of ``model`` inside a shared subspace (in place).

    Parameters
    ----------
    model : nn.Module
        A model whose targeted layers' weight keys (``"<module>.weight"``) are units of the subspace. For a
        task-vector subspace it must hold the base weights the subspace was fitted against.
    config : SubspaceAdapterConfig
    subspace : SharedSubspace, optional
        The fitted subspace; default ``SharedSubspace.load(config.archive)``. A subspace that lives only in
        memory (never saved) can be trained, merged and saved with ``save_basis=True``.

    Returns
    -------
    nn.Module
        ``model`` itself, with :class:`~weightspace.adapt.layer.SubspaceLayer` modules in place of the targets,
        every parameter frozen except the coefficients and ``modules_to_save``.

    Raises
    ------
    ArchiveError
        The archive is missing or corrupt.
    TensorKeyError
        A targeted module has no unit in the archive (the message names the module and the unit looked for).
    ShapeMismatchError
        A targeted module's weight shape differs from its unit's shape (both are named).
    ParameterError
        The model already has an adapter, the variant differs from the archive's method, or ``k`` exceeds the
        archive with ``strict_k=True`` (otherwise ``k`` is capped with a :class:`~weightspace.adapt.KCapWarning`).

    Examples
    --------
    >>> import tempfile, torch
    >>> from weightspace.collection import Collection
    >>> from weightspace.compress import compress
    >>> from weightspace.io import save_safetensors
    >>> d = tempfile.mkdtemp()
    >>> g = torch.Generator().manual_seed(0)
    >>> for i in range(4):
    ...     save_safetensors(f"{d}/m{i}.safetensors", {"fc.weight": torch.randn(2, 3, generator=g)})
    >>> _ = compress(Collection.from_paths([d]), f"{d}/a.wsz", n_components=2)
    >>> net = nn.Module(); net.fc = nn.Linear(3, 2, bias=False)
    >>> net = inject(net, SubspaceAdapterConfig(f"{d}/a.wsz"))  # raw archive: W = μ + Σ c_j V_j replaces W0
    >>> trainable_parameters(net)["coefficients"], type(net.fc).__name__
    (2, 'SubspaceLinear')
    """
    if not isinstance(config, SubspaceAdapterConfig):
        raise ParameterError(f"config must be a SubspaceAdapterConfig, got {type(config).__name__}")
    if getattr(model, _STATE_ATTR, None) is not None or adapter_layers(model):
        raise ParameterError("model already carries a subspace adapter; call unload() or merge_into_base() first")
    if subspace is None:
        if config.archive is None:
            raise ParameterError("pass a SharedSubspace, or an archive path in the config")
        subspace = SharedSubspace.load(config.archive)
    archive = subspace
    path = archive.path_
    sha = archive_fingerprint(path) if path is not None else None
    delta = archive.delta_
    if not delta and not config.use_mean and archive.center:
        warnings.warn(
            "raw-weight archive (no base) with use_mean=False: W = Σ c_j V_j replaces the model's weights without "
            "the mean, far from any trained model; use_mean=True is almost always what you want",
            UserWarning,
            stacklevel=2,
        )
    targets = _plan(model, config, archive)
    save_names = _modules_to_save(model, config.modules_to_save) if config.modules_to_save else []
    return _install(
        model,
        config,
        targets,
        save_names,
        delta=delta,
        archive_path=None if path is None else str(path.resolve()),
        archive_sha256=sha,
    )


# ------------------------------------------------------------------------------------------------ queries
def trainable_parameters(model: nn.Module) -> dict[str, Any]:
    """Exact counts of what trains after :func:`inject`.

    Returns
    -------
    dict
        ``coefficients`` (sum of ``k`` or ``k1·k2`` over re-parametrised tensors), ``modules_to_save`` (e.g. task
        heads), ``other`` (any further parameter that requires grad), ``trainable`` (their sum), ``frozen``,
        ``total`` (all parameters of the model, coefficients included), and ``per_unit`` (unit → count).
    """
    layers = adapter_layers(model)
    coef_ids: dict[int, str] = {}
    per_unit: dict[str, int] = {}
    for layer in layers.values():
        for role, rec in layer.units.items():
            p = getattr(layer, f"{role}_coef")
            coef_ids[id(p)] = rec.unit
            per_unit[rec.unit] = p.numel()
    state = getattr(model, _STATE_ATTR, None)
    saved_ids = set()
    if isinstance(state, _AdapterState):
        for name in state.modules_to_save:
            saved_ids |= {id(p) for p in model.get_submodule(name).parameters()}
    counts = {"coefficients": 0, "modules_to_save": 0, "other": 0, "frozen": 0, "total": 0}
    for p in model.parameters():
        counts["total"] += p.numel()
        if not p.requires_grad:
            counts["frozen"] += p.numel()
        elif id(p) in coef_ids:
            counts["coefficients"] += p.numel()
        elif id(p) in saved_ids:
            counts["modules_to_save"] += p.numel()
        else:
            counts["other"] += p.numel()
    counts["trainable"] = counts["coefficients"] + counts["modules_to_save"] + counts["other"]
    return {**counts, "per_unit": per_unit}


# ------------------------------------------------------------------------------------------------ save/load
def _layer_record(layer: SubspaceLayer) -> dict[str, Any]:
    rec: dict[str, Any] = {"class": type(layer).__name__}
    for role, u in layer.units.items():
        k = u.k
        rec[role] = {
            "unit": u.unit,
            "method": u.method,
            "shape": list(u.shape),
            "k": list(k) if isinstance(k, tuple) else k,
        }
    return rec


def _layer_tensors(name: str, layer: SubspaceLayer, with_basis: bool) -> Iterator[tuple[str, torch.Tensor]]:
    for role, u in layer.units.items():
        yield f"{name}.{role}_coef", getattr(layer, f"{role}_coef")
        if not with_basis:
            continue
        for piece in ("mean", *u.buffers):
            t = getattr(layer, f"{role}_{piece}")
            if t is not None:
                yield f"{name}.{role}_{piece}", t


def save(model: nn.Module, directory: str | os.PathLike[str]) -> Path:
    """Write the adapter as ``adapter_config.json`` + ``adapter_model.safetensors`` (atomically).

    The safetensors file holds ``<module>.weight_coef`` / ``<module>.bias_coef`` per layer, the tensors of
    ``modules_to_save`` under their own keys, and — with ``save_basis`` — ``<module>.weight_mean``,
    ``.weight_basis`` (PCA) or ``.weight_u`` / ``.weight_v`` (HOSVD). Otherwise the config references the archive
    by absolute path and manifest sha256.

    Returns
    -------
    Path
        ``directory``.
    """
    state = _state(model)
    if state.archive_path is None and not state.config.save_basis:
        raise ParameterError(
            "the adapter's subspace was never saved, so the adapter cannot reference it; inject with "
            "save_basis=True (self-contained adapter) or save the SharedSubspace first"
        )
    layers = adapter_layers(model)
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in layers.items():
        if layer.merged:
            raise ParameterError(f"layer '{name}' is merged; unmerge it before saving the adapter")
        for key, t in _layer_tensors(name, layer, state.config.save_basis):
            tensors[key] = t.detach().cpu().contiguous()
    for name in state.modules_to_save:
        for key, t in model.get_submodule(name).state_dict().items():
            tensors[f"{name}.{key}"] = t.detach().cpu().contiguous()
    doc = {
        **state.config.to_dict(),
        "archive": state.archive_path,
        "archive_sha256": state.archive_sha256,
        "format_version": _FORMAT_VERSION,
        "created_by": f"weightspace {__version__}",
        "delta": state.delta,
        "layers": {name: _layer_record(layer) for name, layer in layers.items()},
        "saved_modules": state.modules_to_save,
        "trainable_parameters": {k: v for k, v in trainable_parameters(model).items() if k != "per_unit"},
    }
    out = Path(directory)
    with atomic_dir(out) as tmp:
        save_safetensors(tmp / ADAPTER_WEIGHTS, tensors, {"format": "pt", "weightspace.adapter": ADAPTER_TYPE})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return out


def _read_adapter(directory: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    cpath = directory / ADAPTER_CONFIG
    wpath = directory / ADAPTER_WEIGHTS
    if not cpath.is_file():
        raise InputError(f"not a subspace adapter: {ADAPTER_CONFIG} is missing", path=directory)
    from weightspace._json import parse_json
    from weightspace.io import read_regular

    doc = parse_json(read_regular(cpath, limit=64 << 20, root=directory, what=ADAPTER_CONFIG), path=cpath)
    if not isinstance(doc, dict) or doc.get("peft_type") != ADAPTER_TYPE or "layers" not in doc:
        raise InputError(f"not a weightspace subspace adapter config (peft_type {ADAPTER_TYPE})", path=cpath)
    if doc.get("format_version") != _FORMAT_VERSION:
        raise InputError(
            f"adapter format version {doc.get('format_version')!r} is not supported (this reads {_FORMAT_VERSION})",
            path=cpath,
        )
    if not wpath.is_file():
        raise InputError(f"{ADAPTER_WEIGHTS} is missing", path=directory)
    f = SafetensorsFile(wpath, root=directory)
    return doc, {k: f.read(k) for k in f.tensors}


def _need(tensors: dict[str, torch.Tensor], key: str, where: Path) -> torch.Tensor:
    if key not in tensors:
        raise TensorKeyError("adapter file lacks a tensor its config implies", path=where, tensor=key)
    return tensors[key]


def load(model: nn.Module, directory: str | os.PathLike[str]) -> nn.Module:
    """Inject a saved adapter into ``model`` (which must not carry one) and restore its trained values.

    With a referenced basis the archive is reopened and its manifest sha256 must equal the recorded one; with
    a saved basis the archive is not needed at all.

    Raises
    ------
    InputError
        Missing/invalid adapter files; :class:`ArchiveError` when the referenced archive is gone or changed;
        :class:`ShapeMismatchError` / :class:`TensorKeyError` when ``model`` does not fit the adapter.
    """
    d = Path(directory)
    doc, tensors = _read_adapter(d)
    config = SubspaceAdapterConfig.from_dict(doc)
    if getattr(model, _STATE_ATTR, None) is not None or adapter_layers(model):
        raise ParameterError("model already carries a subspace adapter; call unload() or merge_into_base() first")
    wpath = d / ADAPTER_WEIGHTS
    archive: SharedSubspace | None = None
    if not config.save_basis:
        if not isinstance(doc.get("archive"), str) or not Path(doc["archive"]).is_dir():
            raise ArchiveError(
                "the adapter references this archive (save_basis=False), which no longer exists; restore it or "
                "re-save the adapter with save_basis=True",
                path=doc["archive"],
            )
        archive = SharedSubspace.load(doc["archive"])
        sha = archive_fingerprint(doc["archive"])
        if sha != doc.get("archive_sha256"):
            raise ArchiveError(
                f"archive changed since the adapter was saved (manifest sha256 {sha[:12]}…, adapter records "
                f"{str(doc.get('archive_sha256'))[:12]}…); the coefficients are meaningless in another basis",
                path=doc["archive"],
            )
    targets = []
    for name, rec in doc["layers"].items():
        try:
            mod = model.get_submodule(name)
        except AttributeError:
            raise TensorKeyError(
                f"model has no module '{name}' that the adapter re-parametrises", path=d
            ) from None
        bases: dict[str, Parametrisation | None] = {"weight": None, "bias": None}
        for role in ("weight", "bias"):
            if role not in rec:
                continue
            r = rec[role]
            k = tuple(r["k"]) if isinstance(r["k"], list) else r["k"]
            cfg_k = config.replace(k={name: k}, strict_k=True)
            if archive is not None:
                # Re-derive from the (verified identical) archive with the exact k recorded per layer.
                b = _unit_basis(archive, cfg_k.replace(init="zero"), name, mod, role)
            else:
                b = _basis_from_file(tensors, name, role, r, config.use_mean, wpath)
            b.init = _need(tensors, f"{name}.{role}_coef", wpath).to(torch.float64)
            bases[role] = b
        if bases["weight"] is None:
            raise InputError(f"adapter layer '{name}' has no weight record", path=d / ADAPTER_CONFIG)
        targets.append(_Target(name, mod, bases["weight"], bases["bias"]))  # type: ignore[arg-type]
    saved = list(doc.get("saved_modules", []))
    missing_saved = [n for n in saved if not _has_module(model, n)]
    if missing_saved:
        raise TensorKeyError(f"model has no module {missing_saved[0]!r} that the adapter saved", path=d)
    _install(
        model,
        config,
        targets,
        saved,
        delta=bool(doc["delta"]),
        archive_path=doc["archive"],
        archive_sha256=str(doc.get("archive_sha256")),
    )
    for name in saved:
        sub = model.get_submodule(name)
        own = sub.state_dict()
        state = {}
        for key, t in own.items():
            src = _need(tensors, f"{name}.{key}", wpath)
            if tuple(src.shape) != tuple(t.shape):
                raise ShapeMismatchError(
                    f"saved module '{name}' has shape {tuple(src.shape)}, the model's has {tuple(t.shape)}",
                    path=wpath,
                    tensor=f"{name}.{key}",
                )
            state[key] = src.to(t.dtype)
        sub.load_state_dict(state)
    return model


def _has_module(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def _basis_from_file(
    tensors: dict[str, torch.Tensor], name: str, role: str, rec: dict[str, Any], use_mean: bool, where: Path
) -> Parametrisation:
    shape = tuple(rec["shape"])
    if rec.get("method") not in UNIT_FITS:
        raise InputError(f"adapter layer '{name}' uses unknown method {rec.get('method')!r}", path=where)
    cls = UNIT_FITS.get(rec["method"])
    k = tuple(rec["k"]) if isinstance(rec["k"], list) else (rec["k"],)
    mean = _need(tensors, f"{name}.{role}_mean", where).to(torch.float64) if use_mean else None
    spec = UnitSpec(rec["unit"], shape)
    buffers = {
        piece: _need(tensors, f"{name}.{role}_{piece}", where).to(torch.float64)
        for piece in cls.buffer_shapes(spec, tuple(int(d) for d in k))
    }
    return Parametrisation(rec["unit"], rec["method"], shape, buffers, mean, torch.zeros(k, dtype=torch.float64))


# ------------------------------------------------------------------------------------------------ merge/unload
def _remove(model: nn.Module, *, merge: bool) -> nn.Module:
    state = _state(model)
    for name, layer in adapter_layers(model).items():
        if merge and not layer.merged:
            layer.merge()
        elif not merge and layer.merged:
            layer.unmerge()
        layer._backup.clear()
        _set_module(model, name, layer.base_layer)
    for n, p in model.named_parameters():
        p.requires_grad_(state.requires_grad.get(n, p.requires_grad))
    object.__delattr__(model, _STATE_ATTR)
    return model


def merge_into_base(model: nn.Module) -> nn.Module:
    """Bake ``W0 + ΔW`` (or the replacing ``W``) into plain modules and drop the adapter (in place).

    Returns
    -------
    nn.Module
        ``model`` with its original ``nn.Linear`` / ``nn.Conv*d`` modules back, holding the adapted weights,
        and the original ``requires_grad`` flags restored. Its forward equals the adapter's forward.
    """
    return _remove(model, merge=True)


def unload(model: nn.Module) -> nn.Module:
    """Remove the adapter without merging: the original modules, weights and ``requires_grad`` flags return."""
    return _remove(model, merge=False)
