"""Our own safetensors pre-checks, pread reads and the streaming writer."""

from __future__ import annotations

import json
import os
import struct
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from weightspace.errors import CorruptFileError, UnsafeFileError, UnsupportedFormatError
from weightspace.io import MAX_HEADER_BYTES, SafetensorsFile, SafetensorsWriter, save_safetensors


def _raw_file(path: Path, header: dict | bytes, data: bytes = b"", declared: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(raw) if declared is None else declared
    path.write_bytes(struct.pack("<Q", n) + raw + data)
    return path


def test_reads_back_every_float_dtype(tmp_path: Path) -> None:
    tensors = {
        "f32": torch.randn(3, 4),
        "f16": torch.randn(5).half(),
        "bf16": torch.randn(2, 3, 4).bfloat16(),
        "f64": torch.randn(2, 2, dtype=torch.float64),
    }
    save_file(tensors, tmp_path / "a.safetensors")
    st = SafetensorsFile(tmp_path / "a.safetensors")
    for k, v in tensors.items():
        got = st.read(k)
        assert got.dtype == v.dtype
        assert torch.equal(got, v)


def test_row_ranges_are_the_2d_view(tmp_path: Path) -> None:
    w = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    save_file({"conv": w}, tmp_path / "c.safetensors")
    st = SafetensorsFile(tmp_path / "c.safetensors")
    assert torch.equal(st.read("conv", (1, 2)), w.reshape(2, 12)[1:2])


@pytest.mark.parametrize(
    ("header", "data", "declared", "match"),
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, None, "truncated"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, 10_000, "longer than the file"),
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, None, "needs 12"),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            b"\0" * 12,
            None,
            "overlaps",
        ),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8, None, "trailing bytes"),
        (b"[1, 2]", b"", None, "does not start with"),
        (b"{not json", b"", None, "not valid JSON"),
    ],
)
def test_malformed_headers_are_refused(
    tmp_path: Path, header: dict | bytes, data: bytes, declared: int | None, match: str
) -> None:
    p = _raw_file(tmp_path / "bad.safetensors", header, data, declared)
    with pytest.raises(CorruptFileError, match=match) as info:
        SafetensorsFile(p)
    assert str(p) in str(info.value)


def test_unknown_dtype_is_unsupported_not_corrupt(tmp_path: Path) -> None:
    p = _raw_file(
        tmp_path / "q.safetensors", {"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8
    )
    with pytest.raises(UnsupportedFormatError, match=r"tensor 'a': unknown dtype"):
        SafetensorsFile(p)


def test_duplicate_header_key_names_the_key(tmp_path: Path) -> None:
    raw = (
        b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},'
        b' "w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}'
    )
    p = _raw_file(tmp_path / "dup.safetensors", raw, b"\0" * 8)
    with pytest.raises(CorruptFileError, match=r"safetensors header: JSON object names the key 'w' twice"):
        SafetensorsFile(p)


def test_deeply_nested_header(tmp_path: Path) -> None:
    p = _raw_file(tmp_path / "deep.safetensors", b'{"a": ' + b"[" * 200_000 + b"]" * 200_000 + b"}")
    with pytest.raises(CorruptFileError, match="nests deeper than"):
        SafetensorsFile(p)


def test_header_size_cap(tmp_path: Path) -> None:
    p = tmp_path / "huge.safetensors"
    with open(p, "wb") as fh:
        fh.write(struct.pack("<Q", MAX_HEADER_BYTES + 1))
        fh.truncate(MAX_HEADER_BYTES + 64)
    with pytest.raises(CorruptFileError, match="exceeds the 16777216-byte limit"):
        SafetensorsFile(p)


def test_short_file(tmp_path: Path) -> None:
    p = tmp_path / "s.safetensors"
    p.write_bytes(b"\1\2")
    with pytest.raises(CorruptFileError, match="shorter than the 8-byte"):
        SafetensorsFile(p)


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    p = tmp_path / "x.safetensors"
    os.mkfifo(p)
    result: list[BaseException] = []

    def run() -> None:
        try:
            SafetensorsFile(p)
        except BaseException as err:
            result.append(err)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive(), "opening a FIFO blocked"
    assert isinstance(result[0], UnsafeFileError)
    assert "not a regular file (a FIFO)" in str(result[0])


def test_file_changed_after_indexing_is_detected(tmp_path: Path) -> None:
    p = tmp_path / "m.safetensors"
    save_file({"w": torch.randn(64, 64)}, p)
    st = SafetensorsFile(p)
    with open(p, "r+b") as fh:
        fh.truncate(os.path.getsize(p) - 100)
    with pytest.raises(CorruptFileError, match="changed since its header was read"):
        st.read("w")


def test_streaming_writer_matches_reference_reader(tmp_path: Path) -> None:
    from safetensors import safe_open

    a, b = torch.randn(5, 3), torch.randn(4).bfloat16()
    p = tmp_path / "w.safetensors"
    with SafetensorsWriter(p, {"a": (torch.float32, (5, 3)), "b": (torch.bfloat16, (4,))}, {"k": "v"}) as w:
        w.write("b", b)
        w.write_rows("a", 3, a[3:])
        w.write_rows("a", 0, a[:3])
    with safe_open(p, "pt") as f:
        assert torch.equal(f.get_tensor("a"), a)
        assert torch.equal(f.get_tensor("b"), b)
        assert f.metadata() == {"k": "v"}


def test_writer_refuses_to_close_incomplete(tmp_path: Path) -> None:
    w = SafetensorsWriter(tmp_path / "i.safetensors", {"a": (torch.float32, (2,)), "b": (torch.float32, (2,))})
    w.write("a", torch.zeros(2))
    with pytest.raises(RuntimeError, match="unwritten tensors"):
        w.close()


def test_save_safetensors_round_trip(tmp_path: Path) -> None:
    t = {"x": torch.randn(2, 2), "empty": torch.zeros(0, 3)}
    save_safetensors(tmp_path / "r.safetensors", t)
    st = SafetensorsFile(tmp_path / "r.safetensors")
    assert torch.equal(st.read("x"), t["x"])
    assert st.read("empty").shape == (0, 3)
