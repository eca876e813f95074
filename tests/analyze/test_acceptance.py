"""The three acceptance cases of the verdict: random init, planted subspace, mean + independent noise."""

from __future__ import annotations

from pathlib import Path

import pytest

from analyze._builders import PLANTED_RANK
from weightspace.analyze import analyze
from weightspace.collection import Collection


@pytest.fixture(scope="module")
def init_report(init_dir: Path):
    return analyze(Collection.from_paths([init_dir]), seed=0)


@pytest.fixture(scope="module")
def planted_report(planted_dir: Path):
    return analyze(Collection.from_paths([planted_dir]), seed=0)


@pytest.fixture(scope="module")
def mean_noise_report(mean_noise_dir: Path):
    return analyze(Collection.from_paths([mean_noise_dir]), seed=0)


def test_random_init_is_null_like_everywhere(init_report) -> None:
    # 8 models: every weight matrix is null-like; a 6-entry bias may be too small to decide (inconclusive), but
    # nothing is ever called shared or mean-dominated
    assert set(init_report.verdicts.values()) <= {"null-like", "inconclusive"}, init_report.verdicts
    assert {u["verdict"] for u in init_report.units if u["kind"] == "matrix"} == {"null-like"}
    for u in init_report.units:
        # mean energy ≈ 1/N for iid zero-mean init; held-out mean is no better than predicting zero
        assert u["mean_energy_fraction"] < 0.35, u["name"]
        assert u["loo"]["mean_only"] > 0.95, u["name"]
        a = u["at_k_ref"]
        assert abs(a["heldout_evr"] - a["null_heldout_evr"]) < 0.1, u["name"]
    weights = [u for u in init_report.units if u["kind"] == "matrix"]
    assert len(weights) == 3
    for u in weights:
        assert not u["spectrum_exceeds_null"], u["name"]
        assert abs(u["k90"] - u["null_k90"]) <= 1


def test_planted_subspace_is_found(planted_report) -> None:
    assert set(planted_report.verdicts.values()) == {"shared-subspace"}, planted_report.verdicts
    for u in planted_report.units:
        assert abs(u["k90"] - PLANTED_RANK) <= 1, (u["name"], u["k90"])
        assert u["null_k90"] > PLANTED_RANK + 3
        loo = u["loo"]
        i = loo["k"].index(PLANTED_RANK) if PLANTED_RANK in loo["k"] else loo["k"].index(4)
        # held-out mean + basis error far below mean-only once k reaches the planted rank
        assert loo["mean_plus_basis"][i] < 0.05 * loo["mean_only"], (u["name"], loo)
        assert loo["heldout_evr"][i] > 0.99
        assert loo["null_heldout_evr_hi"][i] < 0.2
        s = u["stability"]
        j = s["k"].index(4)  # 3 planted directions + 1 noise direction: overlap ≈ 3/4
        assert s["overlap"][j] > 0.7 > 0.1 > s["null_overlap_hi"][j]


def test_mean_plus_noise_is_mean_dominated(mean_noise_report) -> None:
    assert set(mean_noise_report.verdicts.values()) == {"mean-dominated"}, mean_noise_report.verdicts
    for u in mean_noise_report.units:
        # its centered spectrum is itself null-like: the mean evidence has to decide
        assert not u["spectrum_exceeds_null"]
        assert u["mean_energy_fraction"] > 0.7
        assert u["loo"]["mean_only"] < 0.6
        a = u["at_k_ref"]
        assert a["heldout_evr"] - a["null_heldout_evr_hi"] < 0.05


def test_summary_counts_and_headline(planted_report, init_report) -> None:
    s = planted_report.summary
    assert s["verdict_counts"] == {"shared-subspace": 3, "mean-dominated": 0, "null-like": 0, "inconclusive": 0}
    assert s["headline"]["verdict"] == "shared-subspace"
    assert s["by_kind"]["vector"]["n_units"] == 1
    types = {(g["type"], g["kind"]) for g in s["groups"]}
    assert ("attn.weight", "matrix") in types
    assert ("norm.weight", "vector") in types
    assert init_report.summary["headline"]["verdict"] == "null-like"


def test_same_seed_same_report(planted_dir: Path, planted_report) -> None:
    again = analyze(Collection.from_paths([planted_dir]), seed=0).to_dict()
    first = planted_report.to_dict()
    again.pop("wall_s"), first.pop("wall_s")
    assert again == first
    other = analyze(Collection.from_paths([planted_dir]), seed=1).to_dict()
    assert other["units"][0]["null_evr"] != first["units"][0]["null_evr"]
    assert other["units"][0]["evr"] == first["units"][0]["evr"]  # data statistics do not depend on the seed
