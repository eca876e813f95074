"""Rank selection: how many components a unit keeps, and what counts as zero.

``n_components`` is an int (a count, capped by the numerical rank) or a float in (0, 1): the smallest k whose
components hold at least that fraction of the *centered* variance. Explained-variance ratios are always taken
against the full spectrum, never a truncated one.

A singular value counts as zero when ``σ ≤ max(N, D) · eps · max(σ_1, ‖X‖_F)``: the float64 resolution of the
data, so that N identical models have rank 0 and rounding noise is not mistaken for structure.

Examples
--------
>>> import torch
>>> s = torch.tensor([3.0, 2.0, 1.0, 0.0], dtype=torch.float64)
>>> choose_rank(s, 0.9), choose_rank(s, 2), choose_rank(s, 10)
(2, 2, 3)
>>> [round(v, 4) for v in explained_variance_ratio(s).tolist()]
[0.6429, 0.2857, 0.0714, 0.0]
"""

from __future__ import annotations

import torch

__all__ = [
    "choose_rank",
    "explained_variance_ratio",
    "k_for_fraction",
    "numerical_rank",
    "sign_fix",
    "sign_flips",
    "zero_tolerance",
]

_EPS = float(torch.finfo(torch.float64).eps)


def zero_tolerance(singular_values: torch.Tensor, n_models: int, n_features: int, data_norm: float = 0.0) -> float:
    """Largest singular value that still counts as zero."""
    top = float(singular_values.max()) if singular_values.numel() else 0.0
    return max(n_models, n_features) * _EPS * max(top, data_norm)


def numerical_rank(singular_values: torch.Tensor, tol: float) -> int:
    """Number of singular values above ``tol``."""
    return int((singular_values > tol).sum())


def explained_variance_ratio(singular_values: torch.Tensor) -> torch.Tensor:
    """``σ_j² / Σ σ²`` over the full spectrum (zeros when the total is zero)."""
    var = singular_values.to(torch.float64) ** 2
    total = float(var.sum())
    return var / total if total > 0 else torch.zeros_like(var)


def k_for_fraction(singular_values: torch.Tensor, fraction: float) -> int:
    """Smallest k whose cumulative explained variance reaches ``fraction`` (0 for an all-zero spectrum)."""
    evr = explained_variance_ratio(singular_values)
    if float(evr.sum()) == 0.0:
        return 0
    cum = torch.cumsum(evr, 0)
    # A tiny slack keeps k from jumping a component because of the last rounding bit of the cumulative sum.
    hit = torch.nonzero(cum >= fraction - 1e-12)
    return int(hit[0]) + 1 if hit.numel() else int(evr.numel())


def choose_rank(singular_values: torch.Tensor, n_components: int | float, tol: float = 0.0) -> int:
    """k for a spectrum sorted in decreasing order.

    Parameters
    ----------
    singular_values : Tensor of shape (m,)
        Decreasing, non-negative.
    n_components : int or float
        An int count (capped at the numerical rank) or a float variance fraction in (0, 1).
    tol : float
        Values ≤ tol count as zero.
    """
    rank = numerical_rank(singular_values, tol)
    if isinstance(n_components, float):
        return min(k_for_fraction(singular_values, float(n_components)), rank)
    return min(int(n_components), rank)


def sign_flips(vectors: torch.Tensor) -> torch.Tensor:
    """Signs (k,) that make each column's largest-magnitude entry positive.

    Parameters
    ----------
    vectors : Tensor of shape (m, k)
    """
    if vectors.numel() == 0:
        return torch.ones(vectors.shape[1], dtype=vectors.dtype)
    idx = vectors.abs().argmax(dim=0)  # (k,)
    signs = torch.sign(vectors[idx, torch.arange(vectors.shape[1])])
    signs[signs == 0] = 1.0
    return signs


def sign_fix(vectors: torch.Tensor) -> torch.Tensor:
    """Flip columns so that each column's largest-magnitude entry is positive (deterministic signs).

    Parameters
    ----------
    vectors : Tensor of shape (m, k)

    Returns
    -------
    Tensor of shape (m, k)
    """
    return vectors * sign_flips(vectors)
