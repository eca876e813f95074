"""Issue 13 acceptance: at N = 96 the k = 16 test can decide, with intervals that clear (or miss) the thresholds."""

from __future__ import annotations

import pytest
import torch

from analyze._builders import planted_tensors
from weightspace.analyze import Thresholds, analyze_unit
from weightspace.analyze._bootstrap import (
    bootstrap_weights,
    heldout_gap_samples,
    interval,
    spectrum_excess_samples,
)

N, SHAPE = 96, (12, 16)  # tiny units: D = 192 > N


@pytest.fixture(scope="module")
def planted() -> dict:
    # rank 16 planted in D = 192, plus noise: k = 16 is exactly the paper's count, and N = 96 = 6 · 16
    return analyze_unit(planted_tensors(n=N, shape=SHAPE, rank=16, noise=0.05, seed=7), n_null=20, seed=0)


@pytest.fixture(scope="module")
def gaussian() -> dict:
    g = torch.Generator().manual_seed(8)
    return analyze_unit([torch.randn(SHAPE, generator=g) for _ in range(N)], n_null=20, seed=0)


def test_planted_rank_at_n96_is_shared_with_intervals_clearing_the_thresholds(planted: dict) -> None:
    t = Thresholds()
    assert planted["testable"]
    assert planted["k_ref"] == 16
    assert planted["verdict"] == "shared-subspace", planted["reasons"]
    iv = planted["intervals"]
    assert iv["k"] == 16
    assert iv["n_boot"] == 200
    assert iv["heldout_gap"]["lo"] >= t.heldout_margin
    assert iv["spectrum_excess"]["lo"] >= t.spectrum_margin
    for key in ("heldout_gap", "spectrum_excess", "evr", "heldout_evr", "mean_energy_fraction", "mean_only"):
        assert iv[key]["lo"] <= iv[key]["point"] <= iv[key]["hi"], key
    assert "[+" in planted["reasons"][0]  # the interval is in the words


def test_gaussian_of_the_same_shape_is_null_like(gaussian: dict) -> None:
    t = Thresholds()
    assert gaussian["k_ref"] == 16
    assert gaussian["verdict"] == "null-like", gaussian["reasons"]
    iv = gaussian["intervals"]
    assert iv["heldout_gap"]["hi"] < t.heldout_margin
    assert iv["spectrum_excess"]["hi"] < t.spectrum_margin
    # the data is itself a Gaussian: its excess over the null is centered near zero
    assert iv["spectrum_excess"]["lo"] < 0 < iv["spectrum_excess"]["hi"] + 0.02


def test_too_few_models_lower_the_tested_k() -> None:
    """N = 20 cannot test k = 16 (its top 16 directions hold nearly everything): the unit is tested at k = 3."""
    rec = analyze_unit(planted_tensors(n=20, shape=SHAPE, rank=16, noise=0.05, seed=7), n_null=8)
    assert rec["k_ref"] == 3
    assert rec["k_ref_requested"] == 16


def test_resampled_statistics_are_paired_with_the_null() -> None:
    """A null compared with itself (same draws, same resamples) has an excess and a gap of exactly zero."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 30, generator=g, dtype=torch.float64)
    y = x - x.mean(0)
    gram = y @ y.T
    idx = bootstrap_weights(10, 50, generator=g)
    assert torch.allclose(idx.mean(dim=1), torch.ones(50, dtype=torch.float64))
    assert spectrum_excess_samples(gram, [gram], idx, 3).abs().max() < 1e-12
    mo, mb = torch.rand(10, generator=g, dtype=torch.float64) + 1, torch.rand(10, generator=g, dtype=torch.float64)
    evr, gap = heldout_gap_samples(mo, mb, [mo], [mb], idx)
    assert gap.abs().max() < 1e-12
    assert interval(evr, point=0.5)["n_boot"] == 50
