"""Claim verdicts follow the documented rules: intervals decide, N < 6·k is not testable, words are honest."""

from __future__ import annotations

import pytest

from weightspace.demo import CITED, paper_table, ratio_words
from weightspace.demo._claims import (
    adapt_claim,
    compression_claim,
    heldout_claim,
    merge_claim,
    not_testable,
    proportion_difference,
    spectrum_claim,
)


def iv(point: float, half: float = 0.005) -> dict[str, float]:
    return {"point": point, "lo": point - half, "hi": point + half}


ABOVE_CHANCE = iv(0.5)


@pytest.mark.parametrize("n", [12, 20, 95])
def test_rows_below_six_models_per_direction_are_not_testable(n: int) -> None:
    """N < 6·16: every claim row at k = 16 says so instead of a verdict, whatever the numbers."""
    agg = {
        "k": max(1, n // 6),
        "verdict": "shared-subspace",
        "evr": iv(0.9),
        "spectrum_excess": iv(0.5),
        "heldout_gap": iv(0.5),
    }
    head = {"verdict": "shared-subspace", "param_share": 1.0}
    rows = [
        spectrum_claim(agg, head, n),
        compression_claim(n, 10.0, iv(0.0), iv(-0.5), ABOVE_CHANCE),
        heldout_claim(n, iv(0.0), iv(-0.5), iv(0.5), ABOVE_CHANCE),
    ]
    for row in rows:
        assert row["verdict"] == f"not testable at N = {n}"
        assert not row["testable"]
    assert "needs N ≥ 96 for k = 16" in rows[0]["evidence"]
    assert not_testable(96) is None


def test_spectrum_claim_maps_the_aggregate_verdict() -> None:
    head = {"verdict": "null-like", "param_share": 0.8}
    for verdict, word in [
        ("shared-subspace", "holds"),
        ("mean-dominated", "explained by the mean"),
        ("null-like", "null-like"),
        ("inconclusive", "inconclusive"),
    ]:
        agg = {"k": 16, "verdict": verdict, "evr": iv(0.4), "spectrum_excess": iv(0.1), "heldout_gap": iv(0.05)}
        row = spectrum_claim(agg, head, 96)
        assert row["verdict"] == word
        assert "EVR@16 0.400 [0.395, 0.405] vs null 0.300" in row["evidence"]


@pytest.mark.parametrize(
    ("d_rebuilt", "d_mean", "ratio", "verdict"),
    [
        (iv(-0.005), iv(-0.30), 10.0, "holds"),
        (iv(-0.005), iv(-0.01), 10.0, "explained by the mean"),
        (iv(-0.005), iv(-0.30), 1.5, "fails"),  # not smaller
        (iv(-0.20), iv(-0.30), 10.0, "fails"),  # clearly loses accuracy
        (iv(-0.02, 0.02), iv(-0.30), 10.0, "inconclusive"),  # the loss interval straddles the tolerance
    ],
)
def test_compression_claim(d_rebuilt, d_mean, ratio: float, verdict: str) -> None:
    assert compression_claim(96, ratio, d_rebuilt, d_mean, ABOVE_CHANCE)["verdict"] == verdict


@pytest.mark.parametrize(
    ("d_mb", "d_mo", "gain", "verdict"),
    [
        (iv(-0.005), iv(-0.30), iv(0.30), "holds"),
        (iv(-0.005), iv(-0.005), iv(0.0), "explained by the mean"),
        (iv(-0.20), iv(-0.30), iv(0.10), "partial"),
        (iv(-0.20), iv(-0.20), iv(0.0), "fails"),  # the basis adds nothing and the mean loses accuracy
        (iv(-0.005), iv(-0.30), iv(0.02, 0.03), "inconclusive"),
    ],
)
def test_heldout_claim(d_mb, d_mo, gain, verdict: str) -> None:
    assert heldout_claim(96, d_mb, d_mo, gain, ABOVE_CHANCE)["verdict"] == verdict


def test_chance_and_head_controls_come_first() -> None:
    at_chance = iv(0.005)
    assert heldout_claim(96, iv(0.0), iv(0.0), iv(0.0), at_chance)["verdict"] == "null-like"
    claim = compression_claim(96, 10.0, iv(0.0), iv(-0.3), ABOVE_CHANCE, d_head=iv(-0.005))
    assert claim["verdict"] == "explained by the head"
    assert "(base + own head, no task vector)" in claim["evidence"]


def test_merge_words_are_honest() -> None:
    avg = {"subspace": 0.8, "mean": 0.7, "ties": 0.75}
    assert merge_claim(iv(0.10), iv(0.05), "ties", avg, 20)["verdict"] == "holds"
    assert merge_claim(iv(0.0), iv(-0.05), "ties", avg, 20)["verdict"] == "explained by the mean"
    # worse than its control: "fails", never "explained by the mean"
    worse = merge_claim(iv(-0.10), iv(-0.15), "ties", avg, 20)
    assert worse["verdict"] == "fails"
    assert "subspace − mean -10.0 pt [-10.5, -9.5]" in worse["evidence"]
    assert merge_claim(iv(0.0, 0.05), iv(0.0, 0.05), "ties", avg, 20)["verdict"] == "inconclusive"


def test_adapt_claim_uses_intervals_over_test_examples() -> None:
    # coefficient-only clearly below the head-only control: fails
    assert adapt_claim(0.60, 0.80, 0.82, 0.70, 0.61, 48, 5416, 1000)["verdict"] == "fails"
    # equal to the head-only control: with 1000 examples the ±3 pt interval cannot exclude a 2 pt gain ...
    assert adapt_claim(0.70, 0.80, 0.82, 0.70, 0.61, 48, 5416, 1000)["verdict"] == "inconclusive"
    # ... with 10 000 it can
    assert adapt_claim(0.70, 0.80, 0.82, 0.70, 0.61, 48, 5416, 10_000)["verdict"] == "explained by the head"
    assert adapt_claim(0.93, 0.92, 0.91, 0.80, 0.82, 48, 5416, 1000)["verdict"] == "holds"
    assert adapt_claim(0.88, 0.87, 0.95, 0.80, 0.79, 48, 5416, 1000)["verdict"] == "partial"
    assert adapt_claim(0.88, 0.95, 0.96, 0.80, 0.79, 48, 5416, 1000)["verdict"] == "fails"  # clearly below LoRA
    # within the tolerance of full fine-tuning, but the interval reaches further: not decided
    assert adapt_claim(0.90, 0.92, 0.91, 0.80, 0.82, 48, 5416, 1000)["verdict"] == "inconclusive"
    # with only 50 test examples the same gap over the head cannot be told from noise
    assert adapt_claim(0.75, 0.87, 0.91, 0.70, 0.69, 48, 5416, 50)["verdict"] == "inconclusive"
    d = proportion_difference(0.75, 0.70, 50)
    assert d["lo"] < 0.02 < d["hi"]


def test_ratio_words_of_a_ratio() -> None:
    # The demo passes a ratio (checkpoints ÷ archive) as ``ratio_words(ratio, 1)``.
    assert ratio_words(19.0, 1) == "19× smaller"
    assert ratio_words(0.05, 1) == "20× larger"
    assert ratio_words(0.5, 1) == "2.0× larger"


def test_paper_table_quotes_sources_and_points_at_measured_claims() -> None:
    assert set(CITED) == {"spectrum", "compression", "heldout", "merge", "adapt"}
    for cited in CITED.values():
        for who in ("paper", "replication"):
            assert cited[who]["source"]
            assert cited[who]["text"]
    assert "2512.05117" in CITED["merge"]["paper"]["source"]
    assert CITED["spectrum"]["replication"]["null"] == 0.165
    result = {
        "zoos": [{"zoo": "z", "n_models": 96, "claims": [{"key": "spectrum"}, {"key": "heldout"}]}],
        "merge": {"zoo": "m", "claim": {"key": "merge"}},
    }
    rows = {r["key"]: r for r in paper_table(result)}
    assert [o["pointer"] for o in rows["spectrum"]["ours"]] == ["/zoos/0/claims/0"]
    assert [o["pointer"] for o in rows["merge"]["ours"]] == ["/merge/claim"]
    assert rows["adapt"]["ours"] == []
