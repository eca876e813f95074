"""Bootstrap intervals over models (and over null draws) for every number a verdict uses.

The resampling is the Bayesian bootstrap (Rubin, 1981): each resample gives every model a random weight
``w_i = N E_i / Σ E`` with ``E_i ~ Exp(1)`` (Dirichlet(1, …, 1) · N), instead of drawing models with
replacement. The classical bootstrap would repeat about a third of the models in each resample, and a stack with
repeated rows has fewer dimensions: its top-k EVR is inflated for the data and the null alike, and by different
amounts. Weights keep all N models in every resample, so the spectrum of a resample has the dimension of the
data. Every statistic of a resample is computed from the N × N Gram entries already measured (no data pass):

* the weighted, weight-centered Gram ``D (G − 1 vᵀG − G v 1ᵀ + vᵀGv 1 1ᵀ) D`` with ``v = w / N`` and
  ``D = diag(√w)`` (centering by any common vector, as ``G`` is, is removed by the re-centering);
* **spectrum excess** at k: ``EVR_k`` of the weighted data Gram minus that of a null draw weighted alike;
* **held-out gap** at k: ``1 − Σ w_h ‖r_h^{mean+basis}‖² / Σ w_h ‖r_h^{mean-only}‖²`` (the fits stay those of the
  folds) minus the same for a null draw's residuals under the same weights;
* **mean energy fraction** with the weighted mean ``μ_w = μ + Σ v_i y_i`` and weighted spread;
* **held-out mean-only error**: the weighted mean of the per-model errors.

Each resample is paired with one null draw of the pool (in turn), weighted with the same ``w``, so data and null
are compared like with like (null-draw variability enters every interval). Intervals are normal bootstrap
intervals at 90 % (``point ± 1.645 sd``, see :func:`interval`); a verdict needs the whole interval on one side of
its threshold (see :func:`~weightspace.analyze._verdict.decide_verdict`).

References
----------
Rubin, "The Bayesian bootstrap", Ann. Statist. 9 (1981).

Examples
--------
>>> g = torch.Generator().manual_seed(0)
>>> w = bootstrap_weights(5, 3, generator=g)
>>> tuple(w.shape), [round(float(v), 6) for v in w.mean(dim=1)]
((3, 5), [1.0, 1.0, 1.0])
>>> interval(torch.tensor([0.1, 0.2, 0.3, 0.4]), point=0.25)["point"]
0.25
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = [
    "LEVEL",
    "N_BOOT",
    "bootstrap_weights",
    "heldout_gap_samples",
    "interval",
    "mean_energy_samples",
    "mean_samples",
    "resampled_cum_evr",
    "spectrum_excess_samples",
]

N_BOOT = 200
LEVEL = 0.90  # two-sided 90 %: each side of a threshold is decided at 95 %
_CHUNK_ENTRIES = 1 << 22  # resampled Gram entries held at once (float64: 32 MiB)


def bootstrap_weights(n: int, n_boot: int, *, generator: torch.Generator) -> torch.Tensor:
    """``n_boot`` Bayesian-bootstrap weight vectors: Tensor of shape (n_boot, n), float64, each with mean 1."""
    e = -torch.log1p(-torch.rand(n_boot, n, generator=generator, dtype=torch.float64))  # Exp(1)
    return e / e.mean(dim=1, keepdim=True)


def interval(samples: torch.Tensor, *, point: float, level: float = LEVEL) -> dict[str, Any]:
    """Normal bootstrap interval ``point ± z · sd(samples)`` (non-finite samples dropped).

    The interval is centered on the statistic measured on the data, and its width is the spread of the
    resampled statistic. Percentile intervals would inherit the resampling's bias: reweighting makes any stack
    (a null's too) less isotropic, which moves spectral statistics such as the top-k EVR of noise; their
    location is therefore not used, only their spread. The percentile interval and the resampling bias are
    reported beside it.

    Returns
    -------
    dict
        ``point``, ``lo``, ``hi`` (``point ∓ z sd`` with ``z`` the normal quantile of ``(1 + level) / 2``),
        ``se`` (the sd), ``level``, ``n_boot`` (finite samples), ``bias`` (mean of the samples minus ``point``),
        ``percentile`` (``[(1 − level)/2, (1 + level)/2]`` quantiles). NaN where no sample is finite.
    """
    s = samples[torch.isfinite(samples)].to(torch.float64)
    nan = math.nan
    if s.numel() < 2 or not math.isfinite(point):
        return {
            "point": float(point),
            "lo": nan,
            "hi": nan,
            "se": nan,
            "level": level,
            "n_boot": int(s.numel()),
            "bias": nan,
            "percentile": [nan, nan],
        }
    z = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor((1 + level) / 2, dtype=torch.float64)))
    se = float(s.std())
    q = torch.quantile(s, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return {
        "point": float(point),
        "lo": float(point) - z * se,
        "hi": float(point) + z * se,
        "se": se,
        "level": level,
        "n_boot": int(s.numel()),
        "bias": float(s.mean()) - float(point),
        "percentile": [float(q[0]), float(q[1])],
    }


def _weighted(grams: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Weighted, weight-centered Grams ``D C G Cᵀ D`` for grams (b, n, n) or (n, n) and weights w (b, n)."""
    v = w / w.shape[1]  # (b, n), rows sum to 1
    gv = grams @ v[:, :, None] if grams.dim() == 3 else (grams @ v.T).T[:, :, None]  # (b, n, 1): G v
    vgv = (v[:, :, None] * gv).sum(dim=(1, 2))  # (b,)
    c = grams - gv - gv.transpose(1, 2) + vgv[:, None, None]
    root = w.sqrt()
    c = c * root[:, :, None] * root[:, None, :]
    return (c + c.transpose(1, 2)) / 2


def _cum(evals: torch.Tensor) -> torch.Tensor:
    evals = evals.flip(-1).clamp_min(0)  # decreasing
    total = evals.sum(dim=-1, keepdim=True)
    return torch.cumsum(evals, dim=-1) / torch.where(total > 0, total, torch.full_like(total, math.nan))


def resampled_cum_evr(gram: torch.Tensor, w: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """Cumulative EVR at ``ks`` of each weighted resample: Tensor of shape (n_boot, len(ks)).

    Parameters
    ----------
    gram : Tensor of shape (n, n)
        Gram of the models centered by any common vector.
    w : Tensor of shape (n_boot, n)
        Resample weights (:func:`bootstrap_weights`).
    ks : sequence of int
        Components (each ≤ n − 1).
    """
    pick = torch.tensor([int(k) - 1 for k in ks], dtype=torch.long)
    out = [_cum(torch.linalg.eigvalsh(_weighted(gram, part)))[:, pick] for part in _chunks(w)]
    return torch.cat(out)


def _chunks(w: torch.Tensor) -> list[torch.Tensor]:
    step = max(1, _CHUNK_ENTRIES // max(1, w.shape[1] ** 2))
    return list(torch.split(w, step))


def spectrum_excess_samples(
    gram: torch.Tensor, null_grams: Sequence[torch.Tensor], w: torch.Tensor, k: int
) -> torch.Tensor:
    """``EVR_k`` of each weighted data resample minus that of a null draw weighted alike: (n_boot,).

    Null draws are used in turn (resample b pairs with draw ``b mod len(null_grams)``).
    """
    data = resampled_cum_evr(gram, w, [k])[:, 0]
    pool = torch.stack(list(null_grams))  # (n_null, n, n)
    draw = torch.arange(w.shape[0]) % pool.shape[0]
    parts = _chunks(w)
    null = []
    for part, which in zip(parts, torch.split(draw, parts[0].shape[0]), strict=True):
        null.append(_cum(torch.linalg.eigvalsh(_weighted(pool[which], part)))[:, k - 1])
    return data - torch.cat(null)


def _pooled_evr(mo_sq: torch.Tensor, mb_sq: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``1 − Σ w mb² / Σ w mo²`` per resample (NaN when a resample has no mean-only residual)."""
    den = (w * mo_sq).sum(dim=-1)
    return 1.0 - (w * mb_sq).sum(dim=-1) / torch.where(den > 0, den, torch.full_like(den, math.nan))


def heldout_gap_samples(
    mo_sq: torch.Tensor,
    mb_sq: torch.Tensor,
    null_mo_sq: Sequence[torch.Tensor],
    null_mb_sq: Sequence[torch.Tensor],
    w: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out EVR of each resample, and its gap over a null draw weighted alike.

    Parameters
    ----------
    mo_sq, mb_sq : Tensor of shape (n,)
        Per-model squared held-out residuals (mean-only; mean + basis at the tested k).
    null_mo_sq, null_mb_sq : sequence of Tensor of shape (n,)
        The same for each null draw of the pool.
    w : Tensor of shape (n_boot, n)

    Returns
    -------
    evr : Tensor of shape (n_boot,)
    gap : Tensor of shape (n_boot,)
        ``evr`` minus the null draw's held-out EVR under the same weights (draws used in turn).
    """
    evr = _pooled_evr(mo_sq, mb_sq, w)
    pool_mo, pool_mb = torch.stack(list(null_mo_sq)), torch.stack(list(null_mb_sq))  # (n_null, n)
    draw = torch.arange(w.shape[0]) % pool_mo.shape[0]
    return evr, evr - _pooled_evr(pool_mo[draw], pool_mb[draw], w)


def mean_energy_samples(
    gram: torch.Tensor, mean_cross: torch.Tensor, mean_sq_norm: float, w: torch.Tensor
) -> torch.Tensor:
    """Mean energy fraction of each weighted resample from ``G = Y Yᵀ``, ``m = Y μ``, ``q = ‖μ‖²``: (n_boot,).

    With ``v = w / N``: ``‖μ_w‖² = q + 2 vᵀm + vᵀGv`` and the spread is ``Σ_i v_i ‖y_i − Σ_j v_j y_j‖²``.
    """
    v = w / w.shape[1]  # (B, n)
    gv = v @ gram  # (B, n): (G v)ᵀ
    vgv = (gv * v).sum(dim=1)
    mu_sq = (mean_sq_norm + 2.0 * (v @ mean_cross) + vgv).clamp_min(0)
    spread = ((gram.diagonal()[None, :] - 2.0 * gv + vgv[:, None]) * v).sum(dim=1).clamp_min(0)
    return torch.where(spread > 0, mu_sq / (mu_sq + spread), torch.ones_like(mu_sq))


def mean_samples(values: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Weighted mean of ``values`` per resample, ignoring NaN entries: (n_boot,)."""
    ok = torch.isfinite(values)
    v = torch.where(ok, values, torch.zeros_like(values))
    ww = w * ok
    den = ww.sum(dim=1)
    return torch.where(den > 0, (ww * v).sum(dim=1) / den.clamp_min(1e-300), torch.full_like(den, math.nan))
