"""Split-half stability: do two disjoint halves of the collection find the same top-k subspace?

The models are split at random (seeded) into halves A and B; each half is centered by its own mean and its
top-k PCA basis is taken. With ``V_A`` (k × D) and ``V_B`` orthonormal, the cosines of the principal angles
between the two subspaces are the singular values of ``V_A V_Bᵀ``, and the statistic is their mean square,

    ``overlap_k = ‖V_A V_Bᵀ‖_F² / k``  (1: the same subspace; about k/D for random subspaces of R^D).

Both bases are combinations of the centered rows (see :func:`~weightspace.analyze.fit_subset`), so
``V_A V_Bᵀ = W_Aᵀ G_AB W_B`` comes from Gram entries alone. Where a half has rank below k, the statistic uses
``k_a = min(k, rank_A)`` and ``k_b`` likewise and divides by ``min(k_a, k_b)`` (mean squared cosine of the
principal angles that exist); it is NaN where a half has rank 0.

Examples
--------
>>> g = torch.Generator().manual_seed(0)
>>> basis = torch.randn(3, 200, generator=g, dtype=torch.float64)
>>> x = torch.randn(12, 3, generator=g, dtype=torch.float64) @ basis  # exactly rank 3
>>> y = x - x.mean(0)
>>> a, b = split_halves(12, generator=g)
>>> [round(v, 6) for v in subspace_overlap(y @ y.T, a, b, [1, 3]).tolist()][-1]
1.0
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from weightspace.analyze._loo import _fit_batch

__all__ = ["split_halves", "subspace_overlap"]


def split_halves(n: int, *, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random split of ``range(n)`` into halves of sizes ``n // 2`` and ``n − n // 2``.

    Parameters
    ----------
    n : int
    generator : torch.Generator

    Returns
    -------
    a, b : Tensor of shape (n // 2,), (n - n // 2,), int64, each sorted
    """
    perm = torch.randperm(n, generator=generator)
    return perm[: n // 2].sort().values, perm[n // 2 :].sort().values


def subspace_overlap(
    gram: torch.Tensor, a: torch.Tensor, b: torch.Tensor, ks: Sequence[int], *, tol: float = 0.0
) -> torch.Tensor:
    """Mean squared cosine of the principal angles between the top-k subspaces of halves ``a`` and ``b``.

    Parameters
    ----------
    gram : Tensor of shape (n_models, n_models)
        Gram of the (commonly centered) rows.
    a, b : Tensor of int64
        Disjoint index sets.
    ks : sequence of int
    tol : float
        Singular values ``σ ≤ tol`` of a half count as zero.

    Returns
    -------
    Tensor of shape (len(ks),), float64 (NaN where a half has rank 0)
    """
    tol_sq = tol * tol
    w_a = _fit_batch(gram[a][:, a][None], tol_sq)[0]  # (n_a, n_a), zero columns past the rank
    w_b = _fit_batch(gram[b][:, b][None], tol_sq)[0]
    r_a, r_b = int((w_a.abs().sum(dim=0) > 0).sum()), int((w_b.abs().sum(dim=0) > 0).sum())
    cross = w_a[:, :r_a].T @ gram[a][:, b] @ w_b[:, :r_b]  # (r_a, r_b): ⟨v_j^A, v_l^B⟩
    out = torch.full((len(ks),), float("nan"), dtype=torch.float64)
    for i, k in enumerate(ks):
        ka, kb = min(int(k), r_a), min(int(k), r_b)
        if ka and kb:
            out[i] = float((cross[:ka, :kb] ** 2).sum()) / min(ka, kb)
    return out
