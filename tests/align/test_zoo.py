"""Alignment on real zoos: accuracies unchanged, and Git Re-Basin's headline effect on two digits-mlp nets."""

from __future__ import annotations

import os
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
