"""Alignment on real zoos: accuracies unchanged, and Git Re-Basin's headline effect on two digits-mlp nets."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from weightspace.align import align
from weightspace.zoo import ZooInfo, build_zoo, get_zoo, read_checkpoint

TINY = {
    "pretrain": {"steps": 40, "lr": 3e-3, "batch_size": 64},
    "finetune": {"steps": 10, "lr": 3e-3, "batch_size": 64},
}


@pytest.fixture(scope="module", autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    old = os.environ.get("WEIGHTSPACE_CACHE_DIR")
    os.environ["WEIGHTSPACE_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("WEIGHTSPACE_CACHE_DIR", None)
    else:
        os.environ["WEIGHTSPACE_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def mlp_zoo(tmp_path_factory: pytest.TempPathFactory) -> ZooInfo:
    return build_zoo("digits-mlp", tmp_path_factory.mktemp("mlp") / "zoo", n=3, quick=True)


def test_zoo_accuracies_are_identical(mlp_zoo: ZooInfo, tmp_path: Path) -> None:
    zoo = get_zoo("digits-mlp")
    res = align([m.path for m in mlp_zoo.models], out=tmp_path / "aligned", to="mean")
    assert sum(m.moved_units for m in res.models) > 0
    for m, row in zip(mlp_zoo.models, res.models, strict=True):
        assert zoo.accuracy(row.output) == zoo.accuracy(m.path)
        _, meta = read_checkpoint(row.output)
        assert meta["weightspace.zoo"] == "digits-mlp"


def test_weight_matching_lowers_distance_and_raises_midpoint_accuracy(mlp_zoo: ZooInfo, tmp_path: Path) -> None:
    zoo = get_zoo("digits-mlp")
    a, b = mlp_zoo.models[:2]
    res = align([a.path, b.path], out=tmp_path / "aligned", reference=a.name)
    row = res.models[1]
    assert row.distance_after < row.distance_before
    wa, _ = read_checkpoint(a.path)
    wb, _ = read_checkpoint(b.path)
    wb_aligned, _ = read_checkpoint(row.output)
    naive = zoo.accuracy({k: (wa[k] + wb[k]) / 2 for k in wa}, task="digits")
    matched = zoo.accuracy({k: (wa[k] + wb_aligned[k]) / 2 for k in wa}, task="digits")
    assert matched > naive + 0.1


@pytest.mark.slow
@pytest.mark.parametrize(("name", "spec"), [("digits-vit", "vit:heads=4"), ("mnist1d-cnn", None)])
def test_finetune_zoo_accuracies_are_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, spec: str | None
) -> None:
    zoo = get_zoo(name)
    monkeypatch.setattr(zoo, "settings", lambda quick: TINY)
    info = build_zoo(name, tmp_path / "zoo", n=3, quick=True)
    for base in (None, info.base_path):
        out = tmp_path / f"aligned-{base is None}"
        res = align([m.path for m in info.models], out=out, spec=spec, base=base)
        for m, row in zip(info.models, res.models, strict=True):
            assert zoo.accuracy(row.output) == zoo.accuracy(m.path)
    # Fine-tunes of one base already share its unit order: aligning to the base moves nothing.
    assert all(r.moved_units == 0 for r in res.models)


def test_demo_alignment_section_and_its_table(mlp_zoo: ZooInfo) -> None:
    from weightspace.collection import Collection
    from weightspace.demo._align import alignment_html, alignment_section
    from weightspace.demo._html import format_value, resolve

    zoo = get_zoo("digits-mlp")
    coll = Collection.from_paths([str(m.path) for m in mlp_zoo.models])
    originals = sum(zoo.accuracy(m.path) for m in mlp_zoo.models) / len(mlp_zoo.models)
    rec = alignment_section(zoo, mlp_zoo, coll, seed=0, originals=originals, chance=0.1, say=lambda _m: None)
    rows = rec["rows"]
    assert set(rows) == {"unaligned", "aligned"}
    # Git Re-Basin's effect on the merged (mean) model, measured: alignment lifts it far above the naive mean.
    assert rows["aligned"]["accuracy"]["merged_mean"] > rows["unaligned"]["accuracy"]["merged_mean"] + 0.1
    assert rec["distance"]["after"] < rec["distance"]["before"]
    assert rec["claim"]["claim"] == "after alignment, from-scratch nets share a subspace"
    data = {"zoos": [{"zoo": "digits-mlp", "alignment": rec}]}
    page = alignment_html(data)
    cells = re.findall(r'data-src="([^"]+)" data-fmt="([^"]+)">([^<]*)<', page)
    assert len(cells) == 2 * 10
    for src, fmt, text in cells:
        assert text == format_value(resolve(data, src), fmt)
    assert alignment_html({"zoos": [{"zoo": "x", "alignment": None}]}) == ""


@pytest.mark.parametrize(
    ("unaligned_mo", "verdict_s", "mo", "mb", "orig", "verdict"),
    [
        (0.10, "shared-subspace", 0.60, 0.90, 0.91, "holds"),
        (0.10, "null-like", 0.60, 0.75, 0.91, "partial"),
        (0.10, "null-like", 0.87, 0.86, 0.92, "explained by the mean"),
        (0.10, "null-like", 0.10, 0.10, 0.92, "null-like"),
        (0.10, "shared-subspace", 0.10, 0.10, 0.92, "fails"),
        (0.10, "shared-subspace", 0.10, 0.10, 0.11, "null-like"),  # originals at chance: the control zoo
    ],
)
def test_alignment_claim_rules(
    unaligned_mo: float, verdict_s: str, mo: float, mb: float, orig: float, verdict: str
) -> None:
    from weightspace.demo._claims import alignment_claim

    def row(v: str, m: float, b: float) -> dict:
        return {
            "spectrum": {"verdict": v, "k": 4, "evr": 0.5, "null_evr_hi": 0.4},
            "accuracy": {"heldout_mean_only": m, "heldout_mean_plus_basis": b, "merged_mean": m},
        }

    claim = alignment_claim(row("null-like", unaligned_mo, unaligned_mo), row(verdict_s, mo, mb), orig, 0.1)
    assert claim["verdict"] == verdict
