"""A collection of N models of one architecture: aligned unit names, shapes, dtypes and private tensors.

Rules (all checked before any tensor data is read):

* at least ``min_models`` models (2 by default: a shared subspace of one model is meaningless);
* all models are PEFT adapters, or none is;
* every model has every weight key, except keys matched by a ``private`` pattern;
* a key whose shape is the same in every model (and in the base, if the base has it) is a *unit*; a key whose
  shape differs across models (classifier heads) is *private*: kept per model verbatim, named in reports. If more
  than half of the keys of two models differ (missing from one, or of another shape), the models are different
  architectures and a :class:`ShapeMismatchError` says so, naming the first differing keys of each;
* with a base, a key the base lacks is private (no task vector can be formed for it);
* only float tensors are decomposed: integer, bool and 8-bit float tensors must be excluded explicitly
  (``exclude=["*position_ids"]``), never dropped silently.
"""

from __future__ import annotations

import fnmatch
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from weightspace.errors import (
    InputError,
    NonFiniteError,
    ShapeMismatchError,
    TensorKeyError,
    UnsupportedFormatError,
)
from weightspace.io import ModelSource, expand_models, hub_name_parts, natural_key, open_source, resolve_model_path
from weightspace.units import UnitMember, UnitSpec, UnitStack

__all__ = ["Collection", "as_collection", "model_names"]

_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def _stem(p: Path) -> str:
    name = p.name
    for suf in _SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


def _sanitize(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"


def _name_parts(p: Path) -> list[str]:
    """Name parts, most specific first: the stem, then the parent folders (a Hub cache folder: the repo's name)."""
    hub = hub_name_parts(p.absolute())
    if hub is not None:
        return [_sanitize(_stem(Path(hub[0])))] + [_sanitize(q) for q in hub[1:]]
    return [_sanitize(_stem(p))] + [_sanitize(q) for q in reversed(p.resolve().parent.parts[1:])]


def model_names(paths: Sequence[Path]) -> list[str]:
    """Unique, filesystem-safe model names: the file/dir stem, prefixed by parent folders where stems collide.

    A folder of the Hugging Face cache (``models--org--name/snapshots/<commit>``) is named after its repo
    (``name``, or ``org-name`` where names collide), never after the commit hash.

    Examples
    --------
    >>> model_names([Path("a/model.safetensors"), Path("b/model.safetensors"), Path("c/x.safetensors")])
    ['a-model', 'b-model', 'x']
    >>> model_names([Path("hub/models--org--bert-ft0/snapshots/0a1b2c"), Path("hub/models--acme--bert-ft0/snapshots/9f")])
    ['org-bert-ft0', 'acme-bert-ft0']
    """
    parts = [_name_parts(p) for p in paths]
    depth = [1] * len(paths)
    while True:
        names = ["-".join(reversed(parts[i][: depth[i]])) for i in range(len(paths))]
        groups: dict[str, list[int]] = {}
        for i, n in enumerate(names):
            groups.setdefault(n, []).append(i)
        clashes = [idx for idx in groups.values() if len(idx) > 1]
        if not clashes:
            return names
        grew = False
        for idx in clashes:
            for i in idx:
                if depth[i] < len(parts[i]):
                    depth[i] += 1
                    grew = True
        if not grew:
            break
    # Paths whose folders cannot tell them apart keep their plain stem and get a numeric suffix.
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    names = [parts[i][0] if counts[n] > 1 else n for i, n in enumerate(names)]
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return out


def _matches(key: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, pat) for pat in patterns)


@dataclass
class PrivateTensor:
    """A key kept per model verbatim, with why."""

    key: str
    reason: str
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)


class Collection:
    """N models (and an optional base) resolved into shared units and private tensors.

    Parameters
    ----------
    sources : sequence of ModelSource
        The models, in order.
    base : ModelSource, optional
        With a base, stored tensors become task vectors ``W_i − W_base``. PEFT adapters are deltas already; a base
        given with adapters is only used to write merged full checkpoints.
    names : sequence of str, optional
        Model names (default: derived from the paths, unique).
    private : sequence of str
        fnmatch patterns of keys to keep per model verbatim, even where shapes agree.
    exclude : sequence of str
        fnmatch patterns of keys to leave out entirely (reported as excluded).
    min_models : int, default 2

    Attributes
    ----------
    units : list of UnitSpec
        Decomposed keys, in natural order (``layer.2`` before ``layer.10``).
    private : dict of str to PrivateTensor
        Keys stored per model.
    excluded : list of str
    """

    def __init__(
        self,
        sources: Sequence[ModelSource],
        *,
        base: ModelSource | None = None,
        names: Sequence[str] | None = None,
        private: Sequence[str] = (),
        exclude: Sequence[str] = (),
        min_models: int = 2,
    ):
        self.sources = list(sources)
        self.base = base
        n = len(self.sources)
        if n == 0:
            raise InputError("no models given; pass at least 2 checkpoints")
        if n < min_models:
            raise InputError(
                f"{n} model given; a shared subspace needs at least {min_models} models", path=self.sources[0].path
            )
        self.names = list(names) if names is not None else model_names([s.path for s in self.sources])
        if len(set(self.names)) != n:
            raise InputError("model names must be unique")
        kinds = {s.format == "peft" for s in self.sources}
        if len(kinds) > 1:
            odd = next(s for s in self.sources if (s.format == "peft") != (self.sources[0].format == "peft"))
            raise InputError(
                "mixes PEFT adapters with full checkpoints; compare like with like "
                f"(model 0 is {self.sources[0].format}, this one is {odd.format})",
                path=odd.path,
            )
        self.is_peft = self.sources[0].format == "peft"
        self.private_patterns = list(private)
        self.exclude_patterns = list(exclude)
        self._base_keys: dict[str, str] = {}
        self._resolve()

    # ------------------------------------------------------------------------------------------------
    @classmethod
    def from_paths(
        cls,
        models: Sequence[str | os.PathLike[str]],
        *,
        base: str | os.PathLike[str] | None = None,
        allow_pickle: bool = False,
        private: Sequence[str] = (),
        exclude: Sequence[str] = (),
        min_models: int = 2,
    ) -> Collection:
        """Expand MODELS (files, dirs, globs, ``@list.txt``, Hub ids), index every checkpoint, and resolve units.

        ``base`` may be a path or a Hugging Face Hub id (``org/name[@rev]``, ``hf://…``).

        Examples
        --------
        >>> Collection.from_paths([])
        Traceback (most recent call last):
        ...
        weightspace.errors.InputError: no models given; pass at least 2 checkpoints
        """
        paths = expand_models(models, allow_pickle=allow_pickle) if models else []
        sources = [open_source(p, allow_pickle=allow_pickle) for p in paths]
        base_src = (
            open_source(resolve_model_path(base, allow_pickle=allow_pickle), allow_pickle=allow_pickle)
            if base is not None
            else None
        )
        return cls(sources, base=base_src, private=private, exclude=exclude, min_models=min_models)

    @property
    def n_models(self) -> int:
        return len(self.sources)

    @property
    def is_delta(self) -> bool:
        """True when members are task vectors (a base was given, or the models are PEFT adapters)."""
        return self.is_peft or self.base is not None

    # ------------------------------------------------------------------------------------------------
    def _check_architectures(self, key_sets: list[set[str]]) -> None:
        """Refuse models whose tensors (keys and shapes) mostly differ from the first model's."""
        skip = [*self.exclude_patterns, *self.private_patterns]

        def shapes(i: int) -> dict[str, tuple[int, ...]]:
            return {k: self.sources[i].entries[k].shape for k in key_sets[i] if not _matches(k, skip)}

        ref = shapes(0)
        for i in range(1, self.n_models):
            other = shapes(i)
            union = set(ref) | set(other)
            differ = {k for k in union if ref.get(k) != other.get(k)}
            if not union or len(differ) * 2 <= len(union):
                continue

            def first(d: dict[str, tuple[int, ...]], differ: set[str] = differ) -> str:
                keys = sorted((k for k in d if k in differ), key=natural_key)[:3]
                return ", ".join(f"{k} {list(d[k])}" for k in keys) or "(none)"

            raise ShapeMismatchError(
                f"these are different architectures: {len(differ)} of {len(union)} tensors differ (missing or "
                f"another shape) between '{self.names[0]}' and '{self.names[i]}'. First differing keys of "
                f"'{self.names[0]}': {first(ref)}; of '{self.names[i]}': {first(other)}. Pass models of one "
                "architecture",
                path=self.sources[i].path,
                tensor=min(differ, key=natural_key),
            )

    def _resolve(self) -> None:
        key_sets = [set(s.entries) for s in self.sources]
        self._check_architectures(key_sets)
        all_keys = set().union(*key_sets)
        self.excluded = sorted((k for k in all_keys if _matches(k, self.exclude_patterns)), key=natural_key)
        keys = sorted(all_keys - set(self.excluded), key=natural_key)
        self.private: dict[str, PrivateTensor] = {}
        units: list[UnitSpec] = []
        mismatched: list[tuple[str, dict[str, tuple[int, ...]]]] = []
        for key in keys:
            holders = [i for i, ks in enumerate(key_sets) if key in ks]
            entries = [self.sources[i].entries[key] for i in holders]
            for i, e in zip(holders, entries, strict=True):
                if not e.is_float:
                    raise UnsupportedFormatError(
                        f"dtype {e.dtype} is not a float type; integer and quantized tensors cannot be decomposed. "
                        f"Leave it out with --exclude '{key}' (or a pattern such as '*{key.rsplit('.', 1)[-1]}')",
                        path=self.sources[i].path,
                        tensor=key,
                    )
            shapes = {self.names[i]: e.shape for i, e in zip(holders, entries, strict=True)}
            if _matches(key, self.private_patterns):
                self.private[key] = PrivateTensor(key, "matched a private pattern", shapes)
                continue
            if len(holders) < self.n_models:
                lacking = next(i for i in range(self.n_models) if i not in holders)
                raise TensorKeyError(
                    f"model '{self.names[lacking]}' lacks this tensor, which '{self.names[holders[0]]}' has; every "
                    "model needs every weight (or mark the key per-model with --private PATTERN, or --exclude it)",
                    path=self.sources[lacking].path,
                    tensor=key,
                )
            kinds = {e.kind for e in entries}
            if "extra" in kinds:
                self.private[key] = PrivateTensor(
                    key, "full tensor inside a PEFT adapter (modules_to_save)", shapes
                )
                continue
            if len(set(shapes.values())) > 1:
                mismatched.append((key, shapes))
                self.private[key] = PrivateTensor(key, "shape differs across models", shapes)
                continue
            shape = entries[0].shape
            if math.prod(shape) == 0:
                self.private[key] = PrivateTensor(key, "empty tensor", shapes)
                continue
            if self.base is not None and not self.is_peft:
                base_entry = self.base.entries.get(key)
                if base_entry is None:
                    self.private[key] = PrivateTensor(key, "base lacks this tensor (no task vector)", shapes)
                    continue
                if base_entry.shape != shape:
                    mismatched.append((key, {**shapes, "<base>": base_entry.shape}))
                    self.private[key] = PrivateTensor(
                        key, f"shape differs from the base {base_entry.shape}", shapes
                    )
                    continue
                if not base_entry.is_float:
                    raise UnsupportedFormatError(
                        f"base dtype {base_entry.dtype} is not a float type; --exclude '{key}'",
                        path=self.base.path,
                        tensor=key,
                    )
            units.append(UnitSpec(key, shape, lora=kinds == {"lora"}))
        if mismatched and len(mismatched) * 2 > len(keys):
            key, shapes = mismatched[0]
            listing = ", ".join(f"{m}: {s}" for m, s in list(shapes.items())[:4])
            ref, odd = self._first_odd(shapes)
            raise ShapeMismatchError(
                f"shape differs across models ({listing}); {len(mismatched)} of {len(keys)} tensors differ, so these "
                "are different architectures (or a base of another architecture). Pass only models of one "
                "architecture",
                path=odd if odd is not None else ref,
                tensor=key,
            )
        if not units:
            raise InputError(
                "the models share no decomposable tensor (every key is private, excluded or empty)",
                path=self.sources[0].path,
            )
        self.units = units
        self._unit_index = {u.name: u for u in units}

    def _first_odd(self, shapes: dict[str, tuple[int, ...]]) -> tuple[Path, Path | None]:
        names = list(shapes)
        ref_shape = shapes[names[0]]
        for name in names[1:]:
            if shapes[name] != ref_shape:
                if name == "<base>":
                    return self.sources[0].path, self.base.path if self.base else None
                return self.sources[0].path, self.sources[self.names.index(name)].path
        return self.sources[0].path, None

    # ------------------------------------------------------------------------------------------------
    def unit(self, name: str) -> UnitSpec:
        try:
            return self._unit_index[name]
        except KeyError:
            raise TensorKeyError("not a shared unit of this collection", tensor=name) from None

    def member(self, model: int, unit: str) -> UnitMember:
        """Model ``model``'s contribution to ``unit`` (task vector with a base, raw weight otherwise)."""
        spec = self.unit(unit)
        base = None if self.is_peft else self.base
        return UnitMember(self.sources[model], spec, base=base)

    def stack(self, unit: str, models: Sequence[int] | None = None) -> UnitStack:
        """The unit across all (or the selected) models."""
        idx = range(self.n_models) if models is None else models
        return UnitStack(self.unit(unit), [self.member(i, unit) for i in idx])

    def read_private(self, model: int, key: str) -> torch.Tensor:
        """A private tensor of one model, verbatim; NaN or infinity in a float tensor is a NonFiniteError."""
        t = self.sources[model].read(key)
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise NonFiniteError(
                f"{bad} non-finite value(s) (NaN or inf) in a per-model tensor; weights must be finite",
                path=self.sources[model].path,
                tensor=key,
            )
        return t

    def duplicates(self) -> list[list[str]]:
        """Groups of model names whose checkpoints have identical content (sha256)."""
        groups: dict[str, list[str]] = {}
        for name, src in zip(self.names, self.sources, strict=True):
            groups.setdefault(src.sha256(), []).append(name)
        return [g for g in groups.values() if len(g) > 1]

    def summary(self, *, hashes: bool = True) -> dict[str, Any]:
        """A JSON-able description (used by ``weightspace inspect``)."""
        n_params = sum(u.numel for u in self.units)
        models = []
        for name, src in zip(self.names, self.sources, strict=True):
            dtypes = sorted({src.entries[u.name].dtype for u in self.units})
            row: dict[str, Any] = {
                "name": name,
                "path": str(src.path),
                "format": src.format,
                "dtypes": dtypes,
                "bytes": src.nbytes_on_disk(),
            }
            if hashes:
                row["sha256"] = src.sha256()
            models.append(row)
        return {
            "n_models": self.n_models,
            "kind": "peft" if self.is_peft else "full",
            "delta": self.is_delta,
            "base": None if self.base is None else str(self.base.path),
            "models": models,
            "n_units": len(self.units),
            "n_matrix_units": sum(u.kind == "matrix" for u in self.units),
            "n_vector_units": sum(u.kind == "vector" for u in self.units),
            "n_lora_units": sum(u.lora for u in self.units),
            "unit_params_per_model": n_params,
            "units": [
                {"name": u.name, "shape": list(u.shape), "kind": u.kind, "lora": u.lora} for u in self.units
            ],
            "private": [
                {"key": p.key, "reason": p.reason, "shapes": {m: list(s) for m, s in p.shapes.items()}}
                for p in self.private.values()
            ],
            "excluded": self.excluded,
            "duplicates": self.duplicates() if hashes else None,
        }


def as_collection(
    models: Collection | Sequence[str | os.PathLike[str]],
    *,
    base: str | os.PathLike[str] | None = None,
    allow_pickle: bool = False,
    private: Sequence[str] = (),
    exclude: Sequence[str] = (),
    min_models: int = 2,
) -> Collection:
    """The one rule every entry point applies to its MODELS: a :class:`Collection` as is, paths resolved.

    A ready :class:`Collection` already fixes its base, private and excluded keys, so passing those again
    is an error rather than silently ignored.

    Examples
    --------
    >>> as_collection([])
    Traceback (most recent call last):
    ...
    weightspace.errors.InputError: no models given; pass at least 2 checkpoints
    """
    if isinstance(models, Collection):
        if base is not None or private or exclude or allow_pickle:
            raise InputError(
                "pass base/private/exclude/allow_pickle when building the Collection, not again with it"
            )
        return models
    if isinstance(models, str | os.PathLike):
        models = [models]
    return Collection.from_paths(
        list(models), base=base, allow_pickle=allow_pickle, private=private, exclude=exclude, min_models=min_models
    )
