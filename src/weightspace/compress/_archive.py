"""The ``.wsz`` archive: a directory of safetensors members and a manifest written last.

::

    ARCHIVE.wsz/
      basis.safetensors         mean/<unit>, basis/<unit> (k, *shape) for PCA; U/<unit>, V/<unit> for HOSVD
      coefficients.safetensors  coef/<unit>: (n_models, k) or (n_models, k1, k2)
      private.safetensors       <model>/<key>: tensors kept per model verbatim
      manifest.json             format, version, models, units, sha256 + size of every member

The manifest is written after every member is complete and fsynced, and the whole directory is swapped into
place atomically, so an interrupted write leaves the previous archive (or nothing). Readers refuse an archive
without a manifest, with an unknown format version, or whose members' sha256 differ from the manifest.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from weightspace.errors import ArchiveError, CorruptFileError
from weightspace.io import SafetensorsFile, file_sha256

__all__ = ["FORMAT", "MEMBERS", "VERSION", "Archive", "member_digest"]

FORMAT = "weightspace-archive"
VERSION = 1
MEMBERS = ("basis.safetensors", "coefficients.safetensors", "private.safetensors")


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class _Member(_Record):
    sha256: str
    bytes: int


class _Unit(_Record):
    name: str
    shape: list[int]
    rows: int
    cols: int
    method: Literal["pca", "hosvd"]
    k: int | None = None
    k1: int | None = None
    k2: int | None = None

    @model_validator(mode="after")
    def _ranks(self) -> _Unit:
        if self.method == "pca" and self.k is None:
            raise ValueError("a pca unit needs 'k'")
        if self.method == "hosvd" and (self.k1 is None or self.k2 is None):
            raise ValueError("a hosvd unit needs 'k1' and 'k2'")
        return self


class _Model(_Record):
    name: str
    source_format: str
    dtypes: dict[str, str]
    private: list[str]
    key_order: list[str] = []
    lora: dict[str, dict[str, Any]] | None = None


class _Manifest(_Record):
    """The parts of manifest.json that readers rely on; anything else is kept as written."""

    format: Literal["weightspace-archive"]
    version: int
    kind: Literal["full", "peft"]
    delta: bool
    base: dict[str, Any] | None
    models: list[_Model]
    units: list[_Unit]
    members: dict[str, _Member]

    @model_validator(mode="after")
    def _unique(self) -> _Manifest:
        for what, names in (("model", [m.name for m in self.models]), ("unit", [u.name for u in self.units])):
            if len(set(names)) != len(names):
                raise ValueError(f"{what} names must be unique")
        return self


def _check_manifest(manifest: dict[str, Any], path: Path) -> None:
    try:
        _Manifest.model_validate(manifest)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ArchiveError(
            f"manifest is malformed at {where}: {first['msg']} ({err.error_count()} problem(s))", path=path
        ) from None


def member_digest(path: Path) -> dict[str, Any]:
    """``{"sha256", "bytes"}`` of one member file."""
    return {"sha256": file_sha256(path), "bytes": path.stat().st_size}


class Archive:
    """A read-only, verified view of a ``.wsz`` archive.

    Parameters
    ----------
    path : str or Path
        The archive directory.
    verify : bool, default True
        Check every member's sha256 against the manifest (reads the archive once).

    Attributes
    ----------
    manifest : dict
        The parsed ``manifest.json``.
    model_names : list of str
    units : dict of str to dict
        Per-unit manifest records, in order.
    """

    def __init__(self, path: str | os.PathLike[str], *, verify: bool = True):
        self.path = Path(path)
        if not self.path.is_dir():
            raise ArchiveError("not an archive directory (a .wsz archive is a folder)", path=self.path)
        mpath = self.path / "manifest.json"
        if not mpath.is_file():
            raise ArchiveError(
                "archive has no manifest.json; it is incomplete (an interrupted write?) or not an archive",
                path=self.path,
            )
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ArchiveError(f"cannot parse manifest ({err})", path=mpath) from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ArchiveError(f"manifest is not a {FORMAT} manifest", path=mpath)
        if manifest.get("version") != VERSION:
            raise ArchiveError(
                f"archive format version {manifest.get('version')!r} is not supported (this weightspace reads {VERSION})",
                path=mpath,
            )
        _check_manifest(manifest, mpath)
        self.manifest = manifest
        members = manifest.get("members", {})
        for name in MEMBERS:
            if name not in members:
                raise ArchiveError("manifest does not list this member", path=self.path / name)
            if not (self.path / name).is_file():
                raise ArchiveError("archive member is missing", path=self.path / name)
        if verify:
            self.verify()
        self._files: dict[str, SafetensorsFile] = {}
        self.model_names: list[str] = [m["name"] for m in manifest["models"]]
        self.units: dict[str, dict[str, Any]] = {u["name"]: u for u in manifest["units"]}

    def verify(self) -> None:
        """Raise :class:`ArchiveError` if any member's size or sha256 differs from the manifest."""
        for name, want in self.manifest["members"].items():
            got = member_digest(self.path / name)
            if got["bytes"] != want.get("bytes") or got["sha256"] != want.get("sha256"):
                raise ArchiveError(
                    f"member is corrupted: sha256 {got['sha256'][:12]}…, {got['bytes']} bytes; the manifest records "
                    f"{str(want.get('sha256'))[:12]}…, {want.get('bytes')} bytes",
                    path=self.path / name,
                )

    def _file(self, member: str) -> SafetensorsFile:
        if member not in self._files:
            try:
                self._files[member] = SafetensorsFile(self.path / member)
            except CorruptFileError as err:
                raise ArchiveError(f"member is unreadable: {err.message}", path=self.path / member) from None
        return self._files[member]

    def _read(self, member: str, key: str) -> torch.Tensor:
        f = self._file(member)
        if key not in f.tensors:
            raise ArchiveError("member lacks a tensor the manifest implies", path=f.path, tensor=key)
        return f.read(key).to(torch.float64)

    # -- fitted pieces ----------------------------------------------------------------------------
    @property
    def n_models(self) -> int:
        return len(self.model_names)

    def model_index(self, name: str) -> int:
        try:
            return self.model_names.index(name)
        except ValueError:
            listing = ", ".join(repr(n) for n in self.model_names[:10])
            raise ArchiveError(f"no model {name!r} in archive; models: {listing}", path=self.path) from None

    def mean(self, unit: str) -> torch.Tensor:
        """Mean member of ``unit``, float64, shape (rows, cols)."""
        rec = self.units[unit]
        return self._read("basis.safetensors", f"mean/{unit}").reshape(rec["rows"], rec["cols"])

    def basis(self, unit: str) -> torch.Tensor:
        """PCA basis of ``unit``, float64, shape (k, rows * cols)."""
        rec = self.units[unit]
        return self._read("basis.safetensors", f"basis/{unit}").reshape(rec["k"], rec["rows"] * rec["cols"])

    def factors(self, unit: str) -> tuple[torch.Tensor, torch.Tensor]:
        """HOSVD factors ``(U (rows, k1), V (cols, k2))`` of ``unit``."""
        return self._read("basis.safetensors", f"U/{unit}"), self._read("basis.safetensors", f"V/{unit}")

    def coefficients(self, unit: str) -> torch.Tensor:
        """``(n_models, k)`` (PCA) or ``(n_models, k1, k2)`` (HOSVD), float64."""
        return self._read("coefficients.safetensors", f"coef/{unit}")

    def private(self, model: str, key: str) -> torch.Tensor:
        """A private tensor of ``model``, verbatim (stored dtype)."""
        f = self._file("private.safetensors")
        name = f"{model}/{key}"
        if name not in f.tensors:
            raise ArchiveError("archive holds no such private tensor", path=f.path, tensor=name)
        return f.read(name)

    def member(self, i: int, unit: str, *, coefficients: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstructed member of model ``i`` (2-D view), float64: ``μ + c_i V`` or ``μ + U C_i Vᵀ``."""
        rec = self.units[unit]
        c = self.coefficients(unit)[i] if coefficients is None else coefficients
        mean = self.mean(unit)
        if rec["method"] == "hosvd":
            u, v = self.factors(unit)
            return mean + u @ c @ v.T
        if rec["k"] == 0:
            return mean
        return mean + (c @ self.basis(unit)).reshape(mean.shape)
