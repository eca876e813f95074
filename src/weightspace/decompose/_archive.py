"""The ``.wsz`` archive: the saved form of a :class:`~weightspace.decompose.SharedSubspace`.

Format 2 (written by this version)::

    ARCHIVE.wsz/
      units/00000.safetensors   one member per unit: its stored tensors (``mean``, ``basis`` or ``U``/``V`` …)
      coefficients.safetensors  coef/<unit>: (n_models, *coef_shape)
      private.safetensors       <model>/<key>: tensors kept per model verbatim
      manifest.json             format, version, hyperparameters, models, units, sha256 + size of every member

One member per unit lets units be fitted independently (threads, processes, other machines) and each write its
own file. Format 1 (read only) kept every unit in one ``basis.safetensors`` under ``mean/<unit>``,
``basis/<unit>``, ``U/<unit>``, ``V/<unit>``.

The manifest is written after every member is complete and fsynced, and the whole directory is swapped into
place atomically, so an interrupted write leaves the previous archive (or nothing). Readers refuse an archive
without a manifest, with an unknown format version, with a member name that is not one of the forms above, or
whose members' sha256 differ from the manifest. The manifest is validated into typed records
(:class:`Manifest`); callers get those records, never the raw JSON.

An archive may come from a stranger, so nothing in its manifest is trusted: the manifest is parsed by the bounded
JSON parser; model names are single plain file names (they become output paths); config names are the known
config files only and a stored shard index names plain ``*.safetensors`` shards; dtype tags, source formats and
numbers are typed and range-checked (``k >= 0``, LoRA ranks >= 1 and finite positive scalings, unit rows and cols
consistent with the shape); every member is a regular file inside the archive (no links out, no FIFOs), every
stored tensor is finite, every unit's stored tensors have exactly the shapes its record implies, and every
private key a model record names is stored.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import stat
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    SerializeAsAny,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from weightspace._atomic import atomic_dir, check_output
from weightspace._json import json_safe, parse_json
from weightspace._version import __version__
from weightspace.decompose._unitfit import UNIT_FITS, UnitRecord
from weightspace.decompose.pca import PCAUnit
from weightspace.errors import ArchiveError, CorruptFileError, WeightspaceError
from weightspace.io import (
    CONFIG_FILES,
    DTYPES,
    SHARD_INDEX,
    ModelSource,
    PeftSource,
    SafetensorsFile,
    SafetensorsWriter,
    check_name,
    check_shard_name,
    file_sha256,
)
from weightspace.units import UnitSpec

__all__ = [
    "EXTRA_MEMBERS",
    "FORMAT",
    "STORAGE_DTYPES",
    "VERSION",
    "Archive",
    "ArchiveWriter",
    "BaseRecord",
    "LoraRecord",
    "Manifest",
    "MemberDigest",
    "ModelRecord",
    "PrivateRecord",
    "UnitFileStore",
    "model_record",
]

FORMAT = "weightspace-archive"
VERSION = 2
READABLE_VERSIONS = (1, 2)
MAX_MANIFEST_BYTES = 256 * 1024 * 1024
STORAGE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
_V1_BASIS = "basis.safetensors"
COEFFICIENTS = "coefficients.safetensors"
PRIVATE = "private.safetensors"
# Optional members written by other packages (``align.safetensors``: the permutations of an aligned collection).
EXTRA_MEMBERS = ("align.safetensors",)
_UNIT_MEMBER = re.compile(r"units/[0-9]{5,9}\.safetensors")
_SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_METADATA_BYTES = 64 * 1024
"""``__metadata__`` of a source copied into the manifest, per model, at most (larger blocks are cut, with a warning)."""
CONFIG_NAMES = frozenset({*CONFIG_FILES, SHARD_INDEX, "adapter_config.json"})
"""The only file names a model record's ``configs`` may hold (they are written next to rebuilt weights)."""
SOURCE_FORMATS = ("safetensors", "hf-dir", "hf-sharded", "peft", "torch", "memory")
_V1_KEY_PREFIX = {"mean": "mean", "basis": "basis", "U": "U", "V": "V"}


def unit_member_name(index: int) -> str:
    """Archive member holding unit ``index`` (format 2)."""
    return f"units/{index:05d}.safetensors"


# ------------------------------------------------------------------------------------------------ schema
class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class MemberDigest(_Record):
    """Size and sha256 of one archive member."""

    sha256: str
    bytes: StrictInt

    @model_validator(mode="after")
    def _valid(self) -> MemberDigest:
        if self.bytes < 0 or not _SHA256.fullmatch(self.sha256):
            raise ValueError("a member digest needs 'bytes' >= 0 and a 64-hex-digit 'sha256'")
        return self


def _dims(shape: list[int], what: str) -> None:
    if any(d < 0 for d in shape):
        raise ValueError(f"{what} {shape} has a negative dimension")


class LoraRecord(_Record):
    """How one LoRA module of a PEFT adapter maps to its unit."""

    a_key: StrictStr
    b_key: StrictStr
    rank: StrictInt
    scaling: float
    fan_in_fan_out: StrictBool
    a_shape: list[StrictInt]
    b_shape: list[StrictInt]

    @model_validator(mode="after")
    def _valid(self) -> LoraRecord:
        if not self.a_key or not self.b_key:
            raise ValueError("a_key and b_key must be non-empty tensor names")
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if not (math.isfinite(self.scaling) and self.scaling > 0):
            raise ValueError(f"scaling must be a finite number > 0, got {self.scaling}")
        _dims(self.a_shape, "a_shape")
        _dims(self.b_shape, "b_shape")
        if (
            len(self.a_shape) < 2
            or len(self.b_shape) < 2
            or self.a_shape[0] != self.rank
            or self.b_shape[1] != self.rank
        ):
            raise ValueError(
                f"a_shape {self.a_shape} and b_shape {self.b_shape} must be (rank, ...) and (..., rank, ...) "
                f"with rank {self.rank}"
            )
        return self


class ModelRecord(_Record):
    """Everything ``reconstruct`` needs to write one model back in its own layout."""

    name: StrictStr
    source_path: str = ""
    source_format: Literal["safetensors", "hf-dir", "hf-sharded", "peft", "torch", "memory"]
    source_sha256: str = ""
    source_bytes: StrictInt = 0
    metadata: dict[StrictStr, StrictStr] | None = None
    configs: dict[StrictStr, StrictStr] | None = None
    dtypes: dict[StrictStr, StrictStr]
    private: list[StrictStr]
    key_order: list[StrictStr] = []
    lora: dict[StrictStr, LoraRecord] | None = None
    extra_keys: dict[StrictStr, StrictStr] = {}
    file_key_order: list[StrictStr] | None = None
    added: StrictBool = False
    projection: dict[str, float] | None = None

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        try:
            return check_name(value, what="model name")
        except WeightspaceError as err:
            raise ValueError(err.message) from None

    @field_validator("dtypes")
    @classmethod
    def _known_dtypes(cls, value: dict[str, str]) -> dict[str, str]:
        for key, tag in value.items():
            if tag not in DTYPES:
                raise ValueError(f"dtype {tag[:20]!r} of {key[:80]!r} is not a known dtype tag")
        return value

    @field_validator("configs")
    @classmethod
    def _known_configs(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for name, text in (value or {}).items():
            if name not in CONFIG_NAMES:
                raise ValueError(
                    f"config file name {name[:300]!r} is not one of {', '.join(sorted(CONFIG_NAMES))}"
                )
            try:
                doc = parse_json(text, what=name, path=name)
            except WeightspaceError as err:
                raise ValueError(err.message) from None
            if name == SHARD_INDEX:
                weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
                if not isinstance(weight_map, dict):
                    raise ValueError("the stored shard index has no 'weight_map' object")
                for key, shard in weight_map.items():
                    try:
                        check_shard_name(shard, path=SHARD_INDEX, tensor=key)
                    except WeightspaceError as err:
                        raise ValueError(str(err)) from None
        return value

    @field_validator("source_bytes")
    @classmethod
    def _size(cls, value: int) -> int:
        if value < 0:
            raise ValueError("source_bytes must be >= 0")
        return value


class BaseRecord(_Record):
    """The base model task vectors are relative to."""

    path: str
    format: str
    sha256: str


class PrivateRecord(_Record):
    """A key kept per model verbatim, with why."""

    key: str
    reason: str
    shapes: dict[str, list[StrictInt]] = {}


class Manifest(_Record):
    """``manifest.json``, typed. Unit records are the registered method's own record type."""

    format: Literal["weightspace-archive"]
    version: StrictInt
    created_by: str = ""
    method: str = PCAUnit.method
    n_components: StrictInt | float | list[StrictInt | float] = 16
    center: StrictBool = True
    svd_solver: str = "auto"
    modes: list[StrictInt] = [1, 2]
    storage_dtype: Literal["float32", "float64", "float16", "bfloat16"] = "float32"
    kind: Literal["full", "peft"]
    delta: StrictBool
    base: BaseRecord | None = None
    models: list[ModelRecord]
    units: list[SerializeAsAny[UnitRecord]]
    private: list[PrivateRecord] = []
    excluded: list[str] = []
    members: dict[str, MemberDigest]
    extras: dict[str, Any] = {}

    @field_validator("units", mode="before")
    @classmethod
    def _typed_units(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        out = []
        for i, raw in enumerate(value):
            if isinstance(raw, UnitRecord):
                out.append(raw)
                continue
            if not isinstance(raw, dict) or not isinstance(raw.get("method"), str):
                raise ValueError(f"unit {i} needs a 'method' string")
            if raw["method"] not in UNIT_FITS:
                raise ValueError(f"unit {i} uses unknown method {raw['method']!r} (known: {UNIT_FITS.names()})")
            try:
                out.append(UNIT_FITS.get(raw["method"]).record_type.model_validate(raw))
            except ValidationError as err:
                first = err.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise ValueError(
                    f"unit {i} is not a valid {raw['method']!r} record: {where}: {first['msg']}"
                ) from None
        return out

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        for what, names in (("model", [m.name for m in self.models]), ("unit", [u.name for u in self.units])):
            if len(set(names)) != len(names):
                raise ValueError(f"{what} names must be unique")
        for name in self.members:
            if not (name in (_V1_BASIS, COEFFICIENTS, PRIVATE, *EXTRA_MEMBERS) or _UNIT_MEMBER.fullmatch(name)):
                raise ValueError(f"member name {name[:80]!r} is not an archive member name")
        for u in self.units:
            if u.member is not None and u.member not in self.members:
                raise ValueError(f"unit {u.name!r} names member {u.member[:80]!r}, which 'members' does not list")
            _dims(u.shape, f"unit {u.name!r} shape")
            rows = u.shape[0] if u.shape else 1
            cols = math.prod(u.shape[1:]) if len(u.shape) > 1 else 1
            if (u.rows, u.cols) != (rows, cols):
                raise ValueError(
                    f"unit {u.name!r} records rows={u.rows}, cols={u.cols}, but its shape {u.shape} means "
                    f"rows={rows}, cols={cols}"
                )
        units = {u.name for u in self.units}
        shapes = {u.name: u for u in self.units}
        for m in self.models:
            if self.kind == "peft":
                if not m.lora:
                    raise ValueError(f"model {m.name!r} of a PEFT archive has no LoRA records")
                stray = sorted(set(m.lora) - units)
                if stray:
                    raise ValueError(
                        f"model {m.name!r} has a LoRA record for {stray[0][:80]!r}, which is not a unit"
                    )
                for key, rec in m.lora.items():
                    u = shapes[key]
                    d_out, d_in = (u.cols, u.rows) if rec.fan_in_fan_out else (u.rows, u.cols)
                    if (
                        rec.b_shape[0] != d_out
                        or math.prod(rec.a_shape[1:]) != d_in
                        or any(d != 1 for d in rec.b_shape[2:])
                    ):
                        raise ValueError(
                            f"model {m.name!r}: the LoRA record of {key!r} has a_shape {rec.a_shape} and b_shape "
                            f"{rec.b_shape}, which do not fit the unit's shape {u.shape}"
                        )
            elif m.lora:
                raise ValueError(f"model {m.name!r} has LoRA records but the archive kind is {self.kind!r}")
            known = units | set(m.private) | set(self.excluded)
            odd = [k for k in m.key_order if k not in known]
            if odd:
                raise ValueError(
                    f"model {m.name!r} lists key {odd[0][:80]!r}, which is neither a unit nor private"
                )
        return self

    def to_json(self) -> str:
        """The manifest as written to disk (strict JSON: a number that is not finite, e.g. a statistic a fit did
        not compute, is written as null and read back as NaN)."""
        return json.dumps(
            json_safe(self.model_dump(mode="json", exclude_none=True), inf_as_null=True), indent=1, allow_nan=False
        )

    @property
    def unit_index(self) -> dict[str, UnitRecord]:
        return {u.name: u for u in self.units}


def _parse_manifest(path: Path) -> Manifest:
    raw = _read_regular(path, MAX_MANIFEST_BYTES, "manifest")
    data = parse_json(raw, path=path, what="manifest", error=ArchiveError)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ArchiveError(f"manifest is not a {FORMAT} manifest", path=path)
    if type(data.get("version")) is not int or data["version"] not in READABLE_VERSIONS:
        raise ArchiveError(
            f"archive format version {repr(data.get('version'))[:40]} is not supported (this weightspace reads "
            f"{', '.join(map(str, READABLE_VERSIONS))})",
            path=path,
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p)[:80] for p in first["loc"]) or "(top level)"
        raise ArchiveError(
            f"manifest is malformed at {where}: {first['msg'][:300]} ({err.error_count()} problem(s))", path=path
        ) from None


def _read_regular(path: Path, limit: int, what: str) -> bytes:
    """Read a small file that must be a regular file (never a FIFO or device), at most ``limit`` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError as err:
        raise ArchiveError(f"cannot open {what} ({err.strerror})", path=path) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ArchiveError(f"{what} is not a regular file", path=path)
        if st.st_size > limit:
            raise ArchiveError(f"{what} is {st.st_size} bytes, more than the {limit}-byte limit", path=path)
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def model_record(
    name: str, src: ModelSource, units: Sequence[UnitSpec], private_keys: Sequence[str]
) -> ModelRecord:
    """Everything ``reconstruct`` needs to write model ``name`` back in its own layout."""
    rec: dict[str, Any] = {
        "name": name,
        "source_path": str(Path(src.path).resolve()),
        "source_format": src.format,
        "source_sha256": src.sha256(),
        "source_bytes": src.nbytes_on_disk(),
        "metadata": capped_metadata(src.metadata, src.path),
        "configs": src.configs,
        "dtypes": {u.name: src.entries[u.name].dtype for u in units},
        "private": list(private_keys),
        "key_order": list(src.entries),
    }
    if isinstance(src, PeftSource):
        names = {u.name for u in units}
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
            if key in names
        }
        rec["extra_keys"] = dict(src.extra_keys)
        rec["file_key_order"] = src.file_keys()
    return ModelRecord.model_validate(rec)


def capped_metadata(metadata: Mapping[str, str], path: str | os.PathLike[str]) -> dict[str, str]:
    """``metadata`` within :data:`MAX_METADATA_BYTES`: entries are kept smallest first while they fit, the rest
    dropped with a warning naming them (so ``format: pt`` survives a megabyte-sized blob beside it).

    Examples
    --------
    >>> capped_metadata({"format": "pt"}, "m.safetensors")
    {'format': 'pt'}
    """

    def size(item: tuple[str, str]) -> int:
        return len(item[0].encode("utf-8", "replace")) + len(item[1].encode("utf-8", "replace"))

    keep: set[str] = set()
    used = 0
    for k, v in sorted(metadata.items(), key=size):
        if used + size((k, v)) > MAX_METADATA_BYTES:
            break
        keep.add(k)
        used += size((k, v))
    dropped = [k for k in metadata if k not in keep]
    if dropped:
        listing = ", ".join(repr(k[:40]) for k in dropped[:5])
        warnings.warn(
            f"{path}: __metadata__ holds more than {MAX_METADATA_BYTES} bytes; not kept: {listing}"
            + (f" and {len(dropped) - 5} more" if len(dropped) > 5 else ""),
            UserWarning,
            stacklevel=3,
        )
    return {k: v for k, v in metadata.items() if k in keep}


# ------------------------------------------------------------------------------------------------ reading
class _MemberSource:
    """Reads one unit's stored tensors from its member (format 2) or from ``basis.safetensors`` (format 1)."""

    def __init__(self, archive: Archive, member: str, prefix: str | None):
        self.archive, self.member, self.prefix = archive, member, prefix

    def read(self, name: str) -> torch.Tensor:
        key = name if self.prefix is None else f"{_V1_KEY_PREFIX.get(name, name)}/{self.prefix}"
        return self.archive.read_member(self.member, key)


class Archive:
    """A read-only, verified view of a ``.wsz`` archive.

    Parameters
    ----------
    path : str or Path
        The archive directory.
    verify : bool, default True
        Check every member's size and sha256 against the manifest (reads the archive once).

    Attributes
    ----------
    manifest : Manifest
        The typed ``manifest.json``.
    model_names : list of str
    units : dict of str to UnitRecord
        Per-unit records, in order.
    """

    def __init__(self, path: str | os.PathLike[str], *, verify: bool = True):
        self.path = Path(path)
        if not self.path.is_dir():
            raise ArchiveError("not an archive directory (a .wsz archive is a folder)", path=self.path)
        mpath = self.path / "manifest.json"
        if not mpath.exists() and not mpath.is_symlink():
            raise ArchiveError(
                "archive has no manifest.json; it is incomplete (an interrupted write?) or not an archive",
                path=self.path,
            )
        self.manifest = _parse_manifest(mpath)
        self._root = self.path.resolve()
        for name in self.manifest.members:
            self._member_path(name)  # refuses links out, non-regular files and missing members early
        for name in (COEFFICIENTS, PRIVATE) + ((_V1_BASIS,) if self.manifest.version == 1 else ()):
            if name not in self.manifest.members:
                raise ArchiveError("manifest does not list this member", path=self.path / name)
        if self.manifest.version >= 2:
            for u in self.manifest.units:
                if u.member is None:
                    raise ArchiveError("manifest names no member for this unit", path=mpath, tensor=u.name)
        if verify:
            self.verify()
        self._files: dict[str, SafetensorsFile] = {}
        self.model_names: list[str] = [m.name for m in self.manifest.models]
        self.units: dict[str, UnitRecord] = self.manifest.unit_index
        self._check_private()

    def _check_private(self) -> None:
        """Every private key a model record names is stored, in a dtype torch can read."""
        f = self._file(PRIVATE)
        for m in self.manifest.models:
            for key in m.private:
                name = f"{m.name}/{key}"
                if name not in f.tensors:
                    raise ArchiveError(
                        f"model {m.name!r} lists private tensor {key!r}, which the archive does not hold",
                        path=f.path,
                        tensor=name,
                    )
                if f.info(name).torch_dtype is None:
                    raise ArchiveError(
                        f"private tensor has dtype {f.info(name).dtype}, which cannot be read",
                        path=f.path,
                        tensor=name,
                    )

    def check_unit_layout(self, unit: str, layout: Mapping[str, tuple[int, ...]]) -> None:
        """Raise :class:`ArchiveError` unless ``unit``'s stored tensors have exactly the shapes of ``layout``."""
        for name, shape in layout.items():
            if any(d < 0 for d in shape):
                raise ArchiveError(
                    f"the manifest implies a negative size {shape} for stored '{name}'",
                    path=self.path,
                    tensor=unit,
                )
        src = self.unit_source(unit)
        f = self._file(src.member)
        for name, shape in layout.items():
            key = name if src.prefix is None else f"{_V1_KEY_PREFIX.get(name, name)}/{src.prefix}"
            info = f.tensors.get(key)
            if info is None:
                raise ArchiveError("member lacks a tensor the manifest implies", path=f.path, tensor=key)
            if math.prod(info.shape) != math.prod(shape):
                raise ArchiveError(
                    f"stored tensor has shape {info.shape}, but the manifest implies {shape} for unit '{unit}'",
                    path=f.path,
                    tensor=key,
                )

    def _member_path(self, name: str) -> Path:
        p = self.path / name
        if p.is_symlink():
            raise ArchiveError("archive member is a symbolic link; archives hold regular files only", path=p)
        if not p.exists():
            raise ArchiveError("archive member is missing", path=p)
        real = p.resolve()
        if self._root not in real.parents:
            raise ArchiveError("archive member resolves outside the archive", path=p)
        if not p.is_file():
            raise ArchiveError("archive member is not a regular file (a FIFO, device or directory)", path=p)
        return p

    def verify(self) -> None:
        """Raise :class:`ArchiveError` if any member's size or sha256 differs from the manifest."""
        for name, want in self.manifest.members.items():
            p = self._member_path(name)
            size = p.stat().st_size
            if size != want.bytes:
                raise ArchiveError(
                    f"member is corrupted: {size} bytes; the manifest records {want.bytes} bytes", path=p
                )
            got = file_sha256(p, root=self._root)
            if got != want.sha256:
                raise ArchiveError(
                    f"member is corrupted: sha256 {got[:12]}…; the manifest records {want.sha256[:12]}…", path=p
                )

    def _file(self, member: str) -> SafetensorsFile:
        if member not in self._files:
            if member not in self.manifest.members:
                raise ArchiveError("the manifest does not list this member", path=self.path / member)
            try:
                self._files[member] = SafetensorsFile(self._member_path(member), root=self._root)
            except CorruptFileError as err:
                raise ArchiveError(f"member is unreadable: {err.message}", path=self.path / member) from None
        return self._files[member]

    def read_member(self, member: str, key: str) -> torch.Tensor:
        """Tensor ``key`` of ``member``, float64."""
        f = self._file(member)
        if key not in f.tensors:
            raise ArchiveError("member lacks a tensor the manifest implies", path=f.path, tensor=key)
        try:
            t = f.read(key).to(torch.float64)
        except WeightspaceError as err:
            raise ArchiveError(f"member is unreadable: {err.message}", path=f.path, tensor=key) from None
        _finite(t, f.path, key)
        return t

    # -- fitted pieces -------------------------------------------------------------------------------------
    @property
    def n_models(self) -> int:
        return len(self.model_names)

    def model_index(self, name: str) -> int:
        try:
            return self.model_names.index(name)
        except ValueError:
            listing = ", ".join(repr(n) for n in self.model_names[:10])
            raise ArchiveError(f"no model {name!r} in archive; models: {listing}", path=self.path) from None

    def unit_source(self, unit: str) -> _MemberSource:
        """Where unit ``unit``'s stored tensors are read from."""
        rec = self.units[unit]
        if self.manifest.version == 1:
            return _MemberSource(self, _V1_BASIS, unit)
        assert rec.member is not None  # checked in __init__
        return _MemberSource(self, rec.member, None)

    def coefficients(self, unit: str) -> torch.Tensor:
        """Stored coefficients of ``unit``, float64, shape (n_models, *coef_shape)."""
        return self.read_member(COEFFICIENTS, f"coef/{unit}")

    def private(self, model: str, key: str) -> torch.Tensor:
        """A private tensor of ``model``, verbatim (stored dtype)."""
        f = self._file(PRIVATE)
        name = f"{model}/{key}"
        if name not in f.tensors:
            raise ArchiveError("archive holds no such private tensor", path=f.path, tensor=name)
        t = f.read(name)
        if t.is_floating_point():
            _finite(t, f.path, name)
        return t

    def private_specs(self) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        """``<model>/<key>`` → (dtype, shape) of every stored private tensor."""
        f = self._file(PRIVATE)
        out = {}
        for key in f:
            info = f.info(key)
            tdt = info.torch_dtype
            if tdt is None:
                raise ArchiveError(f"private tensor has dtype {info.dtype}, which cannot be read", path=f.path)
            out[key] = (tdt, info.shape)
        return out

    def member_file(self, member: str) -> Path:
        """Path of a listed member (checked to be a regular file inside the archive)."""
        if member not in self.manifest.members:
            raise ArchiveError("the manifest does not list this member", path=self.path / member)
        return self._member_path(member)


def _finite(t: torch.Tensor, path: Path, key: str) -> None:
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ArchiveError(f"stored tensor holds {bad} NaN or infinite value(s)", path=path, tensor=key)


# ------------------------------------------------------------------------------------------------ writing
class UnitFileStore:
    """One unit's member file: declare the layout, stream tensors in, read them back once closed.

    The member's folder must exist already (:meth:`ArchiveWriter.member_path` makes it): a store whose archive
    was removed underneath it (a failed run) fails instead of re-creating the folder.
    """

    def __init__(self, path: str | os.PathLike[str], dtype: torch.dtype, label: Path | None = None):
        self.path, self.dtype, self.label = Path(path), dtype, label
        self._writer: SafetensorsWriter | None = None
        self._layout: dict[str, tuple[int, ...]] = {}

    def declare(self, layout: Mapping[str, tuple[int, ...]]) -> None:
        self._layout = dict(layout)
        self._writer = SafetensorsWriter(
            self.path, {k: (self.dtype, s) for k, s in layout.items()}, label=self.label
        )

    def write(self, name: str, tensor: torch.Tensor) -> None:
        self._w().write(name, tensor.reshape(self._layout[name]))

    def write_flat(self, name: str, offset: int, flat: torch.Tensor) -> None:
        self._w().write_flat(name, offset, flat)

    def _w(self) -> SafetensorsWriter:
        if self._writer is None:
            raise RuntimeError("declare() must come before the first write")
        return self._writer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.__exit__(RuntimeError, None, None)

    def read(self, name: str) -> torch.Tensor:
        self.close()
        return SafetensorsFile(self.path).read(name).to(torch.float64)

    def digest(self) -> MemberDigest:
        """Close the member and return its sha256 and size (computed where it was written)."""
        self.close()
        return MemberDigest(sha256=file_sha256(self.path), bytes=self.path.stat().st_size)


class ArchiveWriter:
    """Builds an archive in a temporary sibling of ``dest`` and swaps it into place when done.

    Use as a context manager: members are written, then :meth:`finish` writes the manifest last. On any error
    the temporary tree is removed and ``dest`` is untouched.

    Parameters
    ----------
    dest : path
        The archive directory.
    storage_dtype : str
        One of :data:`STORAGE_DTYPES`: dtype of stored means, bases and coefficients.
    overwrite : bool, default False
        Replace ``dest`` even if it is not a weightspace archive (see :func:`weightspace._atomic.check_output`);
        without it such a path is refused with an :class:`~weightspace.errors.OutputError`.
    """

    def __init__(self, dest: str | os.PathLike[str], storage_dtype: str = "float32", *, overwrite: bool = False):
        if storage_dtype not in STORAGE_DTYPES:
            raise ValueError(f"unknown storage dtype {storage_dtype!r}")
        self.dest = Path(dest)
        self.overwrite = overwrite
        self.dtype = STORAGE_DTYPES[storage_dtype]
        self.storage_dtype = storage_dtype
        self.tmp: Path | None = None
        self._stores: list[UnitFileStore] = []
        self._ctx: contextlib.AbstractContextManager[Path] | None = None
        self.archive_bytes = 0

    def __enter__(self) -> ArchiveWriter:
        check_output(self.dest, "archive", overwrite=self.overwrite)
        self._ctx = atomic_dir(self.dest)
        self.tmp = self._ctx.__enter__()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool | None:
        if exc_type is not None:
            for s in self._stores:
                s.abort()
        assert self._ctx is not None
        return self._ctx.__exit__(exc_type, exc, tb)

    def _dir(self) -> Path:
        if self.tmp is None:
            raise RuntimeError("ArchiveWriter must be used as a context manager")
        return self.tmp

    def unit_store(self, index: int) -> UnitFileStore:
        """The member store of unit ``index``."""
        store = UnitFileStore(self.member_path(index), self.dtype, label=self.dest / unit_member_name(index))
        self._stores.append(store)
        return store

    def member_path(self, index: int) -> Path:
        """Where unit ``index``'s member is written (its folder is created); a worker may write it there."""
        path = self._dir() / unit_member_name(index)
        path.parent.mkdir(exist_ok=True)
        return path

    def write_coefficients(self, coefficients: Mapping[str, torch.Tensor]) -> None:
        """``coef/<unit>`` tensors, stored in the storage dtype."""
        specs = {f"coef/{u}": (self.dtype, tuple(c.shape)) for u, c in coefficients.items()}
        with SafetensorsWriter(self._dir() / COEFFICIENTS, specs, label=self.dest / COEFFICIENTS) as w:
            for u, c in coefficients.items():
                w.write(f"coef/{u}", c)

    def write_private(
        self,
        specs: Mapping[str, tuple[torch.dtype, tuple[int, ...]]],
        read: Callable[[str], torch.Tensor],
    ) -> None:
        """Private tensors ``<model>/<key>`` verbatim, each read by ``read(name)`` when written."""
        with SafetensorsWriter(self._dir() / PRIVATE, specs, label=self.dest / PRIVATE) as w:
            for name in specs:
                w.write(name, read(name))

    def write_member(self, member: str, tensors: Mapping[str, torch.Tensor]) -> None:
        """An optional member (one of ``EXTRA_MEMBERS``) holding ``tensors`` in their own dtypes."""
        if member not in EXTRA_MEMBERS:
            raise ValueError(f"{member!r} is not an optional archive member ({', '.join(EXTRA_MEMBERS)})")
        specs = {k: (t.dtype, tuple(t.shape)) for k, t in tensors.items()}
        with SafetensorsWriter(self._dir() / member, specs) as w:
            for k, t in tensors.items():
                w.write(k, t)

    def link_or_copy(self, source: Path, member: str) -> None:
        """Put an existing member file into the new archive (hard link when possible)."""
        dst = self._dir() / member
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, dst)
        except OSError:
            import shutil

            shutil.copyfile(source, dst)

    def finish(self, manifest: dict[str, Any], digests: Mapping[str, MemberDigest] | None = None) -> Manifest:
        """Close every member, hash them, validate and write ``manifest.json`` last.

        ``manifest`` holds every field but ``format``, ``version``, ``created_by`` and ``members``. ``digests``
        are members hashed where they were written (by workers); one whose size differs on disk is hashed again.
        """
        root = self._dir()
        for s in self._stores:
            s.close()
        known = dict(digests or {})
        members = {}
        for p in sorted(root.rglob("*")):
            if p.is_file():
                name = p.relative_to(root).as_posix()
                size = p.stat().st_size
                d = known.get(name)
                members[name] = (
                    {"sha256": d.sha256, "bytes": size}
                    if d is not None and d.bytes == size
                    else {"sha256": file_sha256(p), "bytes": size}
                )
        full = {
            "format": FORMAT,
            "version": VERSION,
            "created_by": f"weightspace {__version__}",
            **manifest,
            "members": members,
        }
        typed = Manifest.model_validate(full)
        (root / "manifest.json").write_text(typed.to_json(), encoding="utf-8")
        self.archive_bytes = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        return typed


def iter_private_specs(
    names: Sequence[str], sources: Sequence[ModelSource], keys: Sequence[str]
) -> Iterator[tuple[str, int, str, tuple[torch.dtype, tuple[int, ...]]]]:
    """``(stored name, model index, key, (dtype, shape))`` for every private tensor a model holds."""
    for key in keys:
        for i, (name, src) in enumerate(zip(names, sources, strict=True)):
            entry = src.entries.get(key)
            if entry is None:
                continue
            tdt = DTYPES[entry.dtype][0]
            if tdt is None:
                raise ArchiveError(f"dtype {entry.dtype} cannot be stored", path=src.path, tensor=key)
            yield f"{name}/{key}", i, key, (tdt, tuple(entry.shape))
