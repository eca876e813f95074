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
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
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
    ValidationError,
    field_validator,
    model_validator,
)

from weightspace._atomic import atomic_dir
from weightspace._version import __version__
from weightspace.decompose._unitfit import UNIT_FITS, UnitRecord
from weightspace.decompose.pca import PCAUnit
from weightspace.errors import ArchiveError, CorruptFileError, WeightspaceError
from weightspace.io import DTYPES, ModelSource, PeftSource, SafetensorsFile, SafetensorsWriter, file_sha256
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


class LoraRecord(_Record):
    """How one LoRA module of a PEFT adapter maps to its unit."""

    a_key: str
    b_key: str
    rank: StrictInt
    scaling: float
    fan_in_fan_out: StrictBool
    a_shape: list[StrictInt]
    b_shape: list[StrictInt]


class ModelRecord(_Record):
    """Everything ``reconstruct`` needs to write one model back in its own layout."""

    name: str
    source_path: str = ""
    source_format: str
    source_sha256: str = ""
    source_bytes: StrictInt = 0
    metadata: dict[str, str] | None = None
    configs: dict[str, str] | None = None
    dtypes: dict[str, str]
    private: list[str]
    key_order: list[str] = []
    lora: dict[str, LoraRecord] | None = None
    extra_keys: dict[str, str] = {}
    file_key_order: list[str] | None = None
    added: StrictBool = False
    projection: dict[str, float] | None = None


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
        for m in self.models:
            if not m.name or "/" in m.name or m.name in (".", ".."):
                raise ValueError(f"model name {m.name!r} is not a plain name")
        for name in self.members:
            if not (name in (_V1_BASIS, COEFFICIENTS, PRIVATE, *EXTRA_MEMBERS) or _UNIT_MEMBER.fullmatch(name)):
                raise ValueError(f"member name {name!r} is not an archive member name")
        for u in self.units:
            if u.member is not None and u.member not in self.members:
                raise ValueError(f"unit {u.name!r} names member {u.member!r}, which 'members' does not list")
        return self

    def to_json(self) -> str:
        """The manifest as written to disk."""
        return json.dumps(self.model_dump(mode="json", exclude_none=True), indent=1)

    @property
    def unit_index(self) -> dict[str, UnitRecord]:
        return {u.name: u for u in self.units}


def _parse_manifest(path: Path) -> Manifest:
    raw = _read_regular(path, MAX_MANIFEST_BYTES, "manifest")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as err:
        raise ArchiveError(f"cannot parse manifest ({type(err).__name__}: {str(err)[:200]})", path=path) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ArchiveError(f"manifest is not a {FORMAT} manifest", path=path)
    if type(data.get("version")) is not int or data["version"] not in READABLE_VERSIONS:
        raise ArchiveError(
            f"archive format version {data.get('version')!r} is not supported (this weightspace reads "
            f"{', '.join(map(str, READABLE_VERSIONS))})",
            path=path,
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ArchiveError(
            f"manifest is malformed at {where}: {first['msg']} ({err.error_count()} problem(s))", path=path
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
        "metadata": src.metadata,
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
            raise ArchiveError("archive member is not a regular file", path=p)
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
            got = file_sha256(p)
            if got != want.sha256:
                raise ArchiveError(
                    f"member is corrupted: sha256 {got[:12]}…; the manifest records {want.sha256[:12]}…", path=p
                )

    def _file(self, member: str) -> SafetensorsFile:
        if member not in self._files:
            if member not in self.manifest.members:
                raise ArchiveError("the manifest does not list this member", path=self.path / member)
            try:
                self._files[member] = SafetensorsFile(self._member_path(member))
            except CorruptFileError as err:
                raise ArchiveError(f"member is unreadable: {err.message}", path=self.path / member) from None
        return self._files[member]

    def read_member(self, member: str, key: str) -> torch.Tensor:
        """Tensor ``key`` of ``member``, float64."""
        f = self._file(member)
        if key not in f.tensors:
            raise ArchiveError("member lacks a tensor the manifest implies", path=f.path, tensor=key)
        try:
            return f.read(key).to(torch.float64)
        except WeightspaceError as err:
            raise ArchiveError(f"member is unreadable: {err.message}", path=f.path, tensor=key) from None

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
        return f.read(name)

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


# ------------------------------------------------------------------------------------------------ writing
class _UnitFileStore:
    """One unit's member file: declare the layout, stream tensors in, read them back once closed."""

    def __init__(self, path: Path, dtype: torch.dtype):
        self.path, self.dtype = path, dtype
        self._writer: SafetensorsWriter | None = None
        self._layout: dict[str, tuple[int, ...]] = {}

    def declare(self, layout: Mapping[str, tuple[int, ...]]) -> None:
        self._layout = dict(layout)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = SafetensorsWriter(self.path, {k: (self.dtype, s) for k, s in layout.items()})

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
    """

    def __init__(self, dest: str | os.PathLike[str], storage_dtype: str = "float32"):
        if storage_dtype not in STORAGE_DTYPES:
            raise ValueError(f"unknown storage dtype {storage_dtype!r}")
        self.dest = Path(dest)
        self.dtype = STORAGE_DTYPES[storage_dtype]
        self.storage_dtype = storage_dtype
        self.tmp: Path | None = None
        self._stores: list[_UnitFileStore] = []
        self._ctx: contextlib.AbstractContextManager[Path] | None = None
        self.archive_bytes = 0

    def __enter__(self) -> ArchiveWriter:
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

    def unit_store(self, index: int) -> _UnitFileStore:
        """The member store of unit ``index``."""
        store = _UnitFileStore(self._dir() / unit_member_name(index), self.dtype)
        self._stores.append(store)
        return store

    def write_coefficients(self, coefficients: Mapping[str, torch.Tensor]) -> None:
        """``coef/<unit>`` tensors, stored in the storage dtype."""
        specs = {f"coef/{u}": (self.dtype, tuple(c.shape)) for u, c in coefficients.items()}
        with SafetensorsWriter(self._dir() / COEFFICIENTS, specs) as w:
            for u, c in coefficients.items():
                w.write(f"coef/{u}", c)

    def write_private(
        self,
        specs: Mapping[str, tuple[torch.dtype, tuple[int, ...]]],
        read: Callable[[str], torch.Tensor],
    ) -> None:
        """Private tensors ``<model>/<key>`` verbatim, each read by ``read(name)`` when written."""
        with SafetensorsWriter(self._dir() / PRIVATE, specs) as w:
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

    def finish(self, manifest: dict[str, Any]) -> Manifest:
        """Close every member, hash them, validate and write ``manifest.json`` last.

        ``manifest`` holds every field but ``format``, ``version``, ``created_by`` and ``members``.
        """
        root = self._dir()
        for s in self._stores:
            s.close()
        members = {}
        for p in sorted(root.rglob("*")):
            if p.is_file():
                name = p.relative_to(root).as_posix()
                members[name] = {"sha256": file_sha256(p), "bytes": p.stat().st_size}
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
