"""The bounded JSON parser every metadata reader uses."""

from __future__ import annotations

import json

import pytest

from weightspace._json import parse_json
from weightspace.errors import ArchiveError, CorruptFileError


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"a": ' + "7" * 5000 + "}", "integer with 5000 digits"),
        ('{"a": -' + "7" * 40 + "}", "integer with 40 digits"),
        ("[" * 100_000 + "]" * 100_000, "nests deeper than"),
        ('{"a": [[[[[[1]]]]]]}', "nests deeper than 4 levels"),
        ('{"r": 8, "r": 16}', "names the key 'r' twice"),
        ('{"a": NaN}', "literal NaN"),
        ('{"a": -Infinity}', "literal -Infinity"),
        ('{"a": 1e400}', "too large for a float"),
        ('{"a": "\\ud800"}', "lone UTF-16 surrogate"),
        ('{"\\udfff": 1}', "lone UTF-16 surrogate"),
        ("{", "not valid JSON"),
    ],
)
def test_refusals_name_the_file(text: str, match: str) -> None:
    with pytest.raises(CorruptFileError, match=match) as info:
        parse_json(text, path="cfg.json", max_depth=4)
    assert str(info.value).startswith("cfg.json: ")


def test_valid_documents_parse_as_the_standard_library_does() -> None:
    doc = {"r": 8, "alpha": 16.5, "names": ["q", "v"], "nested": {"x": [1, 2, {"y": None}]}, "ok": True, "s": "é"}
    text = json.dumps(doc)
    assert parse_json(text, path="x") == json.loads(text)
    assert parse_json(text.encode("utf-8"), path="x") == doc
    assert parse_json('{"n": ' + "9" * 32 + "}", path="x") == {"n": int("9" * 32)}  # at the digit cap


def test_bytes_must_be_utf8_and_the_error_class_is_the_callers() -> None:
    with pytest.raises(CorruptFileError, match="not valid UTF-8"):
        parse_json(b'{"a\xff": 1}', path="x")
    with pytest.raises(ArchiveError, match="manifest: JSON object names the key 'kind' twice"):
        parse_json('{"kind": 1, "kind": 2}', path="manifest.json", what="manifest", error=ArchiveError)


def test_duplicate_tensor_names_are_reported_as_the_tensor() -> None:
    with pytest.raises(CorruptFileError) as info:
        parse_json('{"w": {}, "w": {}}', path="m.safetensors", what="safetensors header", keys_are_tensors=True)
    assert info.value.tensor == "w"
