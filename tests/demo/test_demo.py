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
def zoo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("zoo-cache")


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory: pytest.TempPathFactory, zoo_cache: Path) -> Path:
    out = tmp_path_factory.mktemp("demo")
    with pytest.raises(SystemExit) as info:
        main(["demo", "-o", str(out), "--quick", "--cache-dir", str(zoo_cache)])
    assert info.value.code == 0
    return out


def _ok_interval(iv: dict[str, Any]) -> bool:
    return iv["lo"] <= iv["point"] <= iv["hi"]


def test_quick_demo_json(quick_demo: Path, zoo_cache: Path) -> None:
    data = json.loads((quick_demo / "demo.json").read_text())
    assert data["scale"] == "quick"
    assert data["cpu_s"] > 0
    assert [z["zoo"] for z in data["zoos"]] == ["digits-mlp", "digits-mlp-init", "mnist1d-cnn"]
    by = {z["zoo"]: z for z in data["zoos"]}
    # the zoos come from the content-addressed cache
    for z in data["zoos"]:
        assert Path(z["dir"]).parent == zoo_cache
        assert Path(z["dir"]).name.endswith(z["build_key"][:16])
    # the untrained collection: N = 96 tests k = 16, and it is null-like on spectrum and on accuracy
    init = by["digits-mlp-init"]
    assert init["n_models"] == 96
    assert init["testable_k16"]
    assert init["spectrum"]["aggregate"]["k"] == 16
    assert {c["verdict"] for c in init["claims"]} == {"null-like"}
    spec = init["claims"][0]
    assert spec["key"] == "spectrum"
    assert _ok_interval(spec["numbers"]["spectrum_excess"])
    assert spec["numbers"]["spectrum_excess"]["hi"] < 0.02  # the interval clears the threshold (on the null side)
    # the alignment claim (from-scratch zoos) follows the same N ≥ 96 rule and carries its intervals
    align = {z["zoo"]: z["claims"][-1] for z in data["zoos"] if z["kind"] in ("scratch", "init")}
    assert align["digits-mlp-init"]["key"] == "alignment"
    assert align["digits-mlp-init"]["verdict"] == "null-like"
    assert _ok_interval(align["digits-mlp-init"]["numbers"]["basis_gain"])
    # 24 models cannot test 16 directions: the rows say so instead of a verdict
    for name in ("digits-mlp", "mnist1d-cnn"):
        assert by[name]["n_models"] == 24
        assert {c["verdict"] for c in by[name]["claims"]} == {"not testable at N = 24"}
        assert by[name]["spectrum"]["aggregate"]["k"] == 4  # the analysis tests ⌊24/6⌋ instead
    for z in data["zoos"]:
        for c in z["claims"]:
            assert c["key"] in ("spectrum", "compression", "heldout", "alignment")
        for key in ("d_rebuilt", "d_mean"):
            assert _ok_interval(z["claims"][1]["numbers"][key])
        assert (quick_demo / z["spectrum_plot"]).is_file()
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
    assert merge["claim"]["verdict"] in ("holds", "explained by the mean", "fails", "inconclusive")
    assert _ok_interval(merge["claim"]["numbers"]["vs_mean"])
    assert merge["n_models"] == 8
    assert data["adapt"]["claim"]["numbers"]["n_test"] == 1000
    # the paper's and the replication's numbers beside ours: cited, with sources
    table = {r["key"]: r for r in data["paper_table"]}
    assert set(table) == {"spectrum", "compression", "heldout", "merge", "adapt"}
    assert all(r["paper"]["source"] and r["replication"]["source"] for r in table.values())
    assert [o["where"] for o in table["spectrum"]["ours"]] == ["digits-mlp", "digits-mlp-init", "mnist1d-cnn"]
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
    assert page.count("data:image/png;base64,") == 2 + 3  # accuracy, spectrum bars, one spectrum figure per zoo
    assert "not testable at N = 24" in page
    assert "arXiv:2512.05117" in page


@pytest.mark.slow
def test_full_demo_within_budget(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["demo", "-o", str(tmp_path), "--cache-dir", str(tmp_path / "cache")])
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
    assert {name: z["n_models"] for name, z in by.items()} == {
        "digits-mlp": 96,
        "digits-mlp-init": 96,
        "mnist1d-cnn": 96,
        "digits-vit": 96,
        "minilm-lora": 24,
    }
    assert by["digits-mlp-init"]["claims"][0]["verdict"] == "null-like"
    assert by["minilm-lora"]["claims"][0]["verdict"] == "not testable at N = 24"
    for z in data["zoos"]:
        for row in z["accuracy"]["models"]:
            assert abs(row["rebuilt_full"] - row["original"]) <= 0.001, (z["zoo"], row)
    assert data["adapt"]["task"] == "reverse"
    assert data["wall_s"] < 15 * 60
    # a second run finds every zoo in the cache
    with pytest.raises(SystemExit) as info:
        main(["demo", "-o", str(tmp_path / "again"), "--cache-dir", str(tmp_path / "cache"), "--no-adapt"])
    again = json.loads((tmp_path / "again" / "demo.json").read_text())
    assert [z["dir"] for z in again["zoos"]] == [z["dir"] for z in data["zoos"]]


def test_second_seed_verdicts_sit_beside_the_first(
    tmp_path: Path, zoo_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The paper scale's second seed, on a tiny stand-in scale (one untrained zoo, two seeds)."""
    from weightspace.demo import SCALES, Scale, run_demo

    tiny = Scale("paper", quick=True, zoos=("digits-mlp-init",), n={"digits-mlp-init": 12}, seeds=2)
    monkeypatch.setitem(SCALES, "paper", tiny)
    data = run_demo(tmp_path, scale="paper", cache_dir=zoo_cache, merge=False, adapt=False)
    assert data["seeds"] == [0, 1]
    sv = data["seed_verdicts"]
    assert sv["seeds"] == [0, 1]
    assert set(sv["verdicts"]["digits-mlp-init"]) >= {"spectrum", "compression", "heldout"}
    for verdicts in sv["verdicts"]["digits-mlp-init"].values():
        assert len(verdicts) == 2
    second = data["seed_runs"]["1"][0]
    assert second["seed"] == 1
    assert second["dir"] != data["zoos"][0]["dir"]  # rebuilt with the other seed, cached separately
    page = (tmp_path / "demo.html").read_text()
    assert "A second seed" in page
    parser = _Cells()
    parser.feed(page)
    saved = json.loads((tmp_path / "demo.json").read_text())
    for attrs, text in parser.cells:
        src = attrs.get("data-src")
        if src is not None:
            value = resolve(saved, src)
            assert text == (
                value if attrs.get("data-fmt") is None else format_value(value, attrs["data-fmt"] or "")
            )


def test_unit_ks_reads_factored_lora_units() -> None:
    # A LoRA archive's units report (k1, k2); the demo's archive table must not drop them (it crashed on a zoo
    # whose units were all factored).
    from weightspace.compress import CompressResult, UnitSummary
    from weightspace.demo._run import unit_ks

    units = [
        UnitSummary(name="q", shape=[8, 6], method="lora-hosvd", k=[5, 3], evr_at_k=0.9),
        UnitSummary(name="fc", shape=[4, 4], method="pca", k=2, evr_at_k=0.8),
    ]
    res = CompressResult(
        archive="a.wsz",
        n_models=3,
        n_units=2,
        method="auto",
        archive_bytes=10,
        models_bytes=20,
        ratio=2.0,
        units=units,
        n_private=0,
        wall_s=0.1,
    )
    assert unit_ks(res) == [5, 2]
    assert unit_ks(CompressResult(**{**res.__dict__, "units": units[:1]})) == [5]
