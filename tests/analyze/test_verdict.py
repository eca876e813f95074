"""The verdict rule, its thresholds, and degenerate units."""

from __future__ import annotations

import pytest
import torch

from weightspace.analyze import Thresholds, analyze_unit, decide_verdict, unit_groups, unit_type
from weightspace.errors import ParameterError


@pytest.mark.parametrize(
    ("heldout", "null_hi", "excess", "mef", "mo", "want"),
    [
        (0.9, 0.05, 0.3, 0.1, 1.0, "shared-subspace"),
        (0.9, 0.05, 0.3, 0.99, 0.01, "shared-subspace"),  # basis beats the mean on held-out models: shared
        (0.9, 0.05, 0.0, 0.1, 1.0, "null-like"),  # held-out gain without spectrum excess is not enough
        (0.12, 0.05, 0.3, 0.99, 0.01, "mean-dominated"),  # spectrum above null, but no held-out gain
        (0.05, 0.05, 0.0, 0.8, 0.45, "mean-dominated"),
        (0.05, 0.05, 0.0, 0.6, 0.9, "null-like"),  # mean share in-sample only (few models)
        (None, None, None, 0.5, 1.4, "null-like"),  # N = 2, random
    ],
)
def test_rule_table(heldout, null_hi, excess, mef, mo, want) -> None:
    verdict, reasons = decide_verdict(
        heldout_evr=heldout,
        null_heldout_evr_hi=null_hi,
        spectrum_excess=excess,
        mean_energy_fraction=mef,
        mean_only=mo,
        thresholds=Thresholds(),
    )
    assert verdict == want
    assert reasons


def test_thresholds_validate_and_document() -> None:
    with pytest.raises(ParameterError, match="The 'heldout_margin' parameter of Thresholds must be a float in"):
        Thresholds(heldout_margin=2.0)
    d = Thresholds().to_dict()
    assert d["k_ref"] == 16
    assert d["min_models_per_k"] == 6
    assert len(d["rule"]) == 5
    assert any("inconclusive" in r for r in d["rule"])


def test_identical_members_are_mean_dominated() -> None:
    rec = analyze_unit([torch.ones(3, 4)] * 5, n_null=2)
    assert rec["verdict"] == "mean-dominated"
    assert rec["zero_spread"]
    assert rec["mean_energy_fraction"] == 1.0
    assert rec["loo"]["mean_only"] == 0.0


def test_two_models_work_without_heldout_basis() -> None:
    g = torch.Generator().manual_seed(0)
    rec = analyze_unit([torch.randn(6, 5, generator=g) for _ in range(2)], n_null=2)
    assert rec["loo"]["k"] == []
    # N = 2 < 6: no basis test at any k, so the unit cannot be called null-like either
    assert rec["verdict"] == "inconclusive"
    assert not rec["testable"]
    assert "not testable" in rec["reasons"][0]


@pytest.mark.parametrize(
    ("interval", "want"),
    [((0.15, 0.40), "shared-subspace"), ((0.05, 0.40), "inconclusive"), ((-0.05, 0.08), "null-like")],
)
def test_intervals_decide_not_points(interval: tuple[float, float], want: str) -> None:
    """The same point estimate gives three verdicts depending on where its interval lies."""
    verdict, reasons = decide_verdict(
        heldout_evr=0.30,
        null_heldout_evr_hi=0.05,
        spectrum_excess=0.3,
        mean_energy_fraction=0.1,
        mean_only=1.0,
        thresholds=Thresholds(),
        heldout_gap_interval=interval,
        spectrum_excess_interval=(0.2, 0.4),
        mean_energy_interval=(0.05, 0.15),
        mean_only_interval=(0.95, 1.05),
    )
    assert verdict == want
    assert f"[{interval[0]:+.3f}, {interval[1]:+.3f}]" in reasons[0]


def test_tested_k_follows_six_models_per_direction() -> None:
    t = Thresholds()
    assert [t.k_testable(n) for n in (5, 6, 20, 95, 96, 500)] == [0, 1, 3, 15, 16, 16]
    g = torch.Generator().manual_seed(0)
    rec = analyze_unit([torch.randn(4, 5, generator=g) for _ in range(20)], n_null=4)
    assert rec["k_ref"] == 3
    assert rec["k_ref_requested"] == 16
    assert rec["intervals"]["k"] == 3


def test_parameter_errors() -> None:
    ws = [torch.randn(3, 3) for _ in range(4)]
    with pytest.raises(ParameterError, match="'method' parameter of analyze must be one of 'hosvd', 'pca'"):
        analyze_unit(ws, method="svd")
    with pytest.raises(ParameterError, match=r"'folds' parameter of analyze must be an int in \[2, 4\]"):
        analyze_unit(ws, folds=9)
    with pytest.raises(ParameterError, match="'ks' parameter of analyze"):
        analyze_unit(ws, ks=[0, 2])
    with pytest.raises(ParameterError, match="'n_null' parameter of analyze must be an int >= 1"):
        analyze_unit(ws, n_null=0)


def test_unit_types() -> None:
    assert unit_type("encoder.layer.11.attention.self.query.weight") == ("attention.self.query.weight", 11)
    assert unit_type("blocks.2.mlp.0.weight") == ("mlp.0.weight", 2)
    assert unit_type("head.weight") == ("head.weight", None)
    groups = unit_groups(["encoder.layer.0.q.weight", "decoder.layer.0.q.weight", "encoder.layer.1.q.weight"])
    assert groups["encoder.layer.1.q.weight"] == ("encoder.layer/q.weight", 1)
    assert groups["decoder.layer.0.q.weight"] == ("decoder.layer/q.weight", 0)
