"""report.json keys, the self-contained HTML page, the PNGs, atomic writing and the terminal summary."""

from __future__ import annotations

import base64
import copy
import io
import json
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from weightspace.errors import DependencyError, InputError
from weightspace.report import (
    LOO_KEYS,
    REPORT_KEYS,
    UNIT_KEYS,
    load_report,
    print_summary,
    render_html,
    validate_report,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DESIGN_UNIT_KEYS = {
    "name",
    "shape",
    "n_models",
    "evr",
    "null_evr",
    "k90",
    "null_k90",
    "mean_energy_fraction",
    "loo",
    "stability",
    "verdict",
}


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[dict[str, str | None]] = []
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a)
        for key in ("src", "href"):
            value = a.get(key)
            if value is not None and not value.startswith("data:"):
                self.external.append(f"{tag} {key}={value}")
        if tag in ("script", "link", "iframe"):
            self.external.append(tag)


def test_report_json_has_the_design_keys(report_dir: Path) -> None:
    data = load_report(report_dir)  # validates against the documented keys
    assert {"version", "n_models", "models", "method", "units", "summary"} <= set(data)
    assert set(REPORT_KEYS) <= set(data)
    for u in data["units"]:
        assert set(u) >= DESIGN_UNIT_KEYS
        assert set(UNIT_KEYS) <= set(u)
        assert {"k", "mean_only", "basis_only", "mean_plus_basis"} <= set(u["loo"])
        assert set(LOO_KEYS) <= set(u["loo"])
        assert len(u["evr"]) == len(u["null_evr"]) == len(u["ks"])
    assert set(data["summary"]["verdict_counts"]) == {"shared-subspace", "mean-dominated", "null-like"}
    assert data["thresholds"]["rule"]
    assert data["notes"]
    # strict JSON: no NaN tokens
    json.loads((report_dir / "report.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))


def test_verdicts_of_the_fixture(report_data: dict[str, Any]) -> None:
    v = {u["name"]: u["verdict"] for u in report_data["units"]}
    assert v["layers.0.fc.weight"] == "shared-subspace"
    assert v["layers.1.fc.weight"] == "mean-dominated"
    assert v["head.weight"] == "null-like"
    assert v["layers.0.fc.bias"] == "null-like"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("units"), "missing key 'units'"),
        (lambda d: d["units"][0].pop("null_k90"), r"missing key 'units\[0\].null_k90'"),
        (
            lambda d: d["units"][0]["loo"].update(mean_plus_basis="x"),
            r"'units\[0\].loo.mean_plus_basis' has the wrong",
        ),
        (lambda d: d["units"][1].update(verdict="maybe"), "not a known verdict"),
    ],
)
def test_validation_names_the_broken_key(report_data: dict[str, Any], mutate, message: str) -> None:
    broken = copy.deepcopy(report_data)
    mutate(broken)
    with pytest.raises(InputError, match=message):
        validate_report(broken)


def test_html_is_self_contained_and_embeds_every_plot(report_dir: Path) -> None:
    page = (report_dir / "report.html").read_text(encoding="utf-8")
    refs = _Refs()
    refs.feed(page)
    assert refs.external == []
    pngs = sorted(p.name for p in report_dir.glob("*.png"))
    assert pngs == sorted(
        ["verdicts.png", "scree.png", "cumulative_evr.png", "loo.png", "heldout_evr.png", "stability.png"]
    )
    assert sorted(str(i["data-name"]) for i in refs.imgs) == pngs
    for img in refs.imgs:
        src = str(img["src"])
        assert src.startswith("data:image/png;base64,")
        embedded = base64.b64decode(src.split(",", 1)[1])
        assert embedded == (report_dir / str(img["data-name"])).read_bytes()
        assert embedded.startswith(PNG_MAGIC)
    for text in ("shared-subspace", "Method notes", "Verdict thresholds", "leave-one-out", "Wishart"):
        assert text in page


def test_every_number_in_the_unit_table_comes_from_the_report(report_data: dict[str, Any]) -> None:
    page = render_html(report_data)
    for u in report_data["units"]:
        a = u["at_k_ref"]
        for value in (a["evr"], a["mean_only"], a["mean_plus_basis"], u["mean_energy_fraction"]):
            assert f"{value:.3f}" in page


def test_missing_matplotlib_raises_before_writing(
    report_data: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    out = tmp_path / "rep"
    with pytest.raises(DependencyError, match=r"weightspace\[plot\]"):
        write_report(report_data, out)
    assert not out.exists()
    write_report(report_data, out, plots=False)  # still possible without plots
    assert (out / "report.html").exists()
    assert not list(out.glob("*.png"))


def test_rewrite_replaces_whole_directory_and_failures_leave_it(
    report_data: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "rep"
    write_report(load_report_from(report_data), out, plots=False)
    (out / "stale.txt").write_text("old")  # inside a report weightspace wrote: replaced with the rest
    write_report(load_report_from(report_data), out, plots=False)
    assert not (out / "stale.txt").exists()
    assert (out / "report.json").exists()
    before = (out / "report.json").read_bytes()

    def boom(*_a: Any, **_k: Any) -> str:
        raise RuntimeError("render failed")

    monkeypatch.setattr("weightspace.report._write.render_html", boom)
    with pytest.raises(RuntimeError):
        write_report(report_data, out, plots=False)
    assert (out / "report.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]


def load_report_from(data: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(data))


def test_load_report_errors(tmp_path: Path) -> None:
    (tmp_path / "report.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot read the report"):
        load_report(tmp_path)


def test_terminal_summary(report_data: dict[str, Any]) -> None:
    from rich.console import Console

    buf = io.StringIO()
    print_summary(report_data, console=Console(file=buf, width=140))
    text = buf.getvalue()
    assert report_data["summary"]["headline"]["text"][:40] in text
    assert "fc.weight" in text
    assert "head.weight" in text


def test_terminal_summary_fits_80_columns_and_explains_every_header(report_data: dict[str, Any]) -> None:
    from rich.console import Console

    from weightspace.report._terminal import LEGEND

    data = copy.deepcopy(report_data)
    data["summary"]["groups"][0]["type"] = "model.layers.*.self_attn.q_proj.weight"  # a long unit type
    buf = io.StringIO()
    print_summary(data, console=Console(file=buf, width=80))
    text = buf.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text
    assert "q_proj" in text.replace("\n", "").replace(" ", "")  # folded, never cut
    legend = " ".join(LEGEND)
    for header in ("verdicts", "k90/null", "excess", "held-out EVR/null", "mean E", "held-out err mean/m+b"):
        assert f"{header}:" in legend


def test_html_explains_every_column_in_one_spelling(report_dir: Path) -> None:
    from weightspace.report._html import LEGEND

    page = (report_dir / "report.html").read_text(encoding="utf-8")
    heads = [h for h in set(__import__("re").findall(r"<th(?: class=l)?>([^<]+)</th>", page))]
    heads = [h for h in heads if h not in ("threshold", "value")]
    assert heads
    for h in heads:
        assert h.replace("&amp;", "&") in LEGEND, h  # every column header has a legend entry
        assert f"<dt>{h}</dt>" in page
    for old in ("LOO", "(hi)", "heldout", "mean plus basis"):
        assert old not in page.split("<h2>Plots</h2>")[0], old
    assert "position:sticky;left:0" in page  # the first column stays in view when a table scrolls
