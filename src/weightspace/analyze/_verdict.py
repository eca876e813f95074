"""The per-unit verdict: ``shared-subspace``, ``mean-dominated`` or ``null-like``, with written thresholds.

The rule, in order (the first that applies wins):

1. **shared-subspace** — the basis generalises *and* the spectrum is not noise:
   the held-out EVR at ``k_ref`` beats the highest null draw by at least ``heldout_margin`` (the basis fitted
   without a model captures clearly more of that model's deviation from the training mean than it would for
   matched Gaussian noise), **and** the in-sample cumulative EVR at some k ≤ ``k_ref`` (k < N − 1) exceeds the
   highest null draw by at least ``spectrum_margin``.
2. **mean-dominated** — the basis adds nothing beyond noise, but the mean carries the collection:
   mean energy fraction ≥ ``mean_energy_min`` *and* held-out mean-only error ≤ ``mean_only_max`` (a mean fitted
   without the model still explains most of it). Both are required because with very few models the in-sample
   fraction alone is large by chance (1/N for pure noise, 1/2 at N = 2), while the held-out error is not.
   A unit whose members are all identical is mean-dominated by definition.
3. **null-like** — otherwise: neither the basis nor the mean explains held-out models beyond what matched noise
   does. (A centered spectrum above the null that does not carry over to held-out models is flagged in the
   reasons, not promoted.)

Why held-out evidence first: a collection of "mean + independent noise" has a null-like centered spectrum but is
not noise, and an in-sample spectrum can exceed the null and still fail on models it has not seen; both are
decided by held-out reconstruction, with the spectrum test as a guard against structure-free fits.

Examples
--------
>>> t = Thresholds()
>>> decide_verdict(heldout_evr=0.9, null_heldout_evr_hi=0.02, spectrum_excess=0.5,
...                mean_energy_fraction=0.1, mean_only=1.0, thresholds=t)[0]
'shared-subspace'
>>> decide_verdict(heldout_evr=0.03, null_heldout_evr_hi=0.02, spectrum_excess=0.0,
...                mean_energy_fraction=0.8, mean_only=0.45, thresholds=t)[0]
'mean-dominated'
>>> decide_verdict(heldout_evr=0.03, null_heldout_evr_hi=0.02, spectrum_excess=0.0,
...                mean_energy_fraction=0.1, mean_only=1.05, thresholds=t)[0]
'null-like'
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from weightspace._validation import Interval, validate_params

__all__ = ["VERDICTS", "Thresholds", "decide_verdict"]

VERDICTS = ("shared-subspace", "mean-dominated", "null-like")


@dataclass(frozen=True)
class Thresholds:
    """Thresholds of the verdict rule (written into every report).

    Attributes
    ----------
    k_ref : int, default 16
        The k at which the held-out test is made (the paper's headline count), capped by what the folds allow.
    heldout_margin : float, default 0.10
        Held-out EVR must exceed the highest null draw by this much (absolute fraction of held-out variance).
        0.10 means the mean + basis residual is at least ~5 % smaller (in norm) than the mean-only one beyond
        what noise achieves; null draws scatter by ~0.01 at D ≥ 10³.
    spectrum_margin : float, default 0.02
        In-sample cumulative EVR must exceed the highest null draw by this much at some k ≤ k_ref.
    mean_energy_min : float, default 0.5
        ``‖μ‖² / (‖μ‖² + mean_i ‖x_i − μ‖²)`` at least this for mean-dominated.
    mean_only_max : float, default 0.75
        Held-out ``‖x_h − μ_{−h}‖ / ‖x_h‖`` (averaged over models) at most this for mean-dominated: a held-out
        mean explains ≥ 44 % of a model's energy. Pure noise gives ≈ sqrt(N / (N − 1)) ≥ 1.
    """

    k_ref: int = 16
    heldout_margin: float = 0.10
    spectrum_margin: float = 0.02
    mean_energy_min: float = 0.5
    mean_only_max: float = 0.75

    def __post_init__(self) -> None:
        validate_params(
            "Thresholds",
            {
                "k_ref": [Interval(int, 1, None)],
                "heldout_margin": [Interval(float, 0, 1)],
                "spectrum_margin": [Interval(float, 0, 1)],
                "mean_energy_min": [Interval(float, 0, 1)],
                "mean_only_max": [Interval(float, 0, None)],
            },
            asdict(self),
        )

    def to_dict(self) -> dict[str, Any]:
        """The thresholds and the rule in words (for report.json and the HTML page)."""
        return {
            **asdict(self),
            "rule": [
                f"shared-subspace: held-out EVR at k_ref={self.k_ref} ≥ highest null draw + {self.heldout_margin}"
                f" AND in-sample cumulative EVR at some k ≤ k_ref (k < N−1) ≥ highest null draw + "
                f"{self.spectrum_margin}",
                f"mean-dominated (else): mean energy fraction ≥ {self.mean_energy_min} AND held-out mean-only "
                f"error ≤ {self.mean_only_max}; or all members identical",
                "null-like: otherwise (neither basis nor mean explains held-out models beyond matched noise)",
            ],
        }


def _fin(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def decide_verdict(
    *,
    heldout_evr: float | None,
    null_heldout_evr_hi: float | None,
    spectrum_excess: float | None,
    mean_energy_fraction: float,
    mean_only: float | None,
    thresholds: Thresholds,
    zero_spread: bool = False,
    k_ref: int | None = None,
) -> tuple[str, list[str]]:
    """Apply the verdict rule to one unit's measured statistics.

    Parameters
    ----------
    heldout_evr : float or None
        Pooled held-out EVR at k_ref (None when no k can be held out, e.g. N = 2).
    null_heldout_evr_hi : float or None
        Highest null draw of the same statistic.
    spectrum_excess : float or None
        ``max_k (EVR_k − null_hi_k)`` over k ≤ k_ref, k < N − 1 (None when no such k exists).
    mean_energy_fraction : float
    mean_only : float or None
        Held-out mean-only relative error averaged over models.
    thresholds : Thresholds
    zero_spread : bool
        All members identical.
    k_ref : int, optional
        The k actually used (for the reasons).

    Returns
    -------
    verdict : str
        One of :data:`VERDICTS`.
    reasons : list of str
        The measured comparisons behind it.
    """
    t = thresholds
    if zero_spread:
        return "mean-dominated", ["all members are identical (zero spread): the mean is the whole collection"]
    reasons: list[str] = []
    kk = k_ref if k_ref is not None else t.k_ref
    heldout_ok = False
    if _fin(heldout_evr) and _fin(null_heldout_evr_hi):
        gap = float(heldout_evr) - float(null_heldout_evr_hi)  # type: ignore[arg-type]
        heldout_ok = gap >= t.heldout_margin
        reasons.append(
            f"held-out EVR at k={kk}: {heldout_evr:.3f} vs null ≤ {null_heldout_evr_hi:.3f} "
            f"(gap {gap:+.3f}, needs ≥ {t.heldout_margin})"
        )
    else:
        reasons.append("no held-out basis test possible (too few models for a training basis)")
    spectrum_ok = _fin(spectrum_excess) and float(spectrum_excess) >= t.spectrum_margin  # type: ignore[arg-type]
    if _fin(spectrum_excess):
        reasons.append(
            f"in-sample cumulative EVR minus the top of the null band, best k ≤ {t.k_ref}: {spectrum_excess:+.3f} "
            f"(needs ≥ {t.spectrum_margin})"
        )
    if heldout_ok and spectrum_ok:
        return "shared-subspace", reasons
    if heldout_ok:
        reasons.append("held-out gain without a spectrum above the null: not counted as a shared subspace")
    elif spectrum_ok:
        reasons.append("spectrum above the null does not carry over to held-out models")
    mean_ok = mean_energy_fraction >= t.mean_energy_min and _fin(mean_only) and mean_only <= t.mean_only_max  # type: ignore[operator]
    mo = f"{mean_only:.3f}" if _fin(mean_only) else "n/a"
    reasons.append(
        f"mean energy fraction {mean_energy_fraction:.3f} (needs ≥ {t.mean_energy_min}), held-out mean-only "
        f"error {mo} (needs ≤ {t.mean_only_max})"
    )
    if mean_ok:
        return "mean-dominated", reasons
    return "null-like", reasons
