"""`weightspace demo --quick` end to end: JSON structure, claims, and HTML numbers that all come from the JSON."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from weightspace.cli import main
from weightspace.demo._html import format_value, resolve


class _Cells(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.cells: list[tuple[dict[str, str | None], str]] = []
        self._open: dict[str, str | None] | None = None
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("td", "span"):
            self._open, self._text = dict(attrs), ""

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "span") and self._open is not None:
            self.cells.append((self._open, self._text))
            self._open = None


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    with pytest.raises(SystemExit) as info:
        main(["demo", "-o", str(out), "--quick"])
    assert info.value.code == 0
    return out


def test_quick_demo_json(quick_demo: Path) -> None:
    data = json.loads((quick_demo / "demo.json").read_text())
    assert [z["zoo"] for z in data["zoos"]] == ["digits-mlp", "digits-mlp-init", "mnist1d-cnn"]
    by = {z["zoo"]: z for z in data["zoos"]}
    # the untrained collection is null-like, on spectrum and on accuracy
    assert by["digits-mlp-init"]["spectrum"]["headline"]["verdict"] == "null-like"
    assert {c["verdict"] for c in by["digits-mlp-init"]["claims"]} == {"null-like"}
    for z in data["zoos"]:
        acc = z["accuracy"]
        for row in acc["models"]:
            # full-rank rebuilds keep each model's accuracy (±0.1 pt)
            assert abs(row["rebuilt_full"] - row["original"]) <= 0.001, (z["zoo"], row)
        assert set(z["archives"]) >= {"k90", "full"}
        for arc in z["archives"].values():
            assert arc["archive_bytes"] == sum(
                p.stat().st_size for p in Path(arc["path"]).rglob("*") if p.is_file()
            )
        assert (quick_demo / z["analysis_report"]).is_file()
    merge = data["merge"]
    assert merge["centered_coefficients"]["rel_diff_from_mean"] < 1e-10
    assert merge["claim"]["verdict"] in ("holds", "explained by the mean", "fails")
    assert data["wall_s"] < 600


def test_every_number_in_the_html_comes_from_the_json(quick_demo: Path) -> None:
    data: dict[str, Any] = json.loads((quick_demo / "demo.json").read_text())
    page = (quick_demo / "demo.html").read_text()
    parser = _Cells()
    parser.feed(page)
    checked = 0
    for attrs, text in parser.cells:
        src = attrs.get("data-src")
        if src is None:
            if "l" not in (attrs.get("class") or "").split() and attrs.get("class") is None:
                assert not re.search(r"\d", text) or text.strip() == "—", f"unsourced number {text!r}"
            continue
        value = resolve(data, src)
        expected = value if attrs.get("data-fmt") is None else format_value(value, attrs["data-fmt"] or "")
        assert text == expected, (src, text, expected)
        checked += 1
    assert checked > 100
    assert page.count("data:image/png;base64,") == 2


@pytest.mark.slow
def test_full_demo_within_budget(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["demo", "-o", str(tmp_path)])
    assert info.value.code == 0
    data = json.loads((tmp_path / "demo.json").read_text())
    assert [z["zoo"] for z in data["zoos"]] == [
        "digits-mlp",
        "digits-mlp-init",
        "mnist1d-cnn",
        "digits-vit",
        "minilm-lora",
    ]
    by = {z["zoo"]: z for z in data["zoos"]}
    assert by["digits-mlp-init"]["spectrum"]["headline"]["verdict"] == "null-like"
    for z in data["zoos"]:
        for row in z["accuracy"]["models"]:
            assert abs(row["rebuilt_full"] - row["original"]) <= 0.001, (z["zoo"], row)
    assert data["adapt"]["task"] == "reverse"
    assert data["wall_s"] < 15 * 60
