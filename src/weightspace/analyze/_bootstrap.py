"""Bootstrap intervals over models (and over null draws) for every number a verdict uses.

One resample draws N of the N models with replacement; every statistic of that resample is computed from the
N × N Gram entries already measured (no data pass): a resampled set ``S`` (with repeats) has the centered Gram
``J G[S, S] J``, since re-centering removes any common offset. Each resample is paired with one null draw from
the pool (drawn in turn), resampled with the *same* indices, so a duplicated model is duplicated in the null
too and data and null are compared like with like:

* **spectrum excess** at k: ``EVR_k(J G[S,S] J) − EVR_k(J N_d[S,S] J)``;
* **held-out gap** at k: ``heldout_EVR_k(S) − heldout_EVR_k^null(S)``, where
  ``heldout_EVR_k(S) = 1 − Σ_{h∈S} ‖r_h^{mean+basis}‖² / Σ_{h∈S} ‖r_h^{mean-only}‖²`` resamples the per-model
  held-out residuals (the fits stay those of the folds);
* **mean energy fraction** ``‖μ_S‖² / (‖μ_S‖² + mean_{i∈S} ‖x_i − μ_S‖²)`` from ``G``, ``m = Y μ`` and ``q = ‖μ‖²``;
* **held-out mean-only error**: the mean of the per-model errors over ``S``.

Intervals are percentile intervals (default 5 %–95 %, the band the null plots use); a verdict needs the whole
interval on one side of its threshold (see :func:`~weightspace.analyze._verdict.decide_verdict`).

Examples
--------
>>> g = torch.Generator().manual_seed(0)
>>> idx = bootstrap_indices(5, 3, generator=g)
>>> tuple(idx.shape), bool((idx >= 0).all() and (idx < 5).all())
((3, 5), True)
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
    "bootstrap_indices",
    "heldout_gap_samples",
    "interval",
    "mean_energy_samples",
    "mean_samples",
    "resampled_cum_evr",
    "spectrum_excess_samples",
]

N_BOOT = 200
LEVEL = 0.90  # two-sided: the 5th and 95th percentiles
_CHUNK_ENTRIES = 1 << 22  # resampled Gram entries held at once (float64: 32 MiB)


def bootstrap_indices(n: int, n_boot: int, *, generator: torch.Generator) -> torch.Tensor:
    """``n_boot`` resamples of ``range(n)`` with replacement: Tensor of shape (n_boot, n), int64."""
    return torch.randint(0, n, (n_boot, n), generator=generator)


def interval(samples: torch.Tensor, *, point: float, level: float = LEVEL) -> dict[str, Any]:
    """Percentile interval of bootstrap ``samples`` around a ``point`` estimate (NaN samples are dropped).

    Returns
    -------
    dict
        ``point``, ``lo``, ``hi`` (the ``(1 − level)/2`` and ``(1 + level)/2`` quantiles), ``level``, ``n_boot``
        (finite samples used). ``lo``/``hi`` are NaN when no sample is finite.
    """
    s = samples[torch.isfinite(samples)].to(torch.float64)
    if s.numel() == 0:
        lo = hi = math.nan
    else:
        q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
        lo, hi = (float(v) for v in torch.quantile(s, q))
    return {"point": float(point), "lo": lo, "hi": hi, "level": level, "n_boot": int(s.numel())}


def _recenter(grams: torch.Tensor) -> torch.Tensor:
    """``J G J`` for a batch of Grams (B, s, s): subtract row and column means, add back the grand mean."""
    row = grams.mean(dim=2, keepdim=True)
    c = grams - row - row.transpose(1, 2) + grams.mean(dim=(1, 2), keepdim=True)
    return (c + c.transpose(1, 2)) / 2


def resampled_cum_evr(gram: torch.Tensor, idx: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """Cumulative EVR at ``ks`` of each resample: Tensor of shape (n_boot, len(ks)) (NaN for zero spread).

    Parameters
    ----------
    gram : Tensor of shape (n, n)
        Gram of the models centered by any common vector.
    idx : Tensor of shape (n_boot, n)
        Resamples (:func:`bootstrap_indices`).
    ks : sequence of int
        Components (each ≤ n − 1).
    """
    pick = torch.tensor([int(k) - 1 for k in ks], dtype=torch.long)
    out = []
    for part in _chunks(idx):
        sub = gram[part[:, :, None], part[:, None, :]]  # (b, n, n)
        evals = torch.linalg.eigvalsh(_recenter(sub)).flip(-1).clamp_min(0)  # (b, n), decreasing
        total = evals.sum(dim=1, keepdim=True)
        cum = torch.cumsum(evals, dim=1) / torch.where(total > 0, total, torch.full_like(total, math.nan))
        out.append(cum[:, pick])
    return torch.cat(out)


def _chunks(idx: torch.Tensor) -> list[torch.Tensor]:
    step = max(1, _CHUNK_ENTRIES // max(1, idx.shape[1] ** 2))
    return list(torch.split(idx, step))


def spectrum_excess_samples(
    gram: torch.Tensor, null_grams: Sequence[torch.Tensor], idx: torch.Tensor, k: int
) -> torch.Tensor:
    """``EVR_k`` of each data resample minus that of a null draw resampled with the same indices: (n_boot,).

    Null draws are used in turn (resample b pairs with draw ``b mod len(null_grams)``).
    """
    data = resampled_cum_evr(gram, idx, [k])[:, 0]
    pool = torch.stack(list(null_grams))  # (n_null, n, n)
    draw = torch.arange(idx.shape[0]) % pool.shape[0]
    null = []
    for part, which in zip(_chunks(idx), torch.split(draw, _chunks(idx)[0].shape[0]), strict=True):
        sub = pool[which[:, None, None], part[:, :, None], part[:, None, :]]  # (b, n, n)
        evals = torch.linalg.eigvalsh(_recenter(sub)).flip(-1).clamp_min(0)
        total = evals.sum(dim=1)
        null.append(evals[:, :k].sum(dim=1) / torch.where(total > 0, total, torch.full_like(total, math.nan)))
    return data - torch.cat(null)


def _pooled_evr(mo_sq: torch.Tensor, mb_sq: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``1 − Σ_S mb² / Σ_S mo²`` per resample (NaN when a resample has no mean-only residual)."""
    den = mo_sq[idx].sum(dim=1)
    return 1.0 - mb_sq[idx].sum(dim=1) / torch.where(den > 0, den, torch.full_like(den, math.nan))


def heldout_gap_samples(
    mo_sq: torch.Tensor,
    mb_sq: torch.Tensor,
    null_mo_sq: Sequence[torch.Tensor],
    null_mb_sq: Sequence[torch.Tensor],
    idx: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out EVR of each resample, and its gap over a null draw resampled with the same indices.

    Parameters
    ----------
    mo_sq, mb_sq : Tensor of shape (n,)
        Per-model squared held-out residuals (mean-only; mean + basis at the tested k).
    null_mo_sq, null_mb_sq : sequence of Tensor of shape (n,)
        The same for each null draw of the pool.
    idx : Tensor of shape (n_boot, n)

    Returns
    -------
    evr : Tensor of shape (n_boot,)
    gap : Tensor of shape (n_boot,)
        ``evr`` minus the null draw's held-out EVR on the same resample (draws used in turn).
    """
    evr = _pooled_evr(mo_sq, mb_sq, idx)
    pool_mo, pool_mb = torch.stack(list(null_mo_sq)), torch.stack(list(null_mb_sq))  # (n_null, n)
    pick = torch.arange(idx.shape[0]) % pool_mo.shape[0]
    rows_mo, rows_mb = pool_mo[pick], pool_mb[pick]  # (B, n)
    den = torch.gather(rows_mo, 1, idx).sum(dim=1)
    null = 1.0 - torch.gather(rows_mb, 1, idx).sum(dim=1) / torch.where(
        den > 0, den, torch.full_like(den, math.nan)
    )
    return evr, evr - null


def mean_energy_samples(
    gram: torch.Tensor, mean_cross: torch.Tensor, mean_sq_norm: float, idx: torch.Tensor
) -> torch.Tensor:
    """Mean energy fraction of each resample from ``G = Y Yᵀ``, ``m = Y μ``, ``q = ‖μ‖²``: (n_boot,).

    With ``ȳ_S`` the resample's mean of the centered rows, ``μ_S = μ + ȳ_S``, so
    ``‖μ_S‖² = q + 2 mean(m_S) + mean(G_SS)`` and the spread is ``trace(J G_SS J) / n``.
    """
    out = []
    for part in _chunks(idx):
        sub = gram[part[:, :, None], part[:, None, :]]  # (b, n, n)
        cross = mean_cross[part].mean(dim=1)  # (b,)
        mu_sq = (mean_sq_norm + 2.0 * cross + sub.mean(dim=(1, 2))).clamp_min(0)
        spread = _recenter(sub).diagonal(dim1=1, dim2=2).sum(dim=1).clamp_min(0) / part.shape[1]
        out.append(torch.where(spread > 0, mu_sq / (mu_sq + spread), torch.ones_like(mu_sq)))
    return torch.cat(out)


def mean_samples(values: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Mean of ``values[S]`` per resample, ignoring NaN entries: (n_boot,)."""
    v = values[idx]  # (B, n)
    ok = torch.isfinite(v)
    count = ok.sum(dim=1)
    total = torch.where(ok, v, torch.zeros_like(v)).sum(dim=1)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, math.nan))
