"""Safetensors reading and writing with our own checks in front of the parser.

Reading validates the header before anything else touches the file: the path must be a regular file (a FIFO
named ``x.safetensors`` would otherwise block ``open``) inside its model directory (see
:mod:`weightspace.io._pathpolicy`), it must not be sparse (a file whose declared bytes are mostly holes is a
decoy, never a checkpoint), the declared header length must fit in the file and be at most 16 MiB, the JSON is
parsed by the bounded parser (:func:`weightspace._json.parse_json`: no duplicate keys, no deep nesting, no
oversized integers), there are at most :data:`MAX_TENSORS` tensors with names of at most
:data:`MAX_TENSOR_NAME_CHARS` printable characters, and every tensor's dtype is a known tag, its shape a list of
non-negative ints and its byte range matches dtype and shape, lies inside the data buffer and tiles it with no
overlap or hole. Tensor bytes are then read with
``pread`` into a fresh buffer (never ``mmap``), so a file truncated underneath the reader yields an error,
not a SIGBUS; each read also checks that the file's size and mtime are those seen when it was indexed.

Writing is streaming: :class:`SafetensorsWriter` lays out the header from declared shapes first, then accepts
tensors (or row ranges of them) in any order, so an archive with a large basis never needs to sit in RAM.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from weightspace._json import parse_json
from weightspace.errors import (
    CorruptFileError,
    InputError,
    NonFiniteError,
    ShapeMismatchError,
    UnsupportedFormatError,
)
from weightspace.io._pathpolicy import following_symlinks, open_regular

__all__ = [
    "DTYPES",
    "FLOAT_DTYPES",
    "MAX_HEADER_BYTES",
    "MAX_TENSORS",
    "MAX_TENSOR_NAME_CHARS",
    "SafetensorsFile",
    "SafetensorsWriter",
    "TensorInfo",
    "available_memory",
    "check_allocation",
    "check_finite_write",
    "dtype_from_tag",
    "open_regular_file",
    "save_safetensors",
]

MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_TENSORS = 1 << 17
"""Most tensors one file may declare (real shards hold a few thousand; archives one per unit or private key)."""
MAX_TENSOR_NAME_CHARS = 1024
_MAX_NDIM = 16
_SPARSE_MIN_BYTES = 64 * 1024 * 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

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


def open_regular_file(path: str | os.PathLike[str], *, root: str | os.PathLike[str] | None = None) -> int:
    """Open ``path`` read-only, refusing anything that is not a regular file (inside ``root``, when given).

    ``O_NONBLOCK`` keeps ``open`` from hanging on a FIFO swapped in after the ``stat`` check; ``fstat`` on the
    descriptor then decides. See :func:`weightspace.io._pathpolicy.open_regular`.
    """
    return open_regular(path, root=root, what="file")


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


def _parse_header(raw: bytes, path: Path) -> dict[str, Any]:
    if not raw.lstrip(b" ").startswith(b"{"):
        raise CorruptFileError("safetensors header does not start with '{'", path=path)
    declared = raw.count(b'"data_offsets"')
    if declared > MAX_TENSORS:  # refuse before spending time parsing a header of a million empty tensors
        raise CorruptFileError(
            f"header declares {declared} tensors, more than the {MAX_TENSORS} weightspace reads from one file",
            path=path,
        )
    # The entry checks below visit every node of the (shallow) header schema, so the parser's tree walk is skipped.
    obj = parse_json(
        raw, path=path, what="safetensors header", max_depth=4, keys_are_tensors=True, check_tree=False
    )
    if not isinstance(obj, dict):
        raise CorruptFileError("safetensors header is not a JSON object", path=path)
    return obj


def _is_sparse(st: os.stat_result) -> bool:
    """A large file with most of its bytes unallocated (holes): its declared tensors are not on disk."""
    blocks = getattr(st, "st_blocks", None)
    return blocks is not None and st.st_size >= _SPARSE_MIN_BYTES and blocks * 512 < st.st_size // 8


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (``MemAvailable``), or None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_allocation(nbytes: int, *, path: str | os.PathLike[str] | None, tensor: str | None, what: str) -> None:
    """Refuse (exit 2) to allocate ``nbytes`` when that is more memory than is available."""
    if nbytes < (1 << 30):
        return
    avail = available_memory()
    if avail is not None and nbytes > avail:
        raise InputError(
            f"{what} needs {nbytes / 1e9:,.1f} GB of memory but {avail / 1e9:,.1f} GB is available",
            path=path,
            tensor=tensor,
        )


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

    def __init__(self, path: str | os.PathLike[str], *, root: str | os.PathLike[str] | None = None):
        self.path = Path(path)
        # Decided once: reads may happen on worker threads or processes that do not share --follow-symlinks.
        self._root = None if root is None or following_symlinks() else Path(root)
        if sys.byteorder != "little":
            raise UnsupportedFormatError("safetensors data is little-endian; big-endian hosts are not supported")
        fd = open_regular_file(self.path, root=self._root)
        try:
            st = os.fstat(fd)
            self._size, self._mtime, self._ino = st.st_size, st.st_mtime_ns, st.st_ino
            if _is_sparse(st):
                raise CorruptFileError(
                    f"file is sparse: {self._size} bytes long but only {st.st_blocks * 512} are on disk; its "
                    "declared tensors are holes, not weights",
                    path=path,
                )
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
        if len(header) > MAX_TENSORS:
            raise CorruptFileError(
                f"header declares {len(header)} tensors, more than the {MAX_TENSORS} weightspace reads from one file",
                path=path,
            )
        self.tensors: dict[str, TensorInfo] = {}
        for key, entry in header.items():
            self.tensors[key] = self._validate_entry(key, entry)
        self._check_tiling()

    def _validate_entry(self, key: str, entry: Any) -> TensorInfo:
        p = self.path
        if not key:
            raise CorruptFileError("safetensors header has an empty tensor name", path=p)
        if len(key) > MAX_TENSOR_NAME_CHARS or _CONTROL.search(key):
            raise CorruptFileError(
                f"tensor name is not a printable name of at most {MAX_TENSOR_NAME_CHARS} characters",
                path=p,
                tensor=key[:80],
            )
        if not isinstance(entry, dict):
            raise CorruptFileError("header entry is not an object", path=p, tensor=key)
        dtype, shape, offs = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in DTYPES:
            shown = dtype if isinstance(dtype, str | None) else type(dtype).__name__
            raise UnsupportedFormatError(
                f"unknown dtype {shown!r}; known: {', '.join(sorted(DTYPES))}", path=p, tensor=key
            )
        if (
            not isinstance(shape, list)
            or len(shape) > _MAX_NDIM
            or not all(type(d) is int and d >= 0 for d in shape)
        ):
            raise CorruptFileError(
                f"shape must be a list of at most {_MAX_NDIM} non-negative ints, got {str(shape)[:80]}",
                path=p,
                tensor=key,
            )
        if not isinstance(offs, list) or len(offs) != 2 or not all(type(o) is int for o in offs):
            raise CorruptFileError(f"data_offsets must be [begin, end], got {str(offs)[:80]}", path=p, tensor=key)
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
        check_allocation(count * info.itemsize, path=self.path, tensor=key, what="reading this tensor")
        buf = torch.empty(count * info.itemsize, dtype=torch.uint8)
        fd = open_regular_file(self.path, root=self._root)
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
    label : path, optional
        The path named in errors (the destination, when ``path`` is a temporary file).

    Raises
    ------
    NonFiniteError
        When a written value is NaN or infinite, or overflows the tensor's dtype (e.g. 70000 into float16);
        naming ``label`` and the tensor.

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
        *,
        label: str | os.PathLike[str] | None = None,
    ):
        self.path = Path(path)
        self.label = Path(label) if label is not None else self.path
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
        check_finite_write(flat, data, path=self.label, tensor=key)
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


def check_finite_write(
    value: torch.Tensor, stored: torch.Tensor, *, path: str | os.PathLike[str] | None, tensor: str
) -> None:
    """Refuse to write NaN or infinity, or a finite ``value`` that became infinite in its storage dtype.

    Parameters
    ----------
    value : Tensor
        What was computed.
    stored : Tensor
        ``value`` cast to the dtype it is written in.

    Examples
    --------
    >>> check_finite_write(torch.tensor([7e4]), torch.tensor([7e4]).half(), path="m.safetensors", tensor="w")
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    weightspace.errors.NonFiniteError: m.safetensors: tensor 'w': 1 value(s) overflow float16 (largest |x| = 7e+04, ...
    """
    if not stored.is_floating_point() or not stored.numel() or bool(torch.isfinite(stored).all()):
        return
    if not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).sum())
        raise NonFiniteError(
            f"{bad} value(s) to be written are NaN or infinite; nothing was written", path=path, tensor=tensor
        )
    bad = int((~torch.isfinite(stored)).sum())
    big = float(value.detach().abs().max())
    name = str(stored.dtype).replace("torch.", "")
    raise NonFiniteError(
        f"{bad} value(s) overflow {name} (largest |x| = {big:.3g}, the largest finite {name} is "
        f"{torch.finfo(stored.dtype).max:.3g}); nothing was written. Store it in a wider dtype (e.g. float32)",
        path=path,
        tensor=tensor,
    )


def save_safetensors(
    path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Write in-memory ``tensors`` to ``path`` (not atomic by itself; wrap in ``atomic_file``)."""
    specs = {k: (v.dtype, tuple(v.shape)) for k, v in tensors.items()}
    with SafetensorsWriter(path, specs, metadata) as w:
        for k, v in tensors.items():
            w.write(k, v)
