"""The per-unit verdict: ``shared-subspace``, ``mean-dominated``, ``null-like`` or ``inconclusive``.

Every number the rule uses is a bootstrap interval over models (and over null draws; see
:mod:`weightspace.analyze._bootstrap`). A comparison *passes* when its whole interval clears the threshold,
*fails* when its whole interval lies on the other side, and is *undecided* otherwise. The rule, in order:

0. **testable k** — the basis tests are made at ``k = min(k_ref, ⌊N / min_models_per_k⌋)`` (default
   ``min(16, ⌊N/6⌋)``): at k close to N − 1 the top k directions of *any* collection hold nearly all of its
   variance, so the test could not fail. With N < ``min_models_per_k`` no basis test is possible.
1. **shared-subspace** — the basis generalises *and* the spectrum is not noise: the held-out EVR at k minus the
   null's (same resample, a null draw) is ≥ ``heldout_margin``, **and** the in-sample cumulative EVR at k minus
   the null's is ≥ ``spectrum_margin``. Both pass → shared-subspace; either fails → not shared; else undecided.
2. **mean-dominated** — (not shared) mean energy fraction ≥ ``mean_energy_min`` *and* held-out mean-only error
   ≤ ``mean_only_max`` (a mean fitted without the model still explains most of it). Both are required because
   with very few models the in-sample fraction alone is large by chance (1/N for pure noise, 1/2 at N = 2),
   while the held-out error is not. A unit whose members are all identical is mean-dominated by definition.
3. **null-like** — not shared and not mean-dominated: neither the basis nor the mean explains held-out models
   beyond what matched noise does.
4. **inconclusive** — any comparison the outcome depends on is undecided (its interval straddles the
   threshold): the verdict says so, with the intervals, instead of guessing.

Without intervals (``*_interval`` arguments omitted) the point estimates are compared with the thresholds, as
a special case with zero-width intervals.

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
>>> decide_verdict(heldout_evr=0.2, null_heldout_evr_hi=0.02, spectrum_excess=0.3,
...                mean_energy_fraction=0.1, mean_only=1.0, thresholds=t,
...                heldout_gap_interval=(0.05, 0.3))[0]
'inconclusive'
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from weightspace._validation import Interval, validate_params

__all__ = ["VERDICTS", "Thresholds", "decide_verdict"]

VERDICTS = ("shared-subspace", "mean-dominated", "null-like", "inconclusive")


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
    min_models_per_k : int, default 6
        A basis test at k needs N ≥ ``min_models_per_k`` · k models (k = 16 needs 96); the tested k is lowered
        to ``⌊N / min_models_per_k⌋`` otherwise.
    """

    k_ref: int = 16
    heldout_margin: float = 0.10
    spectrum_margin: float = 0.02
    mean_energy_min: float = 0.5
    mean_only_max: float = 0.75
    min_models_per_k: int = 6

    def __post_init__(self) -> None:
        validate_params(
            "Thresholds",
            {
                "k_ref": [Interval(int, 1, None)],
                "heldout_margin": [Interval(float, 0, 1)],
                "spectrum_margin": [Interval(float, 0, 1)],
                "mean_energy_min": [Interval(float, 0, 1)],
                "mean_only_max": [Interval(float, 0, None)],
                "min_models_per_k": [Interval(int, 1, None)],
            },
            asdict(self),
        )

    def k_testable(self, n_models: int) -> int:
        """The k a basis test is made at for ``n_models`` models: ``min(k_ref, ⌊N / min_models_per_k⌋)`` (0: none).

        Examples
        --------
        >>> Thresholds().k_testable(20), Thresholds().k_testable(96), Thresholds().k_testable(500)
        (3, 16, 16)
        """
        return min(self.k_ref, n_models // self.min_models_per_k)

    def to_dict(self) -> dict[str, Any]:
        """The thresholds and the rule in words (for report.json and the HTML page)."""
        return {
            **asdict(self),
            "rule": [
                f"tested k = min(k_ref={self.k_ref}, ⌊N / {self.min_models_per_k}⌋); every comparison below uses "
                "a bootstrap interval over models and null draws (5–95 %) and passes only if the whole interval "
                "clears its threshold",
                f"shared-subspace: held-out EVR at k minus the null's ≥ {self.heldout_margin} AND in-sample "
                f"cumulative EVR at k minus the null's ≥ {self.spectrum_margin}",
                f"mean-dominated (else): mean energy fraction ≥ {self.mean_energy_min} AND held-out mean-only "
                f"error ≤ {self.mean_only_max}; or all members identical",
                "null-like: otherwise (neither basis nor mean explains held-out models beyond matched noise)",
                "inconclusive: an interval the outcome depends on straddles its threshold",
            ],
        }


def _fin(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


Pair = tuple[float, float]


def _side(lo_hi: Pair | None, point: float | None, threshold: float, *, above: bool) -> bool | None:
    """True if the interval (or the point) is entirely on the passing side of ``threshold``, False if entirely
    on the other side, None if it straddles it or nothing was measured."""
    if lo_hi is not None and _fin(lo_hi[0]) and _fin(lo_hi[1]):
        lo, hi = float(lo_hi[0]), float(lo_hi[1])
    elif _fin(point):
        lo = hi = float(point)  # type: ignore[arg-type]
    else:
        return None
    if above:
        return True if lo >= threshold else False if hi < threshold else None
    return True if hi <= threshold else False if lo > threshold else None


def _both(a: bool | None, b: bool | None) -> bool | None:
    if a is False or b is False:
        return False
    if a is True and b is True:
        return True
    return None


def _fmt(point: float | None, lo_hi: Pair | None) -> str:
    text = f"{point:+.3f}" if _fin(point) else "n/a"
    if lo_hi is not None and _fin(lo_hi[0]) and _fin(lo_hi[1]):
        text += f" [{lo_hi[0]:+.3f}, {lo_hi[1]:+.3f}]"
    return text


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
    heldout_gap_interval: Pair | None = None,
    spectrum_excess_interval: Pair | None = None,
    mean_energy_interval: Pair | None = None,
    mean_only_interval: Pair | None = None,
    testable: bool = True,
) -> tuple[str, list[str]]:
    """Apply the verdict rule to one unit's measured statistics.

    Parameters
    ----------
    heldout_evr : float or None
        Pooled held-out EVR at the tested k (None when no k can be held out, e.g. N = 2).
    null_heldout_evr_hi : float or None
        The null's held-out EVR the point estimate is compared with (the highest draw).
    spectrum_excess : float or None
        In-sample cumulative EVR at the tested k minus the null's (None when not measurable).
    mean_energy_fraction : float
    mean_only : float or None
        Held-out mean-only relative error averaged over models.
    thresholds : Thresholds
    zero_spread : bool
        All members identical.
    k_ref : int, optional
        The k actually tested (for the reasons).
    heldout_gap_interval, spectrum_excess_interval, mean_energy_interval, mean_only_interval : (lo, hi), optional
        Bootstrap intervals of ``heldout_evr − null``, ``spectrum_excess``, the mean energy fraction and the
        mean-only error. When given they decide; otherwise the point estimates do.
    testable : bool
        False when N is too small for any basis test (N < ``min_models_per_k``).

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
    if not testable:
        shared: bool | None = None
        reasons.append(
            f"not testable: a basis test at k needs N ≥ {t.min_models_per_k}·k models, and there are too few for "
            "k = 1"
        )
    else:
        gap = (
            float(heldout_evr) - float(null_heldout_evr_hi)  # type: ignore[arg-type]
            if _fin(heldout_evr) and _fin(null_heldout_evr_hi)
            else None
        )
        measured_held = gap is not None or heldout_gap_interval is not None
        measured_spec = _fin(spectrum_excess) or spectrum_excess_interval is not None
        # A test that cannot be made (too few models for a training basis) counts as failed, as before.
        held = _side(heldout_gap_interval, gap, t.heldout_margin, above=True) if measured_held else False
        spec = (
            _side(spectrum_excess_interval, spectrum_excess, t.spectrum_margin, above=True)
            if measured_spec
            else False
        )
        if not measured_held:
            reasons.append("no held-out basis test possible (too few models for a training basis)")
        else:
            reasons.append(
                f"held-out EVR at k={kk}: {_fmt(heldout_evr, None).lstrip('+')}, minus the null's: "
                f"{_fmt(gap, heldout_gap_interval)} (needs ≥ {t.heldout_margin}: {_word(held)})"
            )
        if measured_spec:
            reasons.append(
                f"in-sample cumulative EVR at k={kk} minus the null's: "
                f"{_fmt(spectrum_excess, spectrum_excess_interval)} (needs ≥ {t.spectrum_margin}: {_word(spec)})"
            )
        shared = _both(held, spec)
    if shared is True:
        return "shared-subspace", reasons
    if shared is False:
        reasons.append("not a shared subspace: a basis test fails")
    mef = _side(mean_energy_interval, mean_energy_fraction, t.mean_energy_min, above=True)
    mo = _side(mean_only_interval, mean_only, t.mean_only_max, above=False)
    mean = _both(mef, mo)
    reasons.append(
        f"mean energy fraction {_fmt(mean_energy_fraction, mean_energy_interval).lstrip('+')} (needs ≥ "
        f"{t.mean_energy_min}: {_word(mef)}), held-out mean-only error "
        f"{_fmt(mean_only, mean_only_interval).lstrip('+')} (needs ≤ {t.mean_only_max}: {_word(mo)})"
    )
    if shared is None:
        reasons.append(
            "inconclusive: whether the basis is shared could not be decided (an interval straddles its threshold)"
            if testable
            else "inconclusive: too few models to test a basis"
        )
        return "inconclusive", reasons
    if mean is True:
        return "mean-dominated", reasons
    if mean is None:
        reasons.append("inconclusive: the mean test's interval straddles its threshold")
        return "inconclusive", reasons
    return "null-like", reasons


def _word(ok: bool | None) -> str:
    return {True: "passes", False: "fails", None: "undecided"}[ok]
