"""Evidence for one matrix unit under zero-centered HOSVD (Tucker on the weight axes, ``μ + U C_i Vᵀ``).

Data passes (accumulators ``O(rows² + cols² + rows·cols)``, on the plan's device):

1. **Halves.** The mode scatters ``Σ y yᵀ``, ``Σ yᵀ y`` and ``Σ y`` (``y = x − x_0``, a shift that keeps a
   dominant mean from cancelling) are accumulated separately over the two stability halves; each half's top
   mode-1/mode-2 subspaces give the split-half overlap, and their sum gives the full scatters, hence the
   mode spectra and the mean.
2. **Folds.** Each fold's own scatters are subtracted from the totals: the training scatters of that fold. Its
   ``U``, ``V`` come from two eigendecompositions; the held-out models are reconstructed as mean-only,
   basis-only (``U Uᵀ x V Vᵀ``) and mean + basis (``μ_S + U Uᵀ (x − μ_S) V Vᵀ``) with ``k1 = k2 = k``.

How often a model is read depends on ``plan.cache_bytes``: when the unit's members fit, once (they are kept);
when every fold's scatters fit, pass 1 adds each model's products to its fold as well, so the fold pass reads
only the held-out models (2 reads) and multiplies nothing for the fold scatters; otherwise each fold's scatters
are accumulated again (3 reads). Default folds: leave-one-out up to 10 models, else 10-fold.

Nulls. For N iid Gaussian rows × cols matrices the centered mode-1 scatter is Wishart((N − 1)·cols, I_rows)
(mode 2 likewise); the per-model norms are matched through Kish's effective count
``N_eff = (Σ s_i)² / Σ s_i²`` with ``s_i = ‖x_i − μ‖²`` (N_eff = N for equal norms), i.e. Wishart with
``(N_eff − 1)·cols`` degrees of freedom, drawn by Bartlett in ``O(rows³)``. The held-out null is the exact
isotropic expectation: a fixed ``k × k`` Tucker subspace captures ``k² / (rows·cols)`` of an independent isotropic
vector (and the training basis is independent of the held-out model). The stability null is likewise the
isotropic expectation ``k / dim`` for two independent random k-subspaces.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from weightspace.analyze._nulls import mp_edge, wishart_gram
from weightspace.analyze._pca_unit import FRACTIONS, Plan, _band, _cum_at, _ref_k, capped, mean_energy, nanmean
from weightspace.analyze._verdict import decide_verdict
from weightspace.backends import resolve_device, to_device
from weightspace.decompose import MemberReader, Tick, TuckerUnit
from weightspace.decompose.rank import explained_variance_ratio, k_for_fraction, zero_tolerance
from weightspace.units import UnitStack

__all__ = ["analyze_hosvd_unit"]


class _Scatter:
    """Running ``Σ y``, ``Σ y yᵀ``, ``Σ yᵀ y`` and count of shifted members ``y`` (rows × cols), on a device."""

    def __init__(self, rows: int, cols: int, device: torch.device) -> None:
        self.sum = torch.zeros(rows, cols, dtype=torch.float64, device=device)
        self.s1 = torch.zeros(rows, rows, dtype=torch.float64, device=device)
        self.s2 = torch.zeros(cols, cols, dtype=torch.float64, device=device)
        self.n = 0

    def add(self, y: torch.Tensor) -> None:
        self.sum += y
        self.s1.addmm_(y, y.T)
        self.s2.addmm_(y.T, y)
        self.n += 1

    def add_to(self, y: torch.Tensor, *others: _Scatter) -> None:
        """Add ``y`` here and to every scatter of ``others``, computing its two products once."""
        s1, s2 = y @ y.T, y.T @ y
        for o in (self, *others):
            o.sum += y
            o.s1 += s1
            o.s2 += s2
            o.n += 1

    def merge(self, other: _Scatter) -> None:
        self.sum += other.sum
        self.s1 += other.s1
        self.s2 += other.s2
        self.n += other.n

    def centered(self, minus: _Scatter | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """Centered mode scatters and shifted mean of these members (optionally less ``minus``'s members)."""
        total, s1, s2, n = self.sum, self.s1, self.s2, self.n
        if minus is not None:
            total, s1, s2, n = total - minus.sum, s1 - minus.s1, s2 - minus.s2, n - minus.n
        ybar = total / n  # (rows, cols)
        c1 = s1 - n * (ybar @ ybar.T)
        c2 = s2 - n * (ybar.T @ ybar)
        return (c1 + c1.T) / 2, (c2 + c2.T) / 2, ybar, n


def _eig_desc(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    evals, evecs = torch.linalg.eigh(s)
    order = torch.argsort(evals, descending=True, stable=True)
    return evals[order].clamp_min(0), evecs[:, order]


def _eigvals_desc(s: torch.Tensor) -> torch.Tensor:
    """Eigenvalues only (about half the cost of vectors too), decreasing, clamped at 0, on the host."""
    return torch.linalg.eigvalsh(s).cpu().flip(0).clamp_min(0)


def _basis(s: torch.Tensor, k: int, tol_sq: float) -> torch.Tensor:
    """Top-k eigenvectors of a scatter whose eigenvalue exceeds ``tol_sq``: shape (dim, ≤ k), on its device."""
    evals, evecs = _eig_desc(s)
    r = min(k, int((evals > tol_sq).sum()))
    return evecs[:, :r].contiguous()


def _captured(core: torch.Tensor, ks: Sequence[int]) -> list[float]:
    """``‖C[:k, :k]‖²`` for each k (cores are already truncated to the available ranks)."""
    return [float((core[:k, :k] ** 2).sum()) for k in ks]


def _overlap(a: torch.Tensor, b: torch.Tensor, ks: Sequence[int]) -> list[float]:
    out = []
    for k in ks:
        ka, kb = min(k, a.shape[1]), min(k, b.shape[1])
        out.append(float((a[:, :ka].T @ b[:, :kb]).pow(2).sum()) / min(ka, kb) if ka and kb else float("nan"))
    return out


def _mode_record(
    values_sq: torch.Tensor, dof: int, ks: list[int], plan: Plan, generator: torch.Generator
) -> dict[str, Any]:
    """Spectrum of one mode scatter beside its Wishart null (mean and min/max band over draws)."""
    dim = values_sq.numel()
    sv = values_sq.sqrt()
    evr = explained_variance_ratio(sv)
    spectra, cums, kfr = [], [], []
    for _ in range(plan.n_null):
        w = wishart_gram(dim, dof, generator=generator)  # (dim, dim) ~ Wishart(dof, I_dim)
        ev = torch.linalg.eigvalsh(w).flip(0).clamp_min(0)
        nevr = ev / ev.sum()
        spectra.append(nevr.tolist())
        cums.append(_cum_at(nevr, ks))
        kfr.append([k_for_fraction(ev.sqrt(), f) for f in FRACTIONS])
    spec_mean, spec_lo, spec_hi = _band(spectra)
    mean, lo, hi = _band(cums)
    kf = torch.tensor(kfr, dtype=torch.float64)  # (n_draws, 3)
    return {
        "dim": dim,
        "null_dof": dof,
        "ks": ks,
        "evr": _cum_at(evr, ks),
        "null_evr": mean,
        "null_evr_lo": lo,
        "null_evr_hi": hi,
        "k50": k_for_fraction(sv, 0.5),
        "k90": k_for_fraction(sv, 0.9),
        "k99": k_for_fraction(sv, 0.99),
        "null_k50": int(kf[:, 0].median()),
        "null_k90": int(kf[:, 1].median()),
        "null_k99": int(kf[:, 2].median()),
        "null_k90_range": [int(kf[:, 1].min()), int(kf[:, 1].max())],
        "spectrum": {"evr": evr.tolist(), "null_evr": spec_mean, "null_evr_lo": spec_lo, "null_evr_hi": spec_hi},
        "mp_edge_evr": mp_edge(dim, dof),
    }


def analyze_hosvd_unit(
    stack: UnitStack, plan: Plan, *, generator: torch.Generator, tick: Tick | None = None
) -> dict[str, Any]:
    """All evidence for one matrix unit under HOSVD of order 2 (three reads of every model).

    Parameters
    ----------
    stack : UnitStack
        N members of shape (rows, cols).
    plan : Plan
        Shared ks, folds, split, null draws and thresholds.
    generator : torch.Generator
        This unit's source of null draws.
    tick : callable, optional
        Called after each model read.

    Returns
    -------
    dict
        The unit's record; ``evr``/``null_evr``/``k90`` refer to mode 1, ``modes`` holds both modes.
    """
    spec, n = stack.spec, stack.n
    rows, cols = spec.rows, spec.cols
    t = plan.thresholds
    ks = capped(plan.ks, min(rows, cols))
    kmax = max(ks)
    dev = resolve_device(plan.device)
    # Members shifted by model 0 (y = x − x_0), each read once when the unit fits plan.cache_bytes (else 3 reads).
    reader = MemberReader(stack, cache_bytes=plan.cache_bytes, tick=tick)
    shift = reader[0].clone()  # (rows, cols)
    reader.set_shift(shift)
    shift_d = to_device(shift, dev)

    def read(i: int) -> torch.Tensor:
        return to_device(reader[i], dev)  # (rows, cols), float64, shifted

    # Pass 1: the two halves, then their sum. When every fold's scatter fits plan.cache_bytes too, each model's
    # products are computed once here and added to its half and to its fold (the fold pass then reads nothing
    # but the held-out models, and multiplies nothing for the fold scatters).
    per_scatter = (rows * rows + cols * cols + rows * cols) * 8
    fold_of = {i: f for f, held in enumerate(plan.folds) for i in held.tolist()}
    left = plan.cache_bytes - (n * rows * cols * 8 if reader.kept else 0)  # the kept members come first
    folds_kept = (len(plan.folds) + 2) * per_scatter <= left
    fold_acc: list[_Scatter | None] | None = (
        [_Scatter(rows, cols, dev) for _ in plan.folds] if folds_kept else None
    )
    halves = []
    for idx in plan.split:
        acc = _Scatter(rows, cols, dev)
        for i in idx.tolist():
            if fold_acc is None:
                acc.add(read(i))
            else:
                acc.add_to(read(i), fold_acc[fold_of[i]])  # type: ignore[arg-type]
        halves.append(acc)
    raw_sq = float(reader.sq_norms.sum())
    total = halves[0]
    half_scatters = [h.centered() if h.n else None for h in halves]
    total.merge(halves[1])
    del halves
    c1, c2, ybar, _ = total.centered()
    ev1 = _eigvals_desc(c1)
    ev2 = _eigvals_desc(c2)
    energy = float(c1.trace().clamp_min(0))
    del c1, c2
    mean = shift + ybar.cpu()  # (rows, cols)
    q = float((mean * mean).sum())
    data_norm = raw_sq**0.5
    tol1 = zero_tolerance(ev1.sqrt(), n, rows * cols, data_norm) ** 2
    tol2 = zero_tolerance(ev2.sqrt(), n, rows * cols, data_norm) ** 2
    zero_spread = energy <= 0.0 or float(ev1.max()) <= tol1

    overlap1: list[float] = []
    overlap2: list[float] = []
    if all(h is not None and h[3] > 1 for h in half_scatters):
        ua, ub = (_basis(h[0], kmax, tol1) for h in half_scatters)  # type: ignore[index]
        va, vb = (_basis(h[1], kmax, tol2) for h in half_scatters)  # type: ignore[index]
        overlap1, overlap2 = _overlap(ua, ub, ks), _overlap(va, vb, ks)
    del half_scatters

    # Passes 2–3: per fold, training scatters = totals − fold; then reconstruct the fold's models.
    mo_sq = torch.zeros(n, dtype=torch.float64)
    mb_sq = torch.zeros(n, len(ks), dtype=torch.float64)
    bo_sq = torch.zeros(n, len(ks), dtype=torch.float64)
    x_sq = torch.zeros(n, dtype=torch.float64)
    spread_i = torch.zeros(n, dtype=torch.float64)
    ybar_d = to_device(ybar, dev)
    for f, held in enumerate(plan.folds):
        kept_fold = fold_acc[f] if fold_acc is not None else None
        if kept_fold is not None:
            fold = kept_fold
        else:
            fold = _Scatter(rows, cols, dev)
            for i in held.tolist():
                fold.add(read(i))
        s1, s2, ybar_s, n_s = total.centered(minus=fold)
        del fold
        if fold_acc is not None:
            fold_acc[f] = None
        u = _basis(s1, kmax, tol1) if n_s > 1 else torch.zeros(rows, 0, dtype=torch.float64, device=dev)
        v = _basis(s2, kmax, tol2) if n_s > 1 else torch.zeros(cols, 0, dtype=torch.float64, device=dev)
        del s1, s2
        shift_core = u.T @ shift_d @ v  # Uᵀ x_0 V: x = y + x_0
        for i in held.tolist():
            y = read(i)
            z = y - ybar_s  # x − μ_S
            mo_sq[i] = float((z * z).sum())
            mb_sq[i] = (mo_sq[i] - torch.tensor(_captured(u.T @ z @ v, ks), dtype=torch.float64)).clamp_min(0)
            x_sq[i] = float(reader.sq_norms[i])
            core_x = u.T @ y @ v + shift_core  # Uᵀ x V
            bo_sq[i] = (x_sq[i] - torch.tensor(_captured(core_x, ks), dtype=torch.float64)).clamp_min(0)
            dev_i = y - ybar_d  # x − μ
            spread_i[i] = float((dev_i * dev_i).sum())
    reader.close()
    norm = x_sq.sqrt()
    safe = torch.where(norm > 0, norm, torch.full_like(norm, float("nan")))
    mean_only_i = mo_sq.sqrt() / safe
    mb_rel = mb_sq.sqrt() / safe[:, None]
    bo_rel = bo_sq.sqrt() / safe[:, None]
    total_mo = float(mo_sq.sum())
    held_evr = (1.0 - mb_sq.sum(0) / total_mo).tolist() if total_mo > 0 else [float("nan")] * len(ks)
    held_null = [min(k, rows) * min(k, cols) / (rows * cols) for k in ks]

    k_ref = _ref_k(ks, t.k_ref) or 1
    i_ref = ks.index(k_ref)
    s_sum, s_sq = float(spread_i.sum()), float((spread_i**2).sum())
    n_eff = s_sum**2 / s_sq if s_sq > 0 else float(n)
    modes: dict[str, Any] = {}
    for key, ev, dim, other in (("1", ev1, rows, cols), ("2", ev2, cols, rows)):
        dof = max(1, round((n_eff - 1.0) * other))
        modes[key] = _mode_record(ev, dof, sorted(set(capped(plan.ks, dim)) | {k_ref}), plan, generator)
        over = overlap1 if key == "1" else overlap2
        modes[key]["overlap"] = over
        modes[key]["null_overlap"] = [min(k, dim) / dim for k in ks] if over else []
    modes["n_eff"] = n_eff

    excess_terms = []
    for key in ("1", "2"):
        m = modes[key]
        excess_terms += [
            (e - h, k, key)
            for k, e, h in zip(m["ks"], m["evr"], m["null_evr_hi"], strict=True)
            if k <= t.k_ref and k < m["dim"]
        ]
    best = max(excess_terms) if excess_terms and not zero_spread else (None, None, None)
    spectrum_excess, excess_k, excess_mode = best
    mean_only = float(nanmean(mean_only_i))
    mef = mean_energy(q, energy / n)
    verdict, reasons = decide_verdict(
        heldout_evr=held_evr[i_ref],
        null_heldout_evr_hi=held_null[i_ref],
        spectrum_excess=spectrum_excess,
        mean_energy_fraction=mef,
        mean_only=mean_only,
        thresholds=t,
        zero_spread=zero_spread,
        k_ref=k_ref,
    )
    m1 = modes["1"]
    return {
        "method": TuckerUnit.method,
        "solver": "hosvd-scatter",
        "n_models": n,
        "n_features": rows * cols,
        "ks": m1["ks"],
        "evr": m1["evr"],
        "null_evr": m1["null_evr"],
        "null_evr_lo": m1["null_evr_lo"],
        "null_evr_hi": m1["null_evr_hi"],
        "k50": m1["k50"],
        "k90": m1["k90"],
        "k99": m1["k99"],
        "null_k50": m1["null_k50"],
        "null_k90": m1["null_k90"],
        "null_k99": m1["null_k99"],
        "null_k90_range": m1["null_k90_range"],
        "spectrum": m1["spectrum"],
        "mp": {
            "edge_evr": m1["mp_edge_evr"],
            "top_evr": m1["evr"][0] if m1["evr"] else float("nan"),
            "n_above_edge": int((torch.tensor(m1["spectrum"]["evr"]) > m1["mp_edge_evr"]).sum()),
        },
        "modes": modes,
        "lora_null": None,
        "mean_energy_fraction": mef,
        "mean_sq_norm": q,
        "spread_sq_norm": energy / n,
        "k_ref": k_ref,
        "loo": {
            "scheme": plan.scheme,
            "n_folds": len(plan.folds),
            "k": ks,
            "mean_only": mean_only,
            "basis_only": nanmean(bo_rel, 0).tolist(),
            "mean_plus_basis": nanmean(mb_rel, 0).tolist(),
            "heldout_evr": held_evr,
            "null_heldout_evr": held_null,
            "null_heldout_evr_hi": held_null,
            "null_kind": "analytic isotropic expectation k²/(rows·cols)",
            "per_model_mean_only": mean_only_i.tolist(),
            "per_model_mean_plus_basis_at_k_ref": mb_rel[:, i_ref].tolist(),
        },
        "stability": {
            "k": ks if overlap1 else [],
            "overlap": overlap1,
            "null_overlap": modes["1"]["null_overlap"],
            "null_overlap_hi": modes["1"]["null_overlap"],
            "overlap_mode2": overlap2,
            "null_overlap_mode2": modes["2"]["null_overlap"],
            "null_kind": "analytic isotropic expectation k/dim",
            "half_sizes": [int(plan.split[0].numel()), int(plan.split[1].numel())],
        },
        "spectrum_excess": spectrum_excess,
        "spectrum_excess_k": excess_k,
        "spectrum_excess_mode": excess_mode,
        "spectrum_exceeds_null": bool(spectrum_excess is not None and spectrum_excess >= t.spectrum_margin),
        "zero_spread": zero_spread,
        "verdict": verdict,
        "reasons": reasons,
    }
