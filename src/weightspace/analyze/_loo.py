"""Held-out evaluation (leave-one-out or K-fold) of model-axis PCA, in N × N algebra from one data pass.

With ``y_i = x_i − μ`` (μ: the mean of all N models) a single streamed pass gives ``G = Y Yᵀ`` (centered
Gram), ``m = Y μ`` and ``q = ‖μ‖²``: every inner product among the models and the mean. Every vector a fold
needs is a combination of the ``y_i`` and μ, so every norm and projection below is an expression in
``(G, m, q)`` and no basis is ever formed:

* the training set S (size s) has mean ``μ_S = μ + ȳ_S``; its centered Gram is ``J G_SS J`` (``J = I − 11ᵀ/s``)
  with eigenpairs ``(σ_j², u_j)``; its basis is ``v_j = Σ_{i∈S} w_ij y_i`` with ``w_j = J u_j / σ_j``;
* **mean-only** residual of a held-out h: ``z_h = x_h − μ_S = y_h − ȳ_S``, ``‖z_h‖² = G_hh − 2 Ḡ_hS + Ḡ_SS``;
* **mean + basis**: ``‖z_h‖² − Σ_{j≤k} ⟨v_j, z_h⟩²`` with ``⟨v_j, z_h⟩ = w_jᵀ (G_Sh − G_SS 1/s)``;
* **basis only** (the training basis, no mean): ``‖x_h‖² − Σ_{j≤k} ⟨v_j, x_h⟩²`` with
  ``⟨v_j, x_h⟩ = w_jᵀ (G_Sh + m_S)`` and ``‖x_h‖² = G_hh + 2 m_h + q``.

Errors are relative to ``‖x_h‖``. Cost per fold: one eigendecomposition of an s × s matrix. The pooled
**held-out EVR** ``1 − Σ_h ‖r_h^{mean+basis}‖² / Σ_h ‖r_h^{mean-only}‖²`` is the fraction of the held-out
models' deviation from the training mean that the training basis captures: the held-out analogue of EVR, and the
quantity compared with the null (for isotropic noise it is about k/D).

Examples
--------
>>> g = torch.Generator().manual_seed(0)
>>> x = torch.randn(6, 40, generator=g, dtype=torch.float64)
>>> mu = x.mean(0); y = x - mu
>>> res = heldout_from_gram(y @ y.T, y @ mu, float(mu @ mu), make_folds(6), [1, 2])
>>> tuple(res.mean_plus_basis.shape), bool((res.mean_plus_basis <= res.mean_only[:, None] + 1e-12).all())
((6, 2), True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from weightspace.errors import ParameterError

__all__ = ["HeldOut", "fit_subset", "fit_subsets", "heldout_evr_from_gram", "heldout_from_gram", "make_folds"]


def make_folds(
    n: int, n_folds: int | None = None, *, generator: torch.Generator | None = None
) -> list[torch.Tensor]:
    """Held-out index sets: leave-one-out (``n_folds`` None or n) or a seeded random K-fold partition.

    Parameters
    ----------
    n : int
        Number of models.
    n_folds : int, optional
        K in [2, n]; None means n (leave-one-out).
    generator : torch.Generator, optional
        Needed for K-fold (K < n): the permutation that assigns models to folds.

    Returns
    -------
    list of Tensor of shape (fold_size,), int64
        Sorted indices held out by each fold; together a partition of ``range(n)``.

    Examples
    --------
    >>> [f.tolist() for f in make_folds(3)]
    [[0], [1], [2]]
    >>> sorted(sum((f.tolist() for f in make_folds(7, 3, generator=torch.Generator().manual_seed(0))), []))
    [0, 1, 2, 3, 4, 5, 6]
    """
    if n_folds is None or n_folds == n:
        return [torch.tensor([i]) for i in range(n)]
    if not 2 <= n_folds <= n:
        raise ParameterError(
            f"The 'folds' parameter must be an int in [2, {n}] (n_models). Got {n_folds} instead."
        )
    if generator is None:
        raise ParameterError("K-fold splitting needs a seeded torch.Generator")
    perm = torch.randperm(n, generator=generator)
    return [chunk.sort().values for chunk in torch.tensor_split(perm, n_folds)]


def _fit_batch(sub: torch.Tensor, tol_sq: float) -> torch.Tensor:
    """Batched PCA of training sets given their Gram blocks ``sub`` (B, s, s).

    Returns ``w`` (B, s, s): basis vector j of set b is ``Σ_i w[b, i, j] y_i``, columns in decreasing order of
    ``σ_j``; columns with ``σ_j² ≤ tol_sq`` are zero, so cumulative sums over j stop at each set's rank.
    """
    # J G J without matmuls: subtract row and column means, add back the grand mean.
    row = sub.mean(dim=2, keepdim=True)  # (B, s, 1)
    c = sub - row - row.transpose(1, 2) + sub.mean(dim=(1, 2), keepdim=True)
    evals, evecs = torch.linalg.eigh((c + c.transpose(1, 2)) / 2)  # ascending
    evals, evecs = evals.flip(-1), evecs.flip(-1)  # (B, s), (B, s, s), decreasing
    keep = evals > tol_sq
    centered = evecs - evecs.mean(dim=1, keepdim=True)  # J u_j
    scale = torch.where(keep, evals.clamp_min(torch.finfo(torch.float64).tiny).rsqrt(), torch.zeros_like(evals))
    return centered * scale[:, None, :]


def fit_subset(gram: torch.Tensor, idx: torch.Tensor, tol_sq: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PCA of the models ``idx`` (centered by their own mean) as coefficients on their centered rows.

    Parameters
    ----------
    gram : Tensor of shape (n, n)
        Gram of the rows (centered by any common vector: re-centering removes it).
    idx : Tensor of shape (s,)
        The subset.
    tol_sq : float
        Eigenvalues ``σ² ≤ tol_sq`` count as zero and are dropped.

    Returns
    -------
    w : Tensor of shape (s, r)
        Basis vector j is ``Σ_i w_ij y_{idx_i}``; orthonormal, in decreasing order of ``σ_j``, sign-free.
    sq_values : Tensor of shape (r,)
        ``σ_j²``.

    Examples
    --------
    >>> y = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    >>> w, sq = fit_subset(y @ y.T, torch.tensor([0, 1, 2]), 1e-12)
    >>> sq.tolist(), [round(v, 6) for v in (w.T @ y).abs().reshape(-1).tolist()]
    ([2.0], [1.0, 0.0])
    """
    sub = gram[idx][:, idx]  # (s, s)
    w = _fit_batch(sub[None], tol_sq)[0]  # (s, s)
    r = int((w.abs().sum(dim=0) > 0).sum())
    j = torch.eye(sub.shape[0], dtype=torch.float64) - 1.0 / sub.shape[0]
    sq = torch.linalg.eigvalsh(j @ sub @ j).flip(0)[:r]
    return w[:, :r], sq


def fit_subsets(gram: torch.Tensor, subsets: torch.Tensor, tol_sq: float) -> torch.Tensor:
    """:func:`fit_subset` for many subsets of one size at once (one batched eigendecomposition).

    Parameters
    ----------
    gram : Tensor of shape (n, n)
    subsets : Tensor of shape (B, s), int64
    tol_sq : float

    Returns
    -------
    Tensor of shape (B, s, s)
        ``w[b]``: basis vector j of subset b is ``Σ_i w[b, i, j] y_{subsets[b, i]}``, columns in decreasing order
        of ``σ_j``; columns at or below the tolerance are zero.

    Examples
    --------
    >>> y = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    >>> w = fit_subsets(y @ y.T, torch.tensor([[0, 1], [0, 2]]), 1e-12)
    >>> tuple(w.shape)
    (2, 2, 2)
    """
    sub = gram[subsets[:, :, None], subsets[:, None, :]]  # (B, s, s)
    return _fit_batch(sub, tol_sq)


# Folds are processed in batches of equal-size training sets, at most this many float64 Gram entries at once.
_BATCH_ENTRIES = 1 << 22


@dataclass
class HeldOut:
    """Per-model held-out residuals of one unit.

    Attributes
    ----------
    ks : list of int
        Components evaluated.
    mean_only : Tensor of shape (n_models,)
        ``‖x_h − μ_S‖ / ‖x_h‖`` (NaN for an all-zero member).
    basis_only : Tensor of shape (n_models, len(ks))
    mean_plus_basis : Tensor of shape (n_models, len(ks))
    mean_only_sq : Tensor of shape (n_models,)
        Absolute squared residuals ``‖x_h − μ_S‖²`` (for the pooled held-out EVR).
    mean_plus_basis_sq : Tensor of shape (n_models, len(ks))
    """

    ks: list[int]
    mean_only: torch.Tensor
    basis_only: torch.Tensor
    mean_plus_basis: torch.Tensor
    mean_only_sq: torch.Tensor
    mean_plus_basis_sq: torch.Tensor

    @property
    def heldout_evr(self) -> torch.Tensor:
        """Tensor of shape (len(ks),): ``1 − Σ_h ‖r_h^{mb}‖² / Σ_h ‖r_h^{mo}‖²`` (NaN when all residuals are 0)."""
        total = float(self.mean_only_sq.sum())
        if total <= 0:
            return torch.full((len(self.ks),), float("nan"), dtype=torch.float64)
        return 1.0 - self.mean_plus_basis_sq.sum(dim=0) / total


def heldout_from_gram(
    gram: torch.Tensor,
    mean_cross: torch.Tensor,
    mean_sq_norm: float,
    folds: Sequence[torch.Tensor],
    ks: Sequence[int],
    *,
    tol: float = 0.0,
) -> HeldOut:
    """Held-out residuals of mean-only, basis-only and mean + basis reconstructions, from Gram entries only.

    Parameters
    ----------
    gram : Tensor of shape (n_models, n_models)
        Centered Gram ``G = Y Yᵀ``.
    mean_cross : Tensor of shape (n_models,)
        ``m = Y μ``.
    mean_sq_norm : float
        ``q = ‖μ‖²``.
    folds : sequence of Tensor
        Held-out index sets (a partition), e.g. from :func:`make_folds`.
    ks : sequence of int
        Components to evaluate (a k above a fold's rank uses all of its components).
    tol : float
        Singular values ``σ ≤ tol`` of a training set count as zero.

    Returns
    -------
    HeldOut
    """
    n = gram.shape[0]
    ks = [int(k) for k in ks]
    tol_sq = tol * tol
    mo_sq = torch.zeros(n, dtype=torch.float64)
    mb_sq = torch.zeros(n, len(ks), dtype=torch.float64)
    bo_sq = torch.zeros(n, len(ks), dtype=torch.float64)
    diag = gram.diagonal()
    x_sq = (diag + 2.0 * mean_cross + mean_sq_norm).clamp_min(0)  # (n,) ‖x_h‖²
    by_size: dict[int, list[torch.Tensor]] = {}
    for held in folds:
        by_size.setdefault(int(held.numel()), []).append(held)
    everyone = torch.arange(n)
    for size, group in by_size.items():
        s = n - size
        if s < 1:
            raise ParameterError("every fold must leave at least one model to train on")
        step = max(1, _BATCH_ENTRIES // (s * s))
        for b0 in range(0, len(group), step):
            held = torch.stack(group[b0 : b0 + step])  # (B, h)
            mask = torch.ones(held.shape[0], n, dtype=torch.bool)
            mask.scatter_(1, held, False)
            train = everyone.expand(held.shape[0], n)[mask].reshape(held.shape[0], s)  # (B, s)
            g_ss = gram[train[:, :, None], train[:, None, :]]  # (B, s, s)
            g_sh = gram[train[:, :, None], held[:, None, :]]  # (B, s, h)
            w = _fit_batch(g_ss, tol_sq)  # (B, s, s)
            row_mean = g_ss.mean(dim=2, keepdim=True)  # (B, s, 1): G_SS 1 / s
            z_sq = diag[held] - 2.0 * g_sh.mean(dim=1) + g_ss.mean(dim=(1, 2))[:, None]  # (B, h)
            proj_z = w.transpose(1, 2) @ (g_sh - row_mean)  # (B, s, h): ⟨v_j, y_h − ȳ_S⟩
            proj_x = w.transpose(1, 2) @ (g_sh + mean_cross[train][:, :, None])  # (B, s, h): ⟨v_j, x_h⟩
            pick = torch.tensor([min(k, s) - 1 for k in ks], dtype=torch.long)
            cap_z = torch.cumsum(proj_z**2, dim=1)[:, pick, :]  # (B, len(ks), h)
            cap_x = torch.cumsum(proj_x**2, dim=1)[:, pick, :]
            flat = held.reshape(-1)
            mo_sq[flat] = z_sq.clamp_min(0).reshape(-1)
            mb_sq[flat] = (z_sq[:, None, :] - cap_z).clamp_min(0).transpose(1, 2).reshape(flat.numel(), len(ks))
            bo_sq[flat] = (
                (x_sq[held][:, None, :] - cap_x).clamp_min(0).transpose(1, 2).reshape(flat.numel(), len(ks))
            )
    norm = x_sq.sqrt()
    safe = torch.where(norm > 0, norm, torch.full_like(norm, float("nan")))
    return HeldOut(
        ks=ks,
        mean_only=mo_sq.sqrt() / safe,
        basis_only=bo_sq.sqrt() / safe[:, None],
        mean_plus_basis=mb_sq.sqrt() / safe[:, None],
        mean_only_sq=mo_sq,
        mean_plus_basis_sq=mb_sq,
    )


def heldout_evr_from_gram(
    gram: torch.Tensor, folds: Sequence[torch.Tensor], ks: Sequence[int], *, tol: float = 0.0
) -> torch.Tensor:
    """Pooled held-out EVR (see :class:`HeldOut`) from a centered Gram alone, e.g. a null draw.

    Parameters
    ----------
    gram : Tensor of shape (n_models, n_models)
    folds : sequence of Tensor
    ks : sequence of int
    tol : float

    Returns
    -------
    Tensor of shape (len(ks),)
    """
    n = gram.shape[0]
    zeros = torch.zeros(n, dtype=torch.float64)
    return heldout_from_gram(gram, zeros, 0.0, folds, ks, tol=tol).heldout_evr
