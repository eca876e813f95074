"""Fuzzing the safetensors reader: any bytes give a valid file or a WeightspaceError, never another exception."""

from __future__ import annotations

import contextlib
import json
import struct
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weightspace.errors import WeightspaceError
from weightspace.io import SafetensorsFile

_DTYPES = st.sampled_from(["F32", "F16", "BF16", "F64", "I64", "U8", "BOOL", "F8_E4M3", "Q4", 3, None])
_ENTRY = st.fixed_dictionaries(
    {
        "dtype": _DTYPES,
        "shape": st.one_of(st.lists(st.integers(-2, 6), max_size=3), st.integers(), st.none()),
        "data_offsets": st.one_of(st.lists(st.integers(-4, 64), min_size=0, max_size=3), st.text(max_size=3)),
    }
)
_HEADER = st.dictionaries(st.text(max_size=6), st.one_of(_ENTRY, st.integers(), st.text(max_size=4)), max_size=4)


def _check(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "f.safetensors"
        p.write_bytes(raw)
        try:
            st_file = SafetensorsFile(p)
        except WeightspaceError:
            return
        for key in st_file:
            with contextlib.suppress(WeightspaceError):
                st_file.read(key)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(header=_HEADER, data=st.binary(max_size=80), declared_delta=st.integers(-8, 8))
def test_structured_headers(header: dict, data: bytes, declared_delta: int) -> None:
    raw = json.dumps(header).encode()
    n = max(0, len(raw) + declared_delta)
    _check(struct.pack("<Q", n) + raw + data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes(raw: bytes) -> None:
    _check(raw)
