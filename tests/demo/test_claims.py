"""Claim verdicts follow the documented rules, case by case."""

from __future__ import annotations

import pytest

from weightspace.demo._claims import adapt_claim, compression_claim, heldout_claim, merge_claim, spectrum_claim

CHANCE = 0.1


@pytest.mark.parametrize(
    ("orig", "mean", "mb", "spectrum", "verdict"),
    [
        (0.90, 0.60, 0.89, "shared-subspace", "holds"),
        (0.90, 0.89, 0.895, "mean-dominated", "explained by the mean"),
        (0.90, 0.30, 0.30, "null-like", "null-like"),
        (0.90, 0.50, 0.70, "null-like", "partial"),
        (0.90, 0.50, 0.40, "shared-subspace", "fails"),
        (0.11, 0.10, 0.10, "null-like", "null-like"),  # originals at chance: accuracy cannot decide
    ],
)
def test_heldout_claim(orig: float, mean: float, mb: float, spectrum: str, verdict: str) -> None:
    assert heldout_claim(orig, mean, mb, spectrum, CHANCE)["verdict"] == verdict


@pytest.mark.parametrize(
    ("ratio", "orig", "recon", "mean", "spectrum", "verdict"),
    [
        (10.0, 0.9, 0.89, 0.5, "shared-subspace", "holds"),
        (10.0, 0.9, 0.89, 0.895, "mean-dominated", "explained by the mean"),
        (1.05, 0.9, 0.89, 0.5, "null-like", "null-like"),
        (1.05, 0.9, 0.89, 0.5, "shared-subspace", "fails"),
        (10.0, 0.9, 0.5, 0.4, "shared-subspace", "fails"),
    ],
)
def test_compression_claim(
    ratio: float, orig: float, recon: float, mean: float, spectrum: str, verdict: str
) -> None:
    assert compression_claim(ratio, orig, recon, mean, spectrum, CHANCE)["verdict"] == verdict


def test_head_control_comes_before_the_mean() -> None:
    assert heldout_claim(0.96, 0.95, 0.95, "null-like", 0.5, acc_head=0.955)["verdict"] == "explained by the head"
    assert heldout_claim(0.96, 0.95, 0.95, "null-like", 0.5, acc_head=0.80)["verdict"] == "explained by the mean"
    claim = compression_claim(0.05, 0.96, 0.96, 0.95, "null-like", 0.5, acc_head=0.955)
    assert claim["verdict"] == "explained by the head"
    assert "(base + own head, no task vector)" in claim["evidence"]


def test_merge_and_spectrum_claims() -> None:
    assert merge_claim(0.80, 0.70, 0.75, "ties")["verdict"] == "holds"
    assert merge_claim(0.70, 0.70, 0.75, "ties")["verdict"] == "explained by the mean"
    assert merge_claim(0.74, 0.70, 0.80, "ties")["verdict"] == "fails"
    assert adapt_claim(0.83, 0.82, 0.79, 0.826, 0.81, 48, 5416)["verdict"] == "explained by the head"
    assert adapt_claim(0.90, 0.92, 0.91, 0.80, 0.82, 48, 5416)["verdict"] == "holds"
    assert adapt_claim(0.86, 0.87, 0.91, 0.80, 0.82, 48, 5416)["verdict"] == "partial"
    head = {"verdict": "mean-dominated", "param_share": 0.7}
    claim = spectrum_claim(head, 0.5, 0.2, 16)
    assert claim["verdict"] == "explained by the mean"
    assert "EVR@16 0.500 vs null 0.200" in claim["evidence"]
