"""Matched null models, sampled as N × N Gram matrices (never as N × D data).

What a null answers: *is the spread of the models around their mean more concentrated than isotropic noise of
the same size would be?* So every null here is matched to the collection's **centered** per-model norms
``‖x_i − μ‖`` (the spread, not the mean: a null with the raw norms would hand the mean to the noise as well).

* :func:`wishart_gram` — the Gram ``Z Zᵀ`` of N iid ``N(0, I_D)`` rows is Wishart(D, I_N). For ``D ≥ N`` it is
  drawn with the Bartlett decomposition ``W = L Lᵀ`` (``L`` lower triangular, ``L_ii² ~ χ²(D − i)``,
  ``L_ij ~ N(0, 1)`` below the diagonal) in ``O(N³)``, whatever D is; small or rank-deficient cases (``D < N``)
  draw Z directly.
* :func:`gaussian_null_gram` — rows of that Gram normalised to unit length, rescaled to the matched norms
  ``r_i`` (``G̃_ij = r_i r_j W_ij / sqrt(W_ii W_jj)``), then double-centered (``J G̃ J``), exactly what the
  Gram of the null models would be after centering them by their own mean.
* :func:`lora_null_gram` — the rank-r Gaussian ``ΔW_i = B_i A_i`` null for LoRA units. Its Gram
  ``⟨B_iA_i, B_jA_j⟩ = Σ_ab (B_iᵀB_j)_ab (A_iA_jᵀ)_ab`` only needs ``B_catᵀ B_cat ~ Wishart(d_out, I_R)`` and
  ``A_cat A_catᵀ ~ Wishart(d_in, I_R)`` with ``R = Σ r_i``: an R × R computation, then matched and centered.
* :func:`mp_edge_evr` — the Marchenko–Pastur upper bulk edge expressed as an explained-variance ratio.

References
----------
Bartlett, "On the theory of statistical regression", Proc. R. Soc. Edinburgh 53 (1933);
Marchenko & Pastur, "Distribution of eigenvalues for some sets of random matrices", Mat. Sb. (1967).

Examples
--------
>>> g = torch.Generator().manual_seed(0)
>>> w = wishart_gram(4, 1000, generator=g, method="bartlett")
>>> tuple(w.shape), bool(torch.allclose(w, w.T))
((4, 4), True)
>>> null = gaussian_null_gram(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), 50, generator=g)
>>> bool(null.sum(dim=1).abs().max() < 1e-12)  # double-centered
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from weightspace.decompose import center_gram
from weightspace.errors import ParameterError

__all__ = [
    "LORA_NULL_MAX_RANK_SUM",
    "center_gram",
    "gaussian_null_gram",
    "lora_null_gram",
    "matched_gram",
    "mp_edge",
    "mp_edge_evr",
    "spectrum_evr",
    "wishart_gram",
]

# Draw Z directly only for tiny cases (N·D ≤ 4096) or D < N (singular Wishart); Bartlett, O(N³), otherwise.
_DIRECT_MAX_ENTRIES = 1 << 12
# The LoRA null holds two R × R matrices (R = Σ r_i); above this R it is skipped and the report says so.
LORA_NULL_MAX_RANK_SUM = 4096

WishartMethod = Literal["auto", "bartlett", "direct"]


def _chi2(dofs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """χ² draws with the given degrees of freedom, as 2·Gamma(dof/2, 1), from ``generator``."""
    return 2.0 * torch._standard_gamma(dofs / 2.0, generator=generator)


def wishart_gram(n: int, dof: int, *, generator: torch.Generator, method: WishartMethod = "auto") -> torch.Tensor:
    """Gram matrix of ``n`` iid standard Gaussian rows of length ``dof`` (a Wishart(dof, I_n) draw).

    Parameters
    ----------
    n : int
        Number of rows (models).
    dof : int
        Row length D (degrees of freedom).
    generator : torch.Generator
        Source of randomness; the draw is a deterministic function of its state.
    method : {"auto", "bartlett", "direct"}
        ``direct`` samples Z (n × dof) and returns ``Z Zᵀ``; ``bartlett`` needs ``dof ≥ n`` and costs
        ``O(n³)`` whatever ``dof`` is; ``auto`` uses direct while ``n · dof ≤ 4096`` or ``dof < n``.

    Returns
    -------
    Tensor of shape (n, n), float64

    Examples
    --------
    >>> w = wishart_gram(3, 10**6, generator=torch.Generator().manual_seed(1))
    >>> [round(float(v) / 10**6, 2) for v in w.diagonal()]
    [1.0, 1.0, 1.0]
    """
    if n < 1 or dof < 1:
        raise ParameterError(f"wishart_gram needs n >= 1 and dof >= 1. Got n={n}, dof={dof} instead.")
    if method == "auto":
        method = "direct" if dof < n or n * dof <= _DIRECT_MAX_ENTRIES else "bartlett"
    if method == "direct":
        z = torch.randn(n, dof, generator=generator, dtype=torch.float64)  # (n, dof)
        gram = z @ z.T
    elif method == "bartlett":
        if dof < n:
            raise ParameterError(f"the Bartlett decomposition needs dof >= n. Got n={n}, dof={dof} instead.")
        lower = torch.randn(n, n, generator=generator, dtype=torch.float64).tril(-1)  # (n, n)
        diag = _chi2(torch.arange(dof, dof - n, -1, dtype=torch.float64), generator).sqrt()  # (n,)
        lower += torch.diag(diag)
        gram = lower @ lower.T
    else:
        raise ParameterError(
            f"The 'method' parameter of wishart_gram must be one of 'auto', 'bartlett', 'direct'. Got {method!r}."
        )
    return (gram + gram.T) / 2


def matched_gram(gram: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """Rescale the rows behind ``gram`` to lengths ``norms``, then double-center.

    Parameters
    ----------
    gram : Tensor of shape (n, n)
        Gram of n rows with non-zero lengths.
    norms : Tensor of shape (n,)
        Target row lengths (the collection's centered norms ``‖x_i − μ‖``).

    Returns
    -------
    Tensor of shape (n, n), double-centered
    """
    d = gram.diagonal().clamp_min(torch.finfo(torch.float64).tiny).sqrt()  # (n,)
    scale = norms.to(torch.float64) / d
    return center_gram(gram * torch.outer(scale, scale))


def gaussian_null_gram(norms: torch.Tensor, dof: int, *, generator: torch.Generator) -> torch.Tensor:
    """One draw of the matched Gaussian null's centered Gram.

    N iid ``N(0, I_D)`` rows, each rescaled to the matched norm ``r_i``, then centered by their own mean.

    Parameters
    ----------
    norms : Tensor of shape (n_models,)
        Matched norms ``r_i = ‖x_i − μ‖`` of the collection.
    dof : int
        D, the number of parameters of the unit.
    generator : torch.Generator

    Returns
    -------
    Tensor of shape (n_models, n_models), float64
    """
    return matched_gram(wishart_gram(norms.numel(), dof, generator=generator), norms)


def lora_null_gram(
    norms: torch.Tensor, ranks: Sequence[int], rows: int, cols: int, *, generator: torch.Generator
) -> torch.Tensor | None:
    """One draw of the rank-r Gaussian ΔW null's centered Gram (LoRA units).

    ``ΔW_i = B_i A_i`` with ``B_i`` (rows × r_i) and ``A_i`` (r_i × cols) iid standard Gaussian, rescaled to the
    matched norms and centered. Only R × R Wishart draws are needed (``R = Σ r_i``), never a ΔW.

    Parameters
    ----------
    norms : Tensor of shape (n_models,)
        Matched norms ``‖x_i − μ‖``.
    ranks : sequence of int
        LoRA rank of each model's update.
    rows, cols : int
        The unit's 2-D shape (d_out, d_in).
    generator : torch.Generator

    Returns
    -------
    Tensor of shape (n_models, n_models) or None
        None when ``Σ r_i > LORA_NULL_MAX_RANK_SUM`` (memory); the report then says the LoRA null was skipped.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> gram = lora_null_gram(torch.ones(5, dtype=torch.float64), [2] * 5, 40, 30, generator=g)
    >>> tuple(gram.shape)
    (5, 5)
    """
    ranks = [int(r) for r in ranks]
    if len(ranks) != norms.numel() or any(r < 1 for r in ranks):
        raise ParameterError(f"lora_null_gram needs one rank >= 1 per model. Got {ranks!r} instead.")
    total = sum(ranks)
    if total > LORA_NULL_MAX_RANK_SUM:
        return None
    wb = wishart_gram(total, rows, generator=generator)  # (R, R) = B_catᵀ B_cat
    wa = wishart_gram(total, cols, generator=generator)  # (R, R) = A_cat A_catᵀ
    owner = torch.repeat_interleave(torch.arange(len(ranks)), torch.tensor(ranks))
    indicator = torch.zeros(total, len(ranks), dtype=torch.float64)
    indicator[torch.arange(total), owner] = 1.0  # (R, n_models)
    raw = indicator.T @ (wb * wa) @ indicator  # (n_models, n_models): ⟨ΔW_i, ΔW_j⟩
    return matched_gram((raw + raw.T) / 2, norms)


def spectrum_evr(gram: torch.Tensor) -> torch.Tensor:
    """Per-component explained-variance ratios (decreasing) of a centered Gram.

    Parameters
    ----------
    gram : Tensor of shape (n, n)

    Returns
    -------
    Tensor of shape (n,)
    """
    evals = torch.linalg.eigvalsh(gram).flip(0).clamp_min(0)  # (n,), decreasing
    total = float(evals.sum())
    return evals / total if total > 0 else torch.zeros_like(evals)


def mp_edge_evr(n_models: int, dof: int) -> float:
    """Marchenko–Pastur upper bulk edge, as the explained-variance ratio of one component.

    For N centered iid isotropic rows of length D there are ``p = min(N − 1, D)`` non-zero eigenvalues, with
    ``q = max(N − 1, D)``; their bulk ends at ``(1 + sqrt(p/q))²`` times their mean, and they sum to the total
    variance, so a component above ``(1 + sqrt(p/q))² / p`` of the variance lies beyond the noise bulk (in the
    large-N, large-D limit; finite samples fluctuate around the edge on the Tracy–Widom scale). Capped at 1.

    Parameters
    ----------
    n_models : int
    dof : int
        D.

    Returns
    -------
    float

    Examples
    --------
    >>> round(mp_edge_evr(17, 10_000), 4)  # just above 1/16 = 0.0625: isotropic noise is flat
    0.0676
    """
    return mp_edge(n_models - 1, dof)


def mp_edge(p: int, q: int) -> float:
    """Marchenko–Pastur upper edge as an EVR for a p × q isotropic matrix (order of p, q irrelevant), capped at 1.

    Parameters
    ----------
    p, q : int
        The two dimensions (e.g. N − 1 centered models and D parameters, or rows and (N − 1)·cols for the HOSVD
        mode-1 scatter).

    Returns
    -------
    float

    Examples
    --------
    >>> mp_edge(4, 4)  # square: the edge is 4× the mean eigenvalue, i.e. all of the variance for p = 4
    1.0
    """
    p, q = min(p, q), max(p, q)
    if p < 1:
        return 1.0
    return min(1.0, (1.0 + (p / q) ** 0.5) ** 2 / p)
