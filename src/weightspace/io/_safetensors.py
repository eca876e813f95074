"""Safetensors reading and writing with our own checks in front of the parser.

Reading validates the header before anything else touches the file: the path must be a regular file (a FIFO
named ``x.safetensors`` would otherwise block ``open``), the declared header length must fit in the file and
be at most 16 MiB, the JSON must have no duplicate keys, and every tensor's byte range must match its dtype and
shape, lie inside the data buffer and tile it with no overlap or hole. Tensor bytes are then read with
``pread`` into a fresh buffer (never ``mmap``), so a file truncated underneath the reader yields an error,
not a SIGBUS; each read also checks that the file's size and mtime are those seen when it was indexed.

Writing is streaming: :class:`SafetensorsWriter` lays out the header from declared shapes first, then accepts
tensors (or row ranges of them) in any order, so an archive with a large basis never needs to sit in RAM.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from weightspace.errors import CorruptFileError, ShapeMismatchError, UnsafeFileError, UnsupportedFormatError

__all__ = [
    "DTYPES",
    "FLOAT_DTYPES",
    "MAX_HEADER_BYTES",
    "SafetensorsFile",
    "SafetensorsWriter",
    "TensorInfo",
    "dtype_from_tag",
    "open_regular_file",
    "save_safetensors",
]

MAX_HEADER_BYTES = 16 * 1024 * 1024

# safetensors dtype tag -> (torch dtype or None where torch has none, item size in bytes)
DTYPES: dict[str, tuple[torch.dtype | None, int]] = {
    "F64": (torch.float64, 8),
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "F8_E4M3": (getattr(torch, "float8_e4m3fn", None), 1),
    "F8_E5M2": (getattr(torch, "float8_e5m2", None), 1),
    "I64": (torch.int64, 8),
    "I32": (torch.int32, 4),
    "I16": (torch.int16, 2),
    "I8": (torch.int8, 1),
    "U64": (getattr(torch, "uint64", None), 8),
    "U32": (getattr(torch, "uint32", None), 4),
    "U16": (getattr(torch, "uint16", None), 2),
    "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1),
    "C64": (torch.complex64, 8),
}
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})
_TORCH_TO_TAG = {v[0]: k for k, v in DTYPES.items() if v[0] is not None}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives and what it is, read from a header without touching its bytes.

    Attributes
    ----------
    key : str
        Tensor name in the file.
    dtype : str
        Safetensors dtype tag (``"F32"``, ``"BF16"``, ...).
    shape : tuple of int
        Tensor shape.
    begin, end : int
        Byte range relative to the start of the data buffer.
    """

    key: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    @property
    def torch_dtype(self) -> torch.dtype | None:
        return DTYPES[self.dtype][0]

    @property
    def itemsize(self) -> int:
        return DTYPES[self.dtype][1]


def open_regular_file(path: Path) -> int:
    """Open ``path`` read-only, refusing anything that is not a regular file.

    ``O_NONBLOCK`` keeps ``open`` from hanging on a FIFO swapped in after the ``stat`` check; ``fstat`` on the
    descriptor then decides.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CorruptFileError("file does not exist", path=path) from None
    except OSError as err:
        raise CorruptFileError(f"cannot stat file ({err.strerror})", path=path) from None
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFileError(
            f"not a regular file ({_file_kind(st.st_mode)}); only regular files are read", path=path
        )
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise CorruptFileError(f"cannot open file ({err.strerror})", path=path) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafeFileError("not a regular file; only regular files are read", path=path)
    return fd


def _file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _pread_exact(fd: int, buf: memoryview, offset: int, path: Path, what: str) -> None:
    done = 0
    total = len(buf)
    while done < total:
        n = os.preadv(fd, [buf[done:]], offset + done)
        if n == 0:
            raise CorruptFileError(
                f"file ended after {offset + done} bytes while reading {what} "
                f"(needed {offset + total}); it is truncated or changed while being read",
                path=path,
            )
        done += n


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        self.key = key


def _parse_header(raw: bytes, path: Path) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptFileError("safetensors header is not valid UTF-8", path=path) from None
    if not text.startswith("{"):
        raise CorruptFileError("safetensors header does not start with '{'", path=path)
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as dup:
        raise CorruptFileError(
            "safetensors header lists this key twice; a file must name each tensor once", path=path, tensor=dup.key
        ) from None
    except RecursionError:
        raise CorruptFileError("safetensors header nests too deeply to be a tensor index", path=path) from None
    except json.JSONDecodeError as err:
        raise CorruptFileError(
            f"safetensors header is not valid JSON ({err.msg} at {err.pos})", path=path
        ) from None
    if not isinstance(obj, dict):
        raise CorruptFileError("safetensors header is not a JSON object", path=path)
    return obj


class SafetensorsFile:
    """A validated, lazily read safetensors file.

    Parameters
    ----------
    path : str or Path
        The file.

    Attributes
    ----------
    tensors : dict of str to TensorInfo
        Every tensor in the file, in header order.
    metadata : dict of str to str
        The ``__metadata__`` block (empty if absent).
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        if sys.byteorder != "little":
            raise UnsupportedFormatError("safetensors data is little-endian; big-endian hosts are not supported")
        fd = open_regular_file(self.path)
        try:
            st = os.fstat(fd)
            self._size, self._mtime, self._ino = st.st_size, st.st_mtime_ns, st.st_ino
            if self._size < 8:
                raise CorruptFileError(
                    f"file is {self._size} bytes, shorter than the 8-byte safetensors length prefix", path=path
                )
            head = bytearray(8)
            _pread_exact(fd, memoryview(head), 0, self.path, "the header length")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES:
                raise CorruptFileError(
                    f"declared header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit", path=path
                )
            if n > self._size - 8:
                raise CorruptFileError(
                    f"declared header length {n} is longer than the file allows ({self._size - 8} bytes "
                    "after the prefix); the file is truncated or not safetensors",
                    path=path,
                )
            raw = bytearray(n)
            _pread_exact(fd, memoryview(raw), 8, self.path, "the header")
        finally:
            os.close(fd)
        self._data_start = 8 + n
        header = _parse_header(bytes(raw), self.path)
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
        ):
            raise CorruptFileError("__metadata__ must map strings to strings", path=path)
        self.metadata: dict[str, str] = dict(meta)
        self.tensors: dict[str, TensorInfo] = {}
        for key, entry in header.items():
            self.tensors[key] = self._validate_entry(key, entry)
        self._check_tiling()

    def _validate_entry(self, key: str, entry: Any) -> TensorInfo:
        p = self.path
        if not key:
            raise CorruptFileError("safetensors header has an empty tensor name", path=p)
        if not isinstance(entry, dict):
            raise CorruptFileError("header entry is not an object", path=p, tensor=key)
        dtype, shape, offs = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in DTYPES:
            raise UnsupportedFormatError(
                f"unknown dtype {dtype!r}; known: {', '.join(sorted(DTYPES))}", path=p, tensor=key
            )
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise CorruptFileError(f"shape must be a list of non-negative ints, got {shape!r}", path=p, tensor=key)
        if (
            not isinstance(offs, list)
            or len(offs) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)
        ):
            raise CorruptFileError(f"data_offsets must be [begin, end], got {offs!r}", path=p, tensor=key)
        begin, end = offs
        info = TensorInfo(key, dtype, tuple(shape), begin, end)
        if not 0 <= begin <= end:
            raise CorruptFileError(f"data_offsets {offs} are not 0 <= begin <= end", path=p, tensor=key)
        expected = info.numel * info.itemsize
        if end - begin != expected:
            raise CorruptFileError(
                f"byte range {offs} holds {end - begin} bytes but shape {tuple(shape)} of {dtype} needs {expected}",
                path=p,
                tensor=key,
            )
        data_len = self._size - self._data_start
        if end > data_len:
            raise CorruptFileError(
                f"byte range {offs} runs past the end of the data ({data_len} bytes); the file is truncated",
                path=p,
                tensor=key,
            )
        return info

    def _check_tiling(self) -> None:
        pos = 0
        for info in sorted(self.tensors.values(), key=lambda t: (t.begin, t.end)):
            if info.begin != pos:
                what = "overlaps the previous tensor" if info.begin < pos else f"leaves a gap at byte {pos}"
                raise CorruptFileError(
                    f"byte range [{info.begin}, {info.end}] {what}", path=self.path, tensor=info.key
                )
            pos = info.end
        if pos != self._size - self._data_start:
            raise CorruptFileError(
                f"tensors cover {pos} bytes but the data buffer has {self._size - self._data_start}; "
                "the file is truncated or has trailing bytes",
                path=self.path,
            )

    def keys(self) -> list[str]:
        """Tensor names in header order."""
        return list(self.tensors)

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __contains__(self, key: object) -> bool:
        return key in self.tensors

    def __len__(self) -> int:
        return len(self.tensors)

    def info(self, key: str) -> TensorInfo:
        """The :class:`TensorInfo` of ``key``."""
        return self.tensors[key]

    def read(self, key: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """Read a tensor (or rows ``[r0, r1)`` of its 2-D view ``(shape[0], prod(shape[1:]))``).

        Returns
        -------
        Tensor
            In the stored dtype; shape ``shape`` or ``(r1 - r0, prod(shape[1:]))`` when ``rows`` is given.
        """
        info = self.tensors[key]
        tdt = info.torch_dtype
        if tdt is None:
            raise UnsupportedFormatError(f"dtype {info.dtype} has no torch equivalent", path=self.path, tensor=key)
        if rows is None:
            start, count, shape = info.begin, info.numel, info.shape
        else:
            r0, r1 = rows
            n_rows = info.shape[0] if info.shape else 1
            row_len = info.numel // n_rows if n_rows else 0
            if not 0 <= r0 <= r1 <= n_rows:
                raise ValueError(f"rows {rows} out of range for {key} with {n_rows} rows")
            start, count, shape = (
                info.begin + r0 * row_len * info.itemsize,
                (r1 - r0) * row_len,
                (r1 - r0, row_len),
            )
        buf = torch.empty(count * info.itemsize, dtype=torch.uint8)
        fd = open_regular_file(self.path)
        try:
            st = os.fstat(fd)
            if (st.st_size, st.st_mtime_ns, st.st_ino) != (self._size, self._mtime, self._ino):
                raise CorruptFileError(
                    "file changed since its header was read (size, mtime or inode differ); re-run on a stable file",
                    path=self.path,
                    tensor=key,
                )
            if count:
                _pread_exact(fd, memoryview(buf.numpy()), self._data_start + start, self.path, f"tensor '{key}'")
        finally:
            os.close(fd)
        return buf.view(tdt).reshape(shape)


def dtype_from_tag(
    tag: str, *, path: str | os.PathLike[str] | None = None, tensor: str | None = None
) -> torch.dtype:
    """The torch dtype of a safetensors dtype tag (``"BF16"`` → ``torch.bfloat16``).

    Raises
    ------
    UnsupportedFormatError
        For a tag this torch build has no dtype for (naming ``path`` and ``tensor`` when given).

    Examples
    --------
    >>> dtype_from_tag("BF16")
    torch.bfloat16
    """
    dtype = DTYPES.get(tag, (None, 0))[0]
    if dtype is None:
        raise UnsupportedFormatError(f"dtype {tag} is not supported by this torch build", path=path, tensor=tensor)
    return dtype


def _tag(dtype: torch.dtype) -> str:
    try:
        return _TORCH_TO_TAG[dtype]
    except KeyError:
        raise UnsupportedFormatError(f"cannot write dtype {dtype} to safetensors") from None


class SafetensorsWriter:
    """Write a safetensors file tensor by tensor (or row range by row range) without holding it in memory.

    Parameters
    ----------
    path : Path
        Destination (normally a temporary path from :func:`weightspace._atomic.atomic_file`).
    specs : mapping of str to (torch.dtype, shape)
        Every tensor the file will hold; the header is laid out from these before any data is written.
    metadata : mapping of str to str, optional
        The ``__metadata__`` block.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "t.safetensors"
    >>> with SafetensorsWriter(p, {"w": (torch.float32, (2, 3))}) as w:
    ...     w.write_rows("w", 0, torch.ones(1, 3))
    ...     w.write_rows("w", 1, torch.zeros(1, 3))
    >>> SafetensorsFile(p).read("w").tolist()
    [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        specs: Mapping[str, tuple[torch.dtype, Sequence[int]]],
        metadata: Mapping[str, str] | None = None,
    ):
        self.path = Path(path)
        header: dict[str, Any] = {}
        if metadata:
            header["__metadata__"] = dict(metadata)
        self._layout: dict[str, tuple[int, torch.dtype, tuple[int, ...]]] = {}
        self._remaining: dict[str, int] = {}
        pos = 0
        for key in specs:
            dtype, shape = specs[key]
            shape = tuple(int(d) for d in shape)
            nbytes = math.prod(shape) * DTYPES[_tag(dtype)][1]
            header[key] = {"dtype": _tag(dtype), "shape": list(shape), "data_offsets": [pos, pos + nbytes]}
            self._layout[key] = (pos, dtype, shape)
            self._remaining[key] = nbytes
            pos += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)  # keep the data buffer 8-byte aligned, as the reference writer does
        self._data_start = 8 + len(raw)
        self._fh = open(self.path, "wb")
        self._fh.write(struct.pack("<Q", len(raw)) + raw)
        self._fh.truncate(self._data_start + pos)

    def write(self, key: str, tensor: torch.Tensor) -> None:
        """Write the whole tensor ``key``."""
        shape = self._layout[key][2]
        if tuple(tensor.shape) != shape:
            raise ShapeMismatchError(
                f"expected shape {shape}, got {tuple(tensor.shape)}", path=self.path, tensor=key
            )
        self.write_flat(key, 0, tensor.reshape(-1))

    def write_rows(self, key: str, row_start: int, rows: torch.Tensor) -> None:
        """Write rows starting at ``row_start`` of the 2-D view ``(shape[0], prod(shape[1:]))`` of ``key``."""
        _, _, shape = self._layout[key]
        row_len = math.prod(shape[1:]) if len(shape) > 1 else 1
        self.write_flat(key, row_start * row_len, rows.reshape(-1))

    def write_flat(self, key: str, elem_offset: int, flat: torch.Tensor) -> None:
        """Write a 1-D run of elements at ``elem_offset`` (in elements) of ``key``'s flattened data."""
        base, dtype, shape = self._layout[key]
        numel = math.prod(shape)
        if elem_offset < 0 or elem_offset + flat.numel() > numel:
            raise ValueError(f"write of {flat.numel()} elements at {elem_offset} overruns {key} ({numel})")
        data = flat.detach().to(device="cpu", dtype=dtype).contiguous()
        raw = data.view(torch.uint8).numpy().tobytes() if data.numel() else b""
        itemsize = DTYPES[_tag(dtype)][1]
        self._fh.seek(self._data_start + base + elem_offset * itemsize)
        self._fh.write(raw)
        self._remaining[key] -= len(raw)

    def close(self) -> None:
        """Flush, fsync and close; raise if any declared tensor was not fully written."""
        if self._fh.closed:
            return
        try:
            missing = [k for k, v in self._remaining.items() if v > 0]
            if missing:
                raise RuntimeError(f"safetensors writer closed with unwritten tensors: {missing[:5]}")
            self._fh.flush()
            os.fsync(self._fh.fileno())
        finally:
            self._fh.close()

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self._fh.close()


def save_safetensors(
    path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Write in-memory ``tensors`` to ``path`` (not atomic by itself; wrap in ``atomic_file``)."""
    specs = {k: (v.dtype, tuple(v.shape)) for k, v in tensors.items()}
    with SafetensorsWriter(path, specs, metadata) as w:
        for k, v in tensors.items():
            w.write(k, v)
