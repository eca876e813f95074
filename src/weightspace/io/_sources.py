"""Model sources: one checkpoint in any supported layout, indexed lazily.

A :class:`ModelSource` resolves a path into ``{unit key: Entry}`` without reading any tensor data. Layouts:

========== ============================================================================
format     what it is
========== ============================================================================
safetensors a single ``.safetensors`` file
hf-dir      a directory with ``model.safetensors`` (+ ``config.json`` ...)
hf-sharded  a directory with ``model.safetensors.index.json`` and its shards
peft        a PEFT LoRA adapter directory (``adapter_config.json`` + ``adapter_model.safetensors`` / ``.bin``)
torch       a pickled state dict (``.bin``/``.pt``/``.pth``/``.ckpt`` or a directory with
            ``pytorch_model.bin``), read only with ``allow_pickle=True`` and ``weights_only=True``
========== ============================================================================

Every file of a directory model (weights, shards, index, configs) is opened through the path policy
(:mod:`weightspace.io._pathpolicy`): a regular file inside the model directory, never a FIFO or device, never a
link that leaves the directory (unless ``--follow-symlinks``). Every JSON file is parsed by the bounded parser and
checked against a schema. The shard index is authoritative: a shard tensor the index does not list is ignored
with a warning (as ``transformers`` ignores it); a listed tensor missing from its shard is an error.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from weightspace._json import parse_json
from weightspace.errors import CorruptFileError, NonFiniteError, TensorKeyError, UnsupportedFormatError
from weightspace.io._pathpolicy import check_name, following_symlinks, open_regular, read_regular
from weightspace.io._peft import LoraConfig, LoraModule, parse_adapter_keys, read_adapter_config
from weightspace.io._pickle import PICKLE_SUFFIXES, load_pickled_state_dict
from weightspace.io._safetensors import DTYPES, SafetensorsFile

__all__ = [
    "CONFIG_FILES",
    "MAX_CONFIG_BYTES",
    "MAX_INDEX_BYTES",
    "Entry",
    "ModelSource",
    "PeftSource",
    "file_sha256",
    "is_model_dir",
    "open_source",
    "torch_dtype_tag",
]

EntryKind = Literal["dense", "lora", "extra"]
# Small files copied through an archive so that `reconstruct` can rebuild a loadable directory.
CONFIG_FILES = ("config.json", "generation_config.json")
MAX_CONFIG_BYTES = 16 << 20
"""Largest ``config.json`` (or other small JSON file of a model) weightspace reads and copies."""
MAX_INDEX_BYTES = 64 << 20
"""Largest ``model.safetensors.index.json`` weightspace reads."""
_TAGS = {v[0]: k for k, v in DTYPES.items() if v[0] is not None}


def torch_dtype_tag(dtype: torch.dtype) -> str:
    """The safetensors tag of a torch dtype (``torch.float32`` → ``"F32"``)."""
    return _TAGS[dtype]


@dataclass(frozen=True)
class Entry:
    """One weight of a model as weightspace sees it.

    Attributes
    ----------
    key : str
        Unit key (a tensor key; for LoRA, the base model's weight key ``<module>.weight``).
    shape : tuple of int
        Shape of the weight (for LoRA, of the base weight the update applies to).
    dtype : str
        Safetensors dtype tag of the stored data.
    kind : {"dense", "lora", "extra"}
        ``dense``: a stored tensor; ``lora``: an update ``s·B·A`` kept factored; ``extra``: a full tensor inside a
        PEFT adapter (``modules_to_save``), which is not a delta.
    """

    key: str
    shape: tuple[int, ...]
    dtype: str
    kind: EntryKind

    @property
    def is_float(self) -> bool:
        return self.dtype in ("F64", "F32", "F16", "BF16")

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class ModelSource:
    """A lazily indexed checkpoint. Use :func:`open_source` to build one.

    Attributes
    ----------
    path : Path
        What the user named (file or directory).
    format : str
        One of ``safetensors``, ``hf-dir``, ``hf-sharded``, ``peft``, ``torch``.
    entries : dict of str to Entry
        Every weight, by unit key.
    metadata : dict of str to str
        Safetensors ``__metadata__`` of the (first) weight file.
    configs : dict of str to str
        Small config files (``config.json``, ``adapter_config.json`` ...) by file name, verbatim.
    """

    format: str = ""

    def __init__(self, path: Path):
        self.path = path
        # Files of a directory model must resolve inside this root (see weightspace.io._pathpolicy). The choice is
        # made once, here: later reads may run on worker threads or processes that do not share the setting.
        self.root: Path | None = model_root(path) if path.is_dir() and not following_symlinks() else None
        self.entries: dict[str, Entry] = {}
        self.metadata: dict[str, str] = {}
        self.configs: dict[str, str] = {}
        self._sha256: str | None = None

    # -- reading -------------------------------------------------------------------------------
    def read(self, key: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """Stored tensor ``key`` (or rows of its 2-D view), in its stored dtype."""
        raise NotImplementedError

    def lora(self, key: str) -> tuple[torch.Tensor, torch.Tensor, LoraModule]:
        """Factors ``(B, A)`` as stored and the module record, for a ``lora`` entry."""
        raise TensorKeyError("not a LoRA update", path=self.path, tensor=key)

    def entry(self, key: str) -> Entry:
        try:
            return self.entries[key]
        except KeyError:
            raise TensorKeyError("no such tensor in this model", path=self.path, tensor=key) from None

    # -- identity ------------------------------------------------------------------------------
    def files(self) -> list[Path]:
        """Files whose bytes define this model (weights and configs), sorted."""
        raise NotImplementedError

    def sha256(self) -> str:
        """Content hash: of the file itself, or of (relative name, bytes) of every file for a directory."""
        if self._sha256 is None:
            files = self.files()
            if len(files) == 1 and files[0] == self.path:
                self._sha256 = file_sha256(files[0])
            else:
                h = hashlib.sha256()
                for f in files:
                    h.update(f.relative_to(self.path).as_posix().encode() + b"\0")
                    h.update(bytes.fromhex(file_sha256(f, root=self.root)))
                self._sha256 = h.hexdigest()
        return self._sha256

    def remember_sha256(self, digest: str) -> None:
        """Adopt a content hash that :meth:`sha256` computed elsewhere for the same files (e.g. on a worker)."""
        self._sha256 = digest

    @property
    def adapter_config(self) -> dict | None:
        """The PEFT adapter config (parsed) for ``peft`` sources, else None."""
        return None

    def nbytes_on_disk(self) -> int:
        return sum(f.stat().st_size for f in self.files())  # every file was opened (checked) when indexed

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, {len(self.entries)} tensors)"


def file_sha256(path: str | os.PathLike[str], *, root: str | os.PathLike[str] | None = None) -> str:
    """Hex sha256 of a regular file's bytes (refusing FIFOs, devices, links out of ``root``), read into one reused
    1 MiB buffer (no new bytes object per block)."""
    h = hashlib.sha256()
    buf = memoryview(bytearray(1 << 20))
    fd = open_regular(path, root=root)
    with os.fdopen(fd, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(buf[:n])
    return h.hexdigest()


def read_json_file(
    path: Path, *, root: Path | None, what: str, limit: int = MAX_CONFIG_BYTES
) -> tuple[object, str]:
    """A small JSON file of a model, read by the path policy and the bounded parser: (parsed, verbatim text)."""
    raw = read_regular(path, limit=limit, root=root, what=what)
    obj = parse_json(raw, path=path, what=what)
    return obj, raw.decode("utf-8")


def model_root(directory: Path) -> Path:
    """The folder a directory model's files must stay inside: the directory itself, or for a snapshot in the
    Hugging Face cache (``models--org--name/snapshots/<rev>[/sub]``, whose files link to ``../../blobs``) the
    repo's cache folder ``models--org--name``.

    Examples
    --------
    >>> model_root(Path("/c/hub/models--org--tiny/snapshots/0123abcd/sub")).name
    'models--org--tiny'
    >>> model_root(Path("/data/my-model")).name
    'my-model'
    """
    real = Path(os.path.realpath(directory))
    for d in (real, *real.parents):
        if d.parent.name == "snapshots" and d.parent.parent.name.startswith("models--"):
            return d.parent.parent
    return directory


def _read_configs(directory: Path, names: tuple[str, ...], root: Path | None = None) -> dict[str, str]:
    """Config files present in ``directory``, verbatim; each must be a regular JSON file inside ``root``."""
    out = {}
    for name in names:
        p = directory / name
        if os.path.lexists(p):
            _, out[name] = read_json_file(p, root=root or directory, what=name)
    return out


class _SafetensorsBacked(ModelSource):
    """Entries backed by one or more safetensors files (key → file)."""

    def __init__(self, path: Path):
        super().__init__(path)
        self._where: dict[str, SafetensorsFile] = {}

    def _add_file(self, st: SafetensorsFile, keys: list[str] | None = None) -> None:
        for key in st.keys() if keys is None else keys:
            info = st.info(key)
            self._where[key] = st
            self.entries[key] = Entry(key, info.shape, info.dtype, "dense")

    def read(self, key: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        try:
            st = self._where[key]
        except KeyError:
            raise TensorKeyError("no such tensor in this model", path=self.path, tensor=key) from None
        return st.read(key, rows)

    def files(self) -> list[Path]:
        files = {st.path for st in self._where.values()}
        files |= {self.path / n for n in self.configs} if self.path.is_dir() else set()
        return sorted(files)


class SafetensorsSource(_SafetensorsBacked):
    format = "safetensors"

    def __init__(self, path: Path):
        super().__init__(path)
        st = SafetensorsFile(path)
        self.metadata = dict(st.metadata)
        self._add_file(st)

    def files(self) -> list[Path]:
        return [self.path]


class HFDirSource(_SafetensorsBacked):
    format = "hf-dir"

    def __init__(self, path: Path):
        super().__init__(path)
        st = SafetensorsFile(path / "model.safetensors", root=self.root)
        self.metadata = dict(st.metadata)
        self.configs = _read_configs(path, CONFIG_FILES, self.root)
        self._add_file(st)


class ShardedSource(_SafetensorsBacked):
    format = "hf-sharded"
    INDEX = "model.safetensors.index.json"

    def __init__(self, path: Path):
        super().__init__(path)
        index_path = path / self.INDEX
        index, text = read_json_file(index_path, root=self.root, what="shard index", limit=MAX_INDEX_BYTES)
        if not isinstance(index, dict):
            raise CorruptFileError("the shard index is not a JSON object", path=index_path)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CorruptFileError("'weight_map' must be a non-empty object (tensor -> shard)", path=index_path)
        if not isinstance(index.get("metadata", {}), dict | None):
            raise CorruptFileError("'metadata' must be an object", path=index_path)
        by_shard: dict[str, list[str]] = {}
        for key, shard in weight_map.items():
            check_shard_name(shard, path=index_path, tensor=key)
            by_shard.setdefault(shard, []).append(key)
        self.configs = _read_configs(path, CONFIG_FILES, self.root)
        self.configs[self.INDEX] = text
        for shard in sorted(by_shard):
            st = SafetensorsFile(path / shard, root=self.root)
            if not self.metadata:
                self.metadata = dict(st.metadata)
            keys = by_shard[shard]
            present = set(st.keys())
            for key in keys:
                if key not in present:
                    raise TensorKeyError(
                        f"the index maps this tensor to {shard}, which lacks it", path=st.path, tensor=key
                    )
            stray = sorted(present - set(keys))
            if stray:
                warnings.warn(
                    f"{st.path}: {len(stray)} tensor(s) the shard index does not list are ignored (the index is "
                    f"authoritative, as in transformers), e.g. '{stray[0]}'",
                    UserWarning,
                    stacklevel=2,
                )
            self._add_file(st, keys)


def check_shard_name(shard: object, *, path: str | os.PathLike[str], tensor: str | None = None) -> str:
    """A shard name from an index: one plain ``*.safetensors`` file name (never a path, never a config file).

    Examples
    --------
    >>> check_shard_name("model-00001-of-00002.safetensors", path="index.json")
    'model-00001-of-00002.safetensors'
    """
    name = check_name(shard, what="shard name", path=path, tensor=tensor)
    if not name.endswith(".safetensors"):
        raise CorruptFileError(f"shard name {name!r} must end in .safetensors", path=path, tensor=tensor)
    return name


class TorchSource(ModelSource):
    format = "torch"

    def __init__(self, path: Path, *, allow_pickle: bool):
        super().__init__(path)
        weight_file = path / "pytorch_model.bin" if path.is_dir() else path
        if path.is_dir():
            self.configs = _read_configs(path, CONFIG_FILES, self.root)
        self._weight_file = weight_file
        self._tensors = load_pickled_state_dict(weight_file, allow_pickle=allow_pickle, root=self.root)
        for key, t in self._tensors.items():
            if t.dtype not in _TAGS:
                raise UnsupportedFormatError(f"dtype {t.dtype} is not supported", path=weight_file, tensor=key)
            self.entries[key] = Entry(key, tuple(t.shape), _TAGS[t.dtype], "dense")

    def read(self, key: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        t = self._tensors.get(key)
        if t is None:
            raise TensorKeyError("no such tensor in this model", path=self._weight_file, tensor=key)
        if rows is None:
            return t
        n_rows = t.shape[0] if t.dim() else 1
        return t.reshape(n_rows, -1)[rows[0] : rows[1]]

    def files(self) -> list[Path]:
        extra = [self.path / n for n in self.configs] if self.path.is_dir() else []
        return sorted([self._weight_file, *extra])


class PeftSource(ModelSource):
    format = "peft"

    def __init__(self, path: Path, *, allow_pickle: bool):
        super().__init__(path)
        cfg_path = path / "adapter_config.json"
        self.config: LoraConfig = read_adapter_config(cfg_path, root=self.root)
        self.configs = {"adapter_config.json": self.config.text}
        st_path = path / "adapter_model.safetensors"
        self._st: SafetensorsFile | None = None
        self._tensors: dict[str, torch.Tensor] | None = None
        if os.path.lexists(st_path):
            self._st = SafetensorsFile(st_path, root=self.root)
            self.metadata = dict(self._st.metadata)
            shapes = {k: self._st.info(k).shape for k in self._st}
            dtypes = {k: self._st.info(k).dtype for k in self._st}
            self._weight_file = st_path
        elif os.path.lexists(path / "adapter_model.bin"):
            self._weight_file = path / "adapter_model.bin"
            self._tensors = load_pickled_state_dict(self._weight_file, allow_pickle=allow_pickle, root=self.root)
            shapes = {k: tuple(t.shape) for k, t in self._tensors.items()}
            dtypes = {k: _TAGS.get(t.dtype, str(t.dtype)) for k, t in self._tensors.items()}
        else:
            raise CorruptFileError("adapter directory has neither adapter_model.safetensors nor .bin", path=path)
        self.modules, extras = parse_adapter_keys(shapes, self.config, self._weight_file)
        self._extras = extras
        for key, mod in self.modules.items():
            a_dt, b_dt = dtypes[mod.a_key], dtypes[mod.b_key]
            self.entries[key] = Entry(key, mod.weight_shape, a_dt if a_dt == b_dt else "F32", "lora")
        for key, file_key in extras.items():
            self.entries[key] = Entry(key, shapes[file_key], dtypes[file_key], "extra")

    def _raw(self, file_key: str) -> torch.Tensor:
        if self._st is not None:
            return self._st.read(file_key)
        assert self._tensors is not None  # set in __init__ when there is no safetensors file
        return self._tensors[file_key]

    def read(self, key: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        file_key = self._extras.get(key)
        if file_key is None:
            raise TensorKeyError(
                "LoRA updates are read as factors (use lora()); this key is not a stored tensor",
                path=self._weight_file,
                tensor=key,
            )
        t = self._raw(file_key)
        if rows is None:
            return t
        return t.reshape(t.shape[0] if t.dim() else 1, -1)[rows[0] : rows[1]]

    def lora(self, key: str) -> tuple[torch.Tensor, torch.Tensor, LoraModule]:
        mod = self.modules.get(key)
        if mod is None:
            raise TensorKeyError("not a LoRA-adapted weight of this adapter", path=self._weight_file, tensor=key)
        b, a = self._raw(mod.b_key), self._raw(mod.a_key)
        for file_key, t in ((mod.b_key, b), (mod.a_key, a)):
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t)).sum())
                raise NonFiniteError(
                    f"{bad} non-finite value(s) (NaN or inf) in a LoRA factor; weights must be finite",
                    path=self._weight_file,
                    tensor=file_key,
                )
        return b, a, mod

    @property
    def adapter_config(self) -> dict:
        return self.config.raw

    @property
    def extra_keys(self) -> dict[str, str]:
        """Unit-style key → file key of the adapter's full (non-LoRA) tensors."""
        return dict(self._extras)

    def file_keys(self) -> list[str]:
        """Tensor keys of the adapter file, in file order."""
        return self._st.keys() if self._st is not None else list(self._tensors or {})

    def raw_shape(self, file_key: str) -> tuple[int, ...]:
        """Shape of a tensor of the adapter file, by its file key."""
        if self._st is not None:
            return self._st.info(file_key).shape
        return tuple((self._tensors or {})[file_key].shape)

    def files(self) -> list[Path]:
        return sorted([self._weight_file, self.path / "adapter_config.json"])


def is_model_dir(path: Path) -> bool:
    """True if ``path`` is a directory holding one model (not a folder of models)."""
    return path.is_dir() and any(
        os.path.lexists(path / n)
        for n in (
            "adapter_config.json",
            "model.safetensors",
            ShardedSource.INDEX,
            "pytorch_model.bin",
        )
    )


def open_source(path: str | os.PathLike[str], *, allow_pickle: bool = False) -> ModelSource:
    """Index the checkpoint at ``path`` (no tensor data is read).

    Parameters
    ----------
    path : str or Path
        A ``.safetensors`` file, an HF model directory (single file or sharded), a PEFT adapter directory, or a
        pickled state dict.
    allow_pickle : bool, default False
        Permit pickle files, loaded with ``torch.load(weights_only=True)``.

    Returns
    -------
    ModelSource
    """
    p = Path(path)
    if p.is_dir():
        if os.path.lexists(p / "adapter_config.json"):
            return PeftSource(p, allow_pickle=allow_pickle)
        if os.path.lexists(p / ShardedSource.INDEX):
            return ShardedSource(p)
        if os.path.lexists(p / "model.safetensors"):
            return HFDirSource(p)
        if os.path.lexists(p / "pytorch_model.bin"):
            return TorchSource(p, allow_pickle=allow_pickle)
        raise UnsupportedFormatError(
            "directory is not a model (no adapter_config.json, model.safetensors, "
            "model.safetensors.index.json or pytorch_model.bin)",
            path=p,
        )
    if not p.exists() and not p.is_symlink():
        raise CorruptFileError("file does not exist", path=p)
    suffix = p.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        return TorchSource(p, allow_pickle=allow_pickle)
    if suffix == ".safetensors":
        return SafetensorsSource(p)
    raise UnsupportedFormatError(
        f"unrecognised checkpoint suffix {suffix or '(none)'!r}; expected .safetensors, a model directory, "
        f"or a pickle ({', '.join(PICKLE_SUFFIXES)}) with --allow-pickle",
        path=p,
    )
