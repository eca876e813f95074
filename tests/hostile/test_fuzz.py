"""Fuzzing every parser of untrusted metadata: any input gives a result or a WeightspaceError, never another exception.

One bounded hypothesis run per parser — safetensors header, shard index, ``adapter_config.json``, archive
manifest — over hostile JSON values (5000-digit integers, deep nesting, booleans and floats where ints belong,
lists where strings belong, lone surrogates, control characters, NaN literals) and over mutations of valid
documents. Each run is derandomized (the same examples every time) and takes a few seconds.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from hostile._sandbox import adapter_config
from weightspace.errors import WeightspaceError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

FUZZ = settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow], database=None
)

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.just(10**60),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.sampled_from(["F32", "BF16", "Q4", "", "..", "/etc/passwd", "../x.safetensors", "\x1b[31m", "\ud800"]),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=12,
)
# Literal texts the standard library accepts (or chokes on) but JSON forbids or weightspace must bound.
_RAW_TOKENS = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "1" * 5000, "[" * 3000 + "]" * 3000])


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, allow_nan=True)


def _only_weightspace_errors(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except WeightspaceError:
        return None


@contextlib.contextmanager
def _tmp() -> Iterator[Path]:
    d = tempfile.mkdtemp(prefix="ws-fuzz-")
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _with_token(text: str, token: str, where: int) -> str:
    """``text`` with one hostile literal put in place of a value (after the ``where``-th colon)."""
    colons = [i for i, ch in enumerate(text) if ch == ":"]
    if not colons:
        return text
    i = colons[where % len(colons)] + 1
    j = i
    depth = 0
    while j < len(text):  # skip one JSON value (roughly: up to the next , or } at depth 0)
        ch = text[j]
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            if depth == 0:
                break
            depth -= 1
        elif ch == "," and depth == 0:
            break
        j += 1
    return text[:i] + " " + token + text[j:]


# ------------------------------------------------------------------------------------------ safetensors header
def _read_safetensors(raw: bytes) -> None:
    from weightspace.io import SafetensorsFile

    with _tmp() as d:
        p = d / "m.safetensors"
        p.write_bytes(raw)
        f = SafetensorsFile(p)
        for key in f:
            _only_weightspace_errors(f.read, key)


_ENTRY = st.fixed_dictionaries({"dtype": _VALUES, "shape": _VALUES, "data_offsets": _VALUES})


@FUZZ
@given(
    header=st.dictionaries(st.text(max_size=6), st.one_of(_ENTRY, _VALUES), max_size=4),
    token=_RAW_TOKENS,
    where=st.integers(0, 20),
    use_token=st.booleans(),
    data=st.binary(max_size=64),
)
def test_safetensors_header(header: dict, token: str, where: int, use_token: bool, data: bytes) -> None:
    text = _dumps(header)
    if use_token:
        text = _with_token(text, token, where)
    raw = text.encode("utf-8", "surrogatepass")
    _only_weightspace_errors(_read_safetensors, struct.pack("<Q", len(raw)) + raw + data)


# ------------------------------------------------------------------------------------------ shard index
def _sharded(d: Path) -> Path:
    m = d / "s"
    m.mkdir()
    save_file({"a": torch.ones(2)}, m / "model-00001-of-00002.safetensors")
    save_file({"b": torch.ones(3)}, m / "model-00002-of-00002.safetensors")
    return m


_INDEX = {
    "metadata": {"total_size": 20},
    "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"},
}


def _mutate(doc: Any, path: list[int], value: Any) -> Any:
    """``doc`` with the node reached by following ``path`` (indices into keys/items) replaced by ``value``."""
    if not path or not isinstance(doc, dict | list) or not doc:
        return value
    out = dict(doc) if isinstance(doc, dict) else list(doc)
    keys = list(out) if isinstance(out, dict) else list(range(len(out)))
    k = keys[path[0] % len(keys)]
    out[k] = _mutate(out[k], path[1:], value)  # type: ignore[index]
    return out


def _open(path: Path) -> None:
    from weightspace.io import open_source

    src = open_source(path)
    for key in src.entries:
        src.read(key) if src.entries[key].kind != "lora" else src.lora(key)
    src.sha256()


@FUZZ
@given(
    path=st.lists(st.integers(0, 10), max_size=4),
    value=_VALUES,
    token=_RAW_TOKENS,
    where=st.integers(0, 20),
    use_token=st.booleans(),
)
def test_shard_index(path: list[int], value: Any, token: str, where: int, use_token: bool) -> None:
    with _tmp() as d:
        m = _sharded(d)
        text = _dumps(_mutate(_INDEX, path, value))
        if use_token:
            text = _with_token(text, token, where)
        (m / "model.safetensors.index.json").write_bytes(text.encode("utf-8", "surrogatepass"))
        _only_weightspace_errors(_open, m)


# ------------------------------------------------------------------------------------------ adapter_config.json
def _adapter(d: Path) -> Path:
    a = d / "a"
    a.mkdir()
    p = "base_model.model."
    save_file(
        {
            f"{p}fc1.lora_A.weight": torch.ones(2, 6),
            f"{p}fc1.lora_B.weight": torch.ones(4, 2),
            f"{p}fc2.lora_A.weight": torch.ones(2, 4),
            f"{p}fc2.lora_B.weight": torch.ones(3, 2),
        },
        a / "adapter_model.safetensors",
    )
    return a


_CONFIG_KEYS = st.sampled_from(
    [
        "r",
        "lora_alpha",
        "rank_pattern",
        "alpha_pattern",
        "target_modules",
        "use_rslora",
        "fan_in_fan_out",
        "peft_type",
        "use_dora",
        "modules_to_save",
        "layers_to_transform",
        "unknown_key",
    ]
)
_PATTERNS = st.dictionaries(
    st.sampled_from(["fc1", "fc.", "(a+)+b", "(", ".*.*.*.*x", "fc1|fc2", r"(\w+\.)*fc1", ""]), _VALUES, max_size=3
)


@FUZZ
@given(
    changes=st.dictionaries(_CONFIG_KEYS, st.one_of(_VALUES, _PATTERNS), max_size=4),
    token=_RAW_TOKENS,
    where=st.integers(0, 20),
    use_token=st.booleans(),
)
def test_adapter_config(changes: dict, token: str, where: int, use_token: bool) -> None:
    with _tmp() as d:
        a = _adapter(d)
        text = _dumps({**adapter_config(), **changes})
        if use_token:
            text = _with_token(text, token, where)
        (a / "adapter_config.json").write_bytes(text.encode("utf-8", "surrogatepass"))
        _only_weightspace_errors(_open, a)


# ------------------------------------------------------------------------------------------ archive manifest
@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from weightspace.compress import compress

    root = tmp_path_factory.mktemp("fuzz-archives")
    g = torch.Generator().manual_seed(0)
    (root / "m").mkdir()
    for i in range(3):
        save_file(
            {"w": torch.randn(4, 3, generator=g), "b": torch.randn(4, generator=g)},
            root / "m" / f"m{i}.safetensors",
        )
        a = root / "ads" / f"a{i}"
        a.mkdir(parents=True)
        p = "base_model.model."
        save_file(
            {
                f"{p}fc1.lora_A.weight": torch.randn(2, 6, generator=g),
                f"{p}fc1.lora_B.weight": torch.randn(4, 2, generator=g),
            },
            a / "adapter_model.safetensors",
        )
        (a / "adapter_config.json").write_text(json.dumps(adapter_config(target_modules=["fc1"])))
    compress([root / "m"], root / "full.wsz", n_components=2)
    compress([root / "ads"], root / "peft.wsz", n_components=2)
    return {"full": root / "full.wsz", "peft": root / "peft.wsz"}


def _load_and_rebuild(archive: Path, out: Path) -> None:
    from weightspace.compress import reconstruct

    reconstruct(archive, out)


@FUZZ
@given(
    which=st.sampled_from(["full", "peft"]),
    path=st.lists(st.integers(0, 12), min_size=1, max_size=5),
    value=_VALUES,
    token=_RAW_TOKENS,
    where=st.integers(0, 60),
    use_token=st.booleans(),
)
def test_manifest(
    archives: dict[str, Path], which: str, path: list[int], value: Any, token: str, where: int, use_token: bool
) -> None:
    with _tmp() as d:
        arc = d / "a.wsz"
        shutil.copytree(archives[which], arc)
        manifest = json.loads((arc / "manifest.json").read_text())
        text = _dumps(_mutate(manifest, path, value))
        if use_token:
            text = _with_token(text, token, where)
        (arc / "manifest.json").unlink()
        (arc / "manifest.json").write_bytes(text.encode("utf-8", "surrogatepass"))
        _only_weightspace_errors(_load_and_rebuild, arc, d / "out")
