"""Evidence for one unit under model-axis PCA, from a single streamed pass over its data.

One call of :func:`~weightspace.decompose.pca_spectrum` streams the unit once and returns the centered Gram
``G`` (N × N), ``m = X_c μ`` and ``‖μ‖²``. Everything else — the spectrum, the matched nulls, leave-one-out or
K-fold reconstruction errors, split-half stability — is N × N algebra on those, so memory is ``O(N² + chunk)``
and nothing of size D is kept once the pass ends.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from weightspace.analyze._loo import heldout_evr_from_gram, heldout_from_gram
from weightspace.analyze._nulls import gaussian_null_gram, lora_null_gram, mp_edge_evr, spectrum_evr
from weightspace.analyze._stability import subspace_overlap
from weightspace.analyze._threads import single_thread
from weightspace.analyze._verdict import Thresholds, decide_verdict
from weightspace.decompose import Tick
from weightspace.decompose.pca import DEFAULT_CHUNK_BYTES, PCASpectrum, PCAUnit, pca_spectrum
from weightspace.decompose.rank import explained_variance_ratio, k_for_fraction, zero_tolerance
from weightspace.units import UnitStack

__all__ = ["Plan", "analyze_pca_unit", "capped", "mean_energy", "nanmean"]

FRACTIONS = (0.5, 0.9, 0.99)


@dataclass
class Plan:
    """What every unit of one analysis shares: ks, folds, split, null draws, thresholds.

    Attributes
    ----------
    ks : tuple of int
        Requested ks (each unit caps them by what its N allows).
    folds : list of Tensor
        Held-out index sets.
    scheme : str
        ``"leave-one-out"`` or ``"K-fold"``.
    split : tuple of Tensor
        The two halves of the stability test.
    n_null : int
        Null draws per unit.
    thresholds : Thresholds
    null_grams : mapping of str to sequence of Tensor, optional
        Per unit, centered null Grams drawn elsewhere (``analyze(align=...)``: the aligned null), used instead
        of the Wishart draws.
    device : str
        Where the data pass's products run (a run option; the record does not depend on it).
    cache_bytes : int
        A unit whose float64 members fit in this many bytes is read once and kept for every later pass.
    """

    ks: tuple[int, ...]
    folds: list[torch.Tensor]
    scheme: str
    split: tuple[torch.Tensor, torch.Tensor]
    n_null: int
    thresholds: Thresholds
    null_grams: Mapping[str, Sequence[torch.Tensor]] | None = None
    device: str = "cpu"
    cache_bytes: int = 0

    @property
    def n_train_min(self) -> int:
        n = sum(int(f.numel()) for f in self.folds)
        return n - max(int(f.numel()) for f in self.folds)


def capped(ks: Sequence[int], cap: int) -> list[int]:
    """``sorted({min(k, cap)})`` for ``cap ≥ 1``, else ``[]``.

    Examples
    --------
    >>> capped([1, 2, 4, 8, 16, 32], 6)
    [1, 2, 4, 6]
    """
    return sorted({min(int(k), cap) for k in ks}) if cap >= 1 else []


def nanmean(values: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Mean ignoring NaN (NaN where every entry is NaN)."""
    ok = ~torch.isnan(values)
    count = ok.sum(dim=dim)
    total = torch.where(ok, values, torch.zeros_like(values)).sum(dim=dim)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))


def mean_energy(mean_sq_norm: float, spread_sq: float) -> float:
    """``‖μ‖² / (‖μ‖² + mean_i ‖x_i − μ‖²)``; 1 for zero spread (the mean is all there is)."""
    if spread_sq <= 0:
        return 1.0
    return mean_sq_norm / (mean_sq_norm + spread_sq)


def _cum_at(evr: torch.Tensor, ks: Sequence[int]) -> list[float]:
    cum = torch.cumsum(evr, 0)
    return [float(cum[k - 1]) for k in ks]


def _ref_k(ks: Sequence[int], k_ref: int) -> int | None:
    below = [k for k in ks if k <= k_ref]
    return max(below) if below else (min(ks) if ks else None)


def _band(rows: list[list[float]]) -> tuple[list[float], list[float], list[float]]:
    """Mean, min and max over draws (rows) of per-k values, ignoring NaN (NaN where a column is all NaN)."""
    if not rows:
        return [], [], []
    t = torch.tensor(rows, dtype=torch.float64)  # (n_draws, n_k)
    bad = torch.isnan(t)
    empty = bad.all(dim=0)
    lo = torch.where(bad, torch.full_like(t, math.inf), t).amin(0)
    hi = torch.where(bad, torch.full_like(t, -math.inf), t).amax(0)
    nan = torch.full_like(lo, math.nan)
    return nanmean(t, 0).tolist(), torch.where(empty, nan, lo).tolist(), torch.where(empty, nan, hi).tolist()


def _null_stats(
    grams: list[torch.Tensor], dof: int, plan: Plan, spec_ks: list[int], loo_ks: list[int], stab_ks: list[int]
) -> dict[str, Any]:
    """Spectrum, held-out EVR and stability statistics of null Gram draws (mean and min/max band)."""
    n = grams[0].shape[0]
    spectra, cums, k_fr, held, over = [], [], [], [], []
    for g in grams:
        evr = spectrum_evr(g)  # (n,)
        sv = (evr * float(g.trace().clamp_min(0))).sqrt()
        tol = zero_tolerance(sv, n, dof, float(g.trace().clamp_min(0)) ** 0.5)
        spectra.append(evr[: max(n - 1, 1)].tolist())
        cums.append(_cum_at(evr, spec_ks))
        k_fr.append([k_for_fraction(sv, f) for f in FRACTIONS])
        if loo_ks:
            held.append(heldout_evr_from_gram(g, plan.folds, loo_ks, tol=tol).tolist())
        if stab_ks:
            over.append(subspace_overlap(g, *plan.split, stab_ks, tol=tol).tolist())
    spec_mean, spec_lo, spec_hi = _band(spectra)
    evr_mean, evr_lo, evr_hi = _band(cums)
    held_mean, _, held_hi = _band(held)
    over_mean, _, over_hi = _band(over)
    kf = torch.tensor(k_fr, dtype=torch.float64)  # (n_draws, 3)
    return {
        "spectrum": {"evr": spec_mean, "evr_lo": spec_lo, "evr_hi": spec_hi},
        "evr": evr_mean,
        "evr_lo": evr_lo,
        "evr_hi": evr_hi,
        "k50": int(kf[:, 0].median()),
        "k90": int(kf[:, 1].median()),
        "k99": int(kf[:, 2].median()),
        "k90_range": [int(kf[:, 1].min()), int(kf[:, 1].max())],
        "heldout_evr": held_mean,
        "heldout_evr_hi": held_hi,
        "overlap": over_mean,
        "overlap_hi": over_hi,
        "n_draws": len(grams),
    }


def _lora_ranks(stack: UnitStack) -> list[int] | None:
    if not stack.spec.lora or not stack.all_factored():
        return None
    ranks = []
    for m in stack.members:
        fac = m.factors()  # cached on the member by the Gram pass: no extra read
        if fac is None:
            return None
        ranks.append(int(fac[0].shape[1]))
    return ranks


def analyze_pca_unit(
    stack: UnitStack,
    plan: Plan,
    *,
    generator: torch.Generator,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    tick: Tick | None = None,
) -> dict[str, Any]:
    """All evidence for one unit under model-axis PCA (one data pass; the rest is N × N algebra).

    Parameters
    ----------
    stack : UnitStack
        N members.
    plan : Plan
        Shared ks, folds, split, null draws and thresholds.
    generator : torch.Generator
        This unit's source of null draws.
    chunk_bytes : int
        Budget of one streamed float64 chunk across all members.
    tick : callable, optional
        Called after each chunk.

    Returns
    -------
    dict
        The unit's record (see :mod:`weightspace.report` for the keys), floats possibly NaN.
    """
    # n_components=1 keeps k at 1, so the Gram route never needs its ill-conditioning fallback (a second pass).
    sp = pca_spectrum(stack, 1, center=True, chunk_bytes=chunk_bytes, tick=tick, device=plan.device)
    with single_thread():
        return _from_spectrum(stack, sp, plan, generator)


def _from_spectrum(stack: UnitStack, sp: PCASpectrum, plan: Plan, generator: torch.Generator) -> dict[str, Any]:
    """Everything after the data pass: N × N algebra on the Gram of :func:`pca_spectrum`."""
    n, d = stack.n, stack.spec.numel
    gram, cross, q = sp.gram.gram, sp.gram.mean_cross, sp.gram.mean_sq_norm
    sv = sp.singular_values  # (n,), zero-thresholded
    tol = zero_tolerance(sv, n, d, sp.raw_sq_norm**0.5)
    evr = explained_variance_ratio(sv)  # (n,)
    total = float((sv**2).sum())
    zero_spread = total <= 0.0
    spread = total / n
    t = plan.thresholds

    loo_ks = capped(plan.ks, plan.n_train_min - 1)
    stab_ks = capped(plan.ks, min(int(plan.split[0].numel()), int(plan.split[1].numel())) - 1)
    k_ref = _ref_k(loo_ks, t.k_ref) or min(t.k_ref, max(n - 1, 1))
    spec_ks = sorted(set(capped(plan.ks, n - 1)) | {k_ref})  # k_ref too, so every headline number is measured

    held = heldout_from_gram(gram, cross, q, plan.folds, loo_ks, tol=tol)
    held_evr = held.heldout_evr.tolist()
    overlap = subspace_overlap(gram, *plan.split, stab_ks, tol=tol).tolist() if stab_ks else []

    # Matched null: per-model centered norms ‖x_i − μ‖ (the spread), see _nulls.
    norms = gram.diagonal().clamp_min(0).sqrt()
    nulls: dict[str, Any] | None = None
    lora: dict[str, Any] | None = None
    if not zero_spread:
        if plan.null_grams is not None:
            grams = list(plan.null_grams[stack.spec.name])
        else:
            grams = [gaussian_null_gram(norms, d, generator=generator) for _ in range(plan.n_null)]
        nulls = _null_stats(grams, d, plan, spec_ks, loo_ks, stab_ks)
        ranks = _lora_ranks(stack)
        if ranks is not None:
            rows, cols = stack.spec.rows, stack.spec.cols
            lgrams = [lora_null_gram(norms, ranks, rows, cols, generator=generator) for _ in range(plan.n_null)]
            if any(g is None for g in lgrams):
                lora = {"ranks": ranks, "skipped": "sum of LoRA ranks too large for the R × R null (memory)"}
            else:
                lora = {"ranks": ranks, **_null_stats(lgrams, d, plan, spec_ks, loo_ks, stab_ks)}  # type: ignore[arg-type]

    nan = float("nan")
    null_evr_hi = list(nulls["evr_hi"]) if nulls else [nan] * len(spec_ks)
    null_held_hi = list(nulls["heldout_evr_hi"]) if nulls else [nan] * len(loo_ks)
    if lora is not None and "evr_hi" in lora:
        # For LoRA units both nulls must be beaten: take the higher band at every k.
        null_evr_hi = [max(a, b) for a, b in zip(null_evr_hi, lora["evr_hi"], strict=True)]
        null_held_hi = [max(a, b) for a, b in zip(null_held_hi, lora["heldout_evr_hi"], strict=True)]
    data_cum = _cum_at(evr, spec_ks)
    excess_terms = [
        (e - h, k) for k, e, h in zip(spec_ks, data_cum, null_evr_hi, strict=True) if k <= t.k_ref and k < n - 1
    ]
    spectrum_excess, excess_k = max(excess_terms) if excess_terms and nulls else (None, None)
    i_ref = loo_ks.index(k_ref) if k_ref in loo_ks else None
    mean_only = float(nanmean(held.mean_only)) if n else nan
    mef = mean_energy(q, spread)
    verdict, reasons = decide_verdict(
        heldout_evr=held_evr[i_ref] if i_ref is not None else None,
        null_heldout_evr_hi=null_held_hi[i_ref] if i_ref is not None else None,
        spectrum_excess=spectrum_excess,
        mean_energy_fraction=mef,
        mean_only=mean_only,
        thresholds=t,
        zero_spread=zero_spread,
        k_ref=k_ref,
    )
    mp_edge = mp_edge_evr(n, d)
    full_evr = evr[: max(n - 1, 1)]
    return {
        "method": PCAUnit.method,
        "solver": sp.solver,
        "n_models": n,
        "n_features": d,
        "ks": spec_ks,
        "evr": data_cum,
        "null_evr": nulls["evr"] if nulls else [nan] * len(spec_ks),
        "null_evr_lo": nulls["evr_lo"] if nulls else [nan] * len(spec_ks),
        "null_evr_hi": nulls["evr_hi"] if nulls else [nan] * len(spec_ks),
        "k50": k_for_fraction(sv, 0.5),
        "k90": k_for_fraction(sv, 0.9),
        "k99": k_for_fraction(sv, 0.99),
        "null_k50": nulls["k50"] if nulls else None,
        "null_k90": nulls["k90"] if nulls else None,
        "null_k99": nulls["k99"] if nulls else None,
        "null_k90_range": nulls["k90_range"] if nulls else None,
        "spectrum": {
            "evr": full_evr.tolist(),
            "singular_values": sv[: max(n - 1, 1)].tolist(),
            "null_evr": nulls["spectrum"]["evr"] if nulls else [],
            "null_evr_lo": nulls["spectrum"]["evr_lo"] if nulls else [],
            "null_evr_hi": nulls["spectrum"]["evr_hi"] if nulls else [],
        },
        "mp": {
            "edge_evr": mp_edge,
            "top_evr": float(evr[0]) if n else nan,
            "n_above_edge": int((full_evr > mp_edge).sum()) if not zero_spread else 0,
        },
        "lora_null": lora,
        "mean_energy_fraction": mef,
        "mean_sq_norm": q,
        "spread_sq_norm": spread,
        "k_ref": k_ref,
        "loo": {
            "scheme": plan.scheme,
            "n_folds": len(plan.folds),
            "k": loo_ks,
            "mean_only": mean_only,
            "basis_only": nanmean(held.basis_only, 0).tolist() if loo_ks else [],
            "mean_plus_basis": nanmean(held.mean_plus_basis, 0).tolist() if loo_ks else [],
            "heldout_evr": held_evr,
            "null_heldout_evr": nulls["heldout_evr"] if nulls else [nan] * len(loo_ks),
            "null_heldout_evr_hi": null_held_hi,
            "per_model_mean_only": held.mean_only.tolist(),
            "per_model_mean_plus_basis_at_k_ref": (
                held.mean_plus_basis[:, i_ref].tolist() if i_ref is not None else []
            ),
        },
        "stability": {
            "k": stab_ks,
            "overlap": overlap,
            "null_overlap": nulls["overlap"] if nulls else [nan] * len(stab_ks),
            "null_overlap_hi": nulls["overlap_hi"] if nulls else [nan] * len(stab_ks),
            "half_sizes": [int(plan.split[0].numel()), int(plan.split[1].numel())],
        },
        "spectrum_excess": spectrum_excess,
        "spectrum_excess_k": excess_k,
        "spectrum_exceeds_null": bool(spectrum_excess is not None and spectrum_excess >= t.spectrum_margin),
        "zero_spread": zero_spread,
        "verdict": verdict,
        "reasons": reasons,
    }
