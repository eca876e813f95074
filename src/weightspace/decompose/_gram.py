"""Streaming second-moment passes over a :class:`~weightspace.units.UnitStack`, all in float64.

* :func:`centered_gram` — ``G = X_c X_cᵀ`` (N × N), streaming over row chunks so memory is
  ``O(N² + N · chunk)``. Each chunk is centered by its own column means, computed as ``x_0 + mean_i(x_i − x_0)``
  so that identical models give exactly zero (and a dominant mean loses no precision to cancellation).
* :func:`factored_gram` — the same matrix from LoRA factors without forming any ``d_out × d_in`` update:
  ``⟨L_i R_i, L_j R_j⟩ = Σ (L_iᵀ L_j) ∘ (R_i R_jᵀ)``, an r × r computation per pair, then double centering.
* :func:`tsqr_r` — the R factor of a tall-skinny QR of ``X_cᵀ``, whose singular values are those of ``X_c``
  without the squaring that limits the Gram route to ``σ_k/σ_1 ≳ 1e-7``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from weightspace.units import UnitStack

__all__ = ["GramResult", "center_gram", "centered_chunk", "centered_gram", "factored_gram", "tsqr_r"]

Tick = Callable[[], None]


@dataclass
class GramResult:
    """Output of a Gram pass.

    Attributes
    ----------
    gram : Tensor of shape (n_models, n_models), float64
        ``X_c X_cᵀ`` (or ``X Xᵀ`` when not centering).
    raw_sq_norm : float
        ``‖X‖_F²`` of the uncentered stack, the scale used for the zero-rank tolerance.
    mean_sq_norm : float
        ``‖μ‖²`` of the column mean (0 when not centering).
    mean_cross : Tensor of shape (n_models,), float64
        ``X_c μ``: with ``gram`` and ``mean_sq_norm`` it gives every inner product among models and the mean,
        e.g. ``‖x_i‖² = G_ii + 2 (X_c μ)_i + ‖μ‖²`` (used by leave-one-out analysis without re-reading data).
    """

    gram: torch.Tensor
    raw_sq_norm: float
    mean_sq_norm: float
    mean_cross: torch.Tensor


def centered_chunk(x: torch.Tensor, center: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Center a chunk ``x`` (n_models, c) by its column mean, **in place**; returns ``(x_c, mean)``.

    The mean is ``x_0 + mean_i(x_i − x_0)``: exact when all rows are equal, and free of cancellation when the
    mean dominates the spread. ``x`` itself becomes ``x_c`` (no N × c temporary).
    """
    if not center:
        return x, torch.zeros(x.shape[1], dtype=x.dtype)
    shift = x[0].clone()  # (c,)
    x.sub_(shift)
    offset = x.mean(dim=0)  # (c,)
    x.sub_(offset)
    return x, shift.add_(offset)


class _ChunkStats:
    """Streams centered chunks of a stack while accumulating ``‖X‖_F²``, ``‖μ‖²`` and ``X_c μ``."""

    def __init__(self, stack: UnitStack, center: bool, chunk_bytes: int, tick: Tick | None):
        self.stack, self.center, self.chunk_bytes, self.tick = stack, center, chunk_bytes, tick
        self.raw_sq = 0.0
        self.mean_sq = 0.0
        self.cross = torch.zeros(stack.n, dtype=torch.float64)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for r0, r1 in self.stack.row_chunks(self.chunk_bytes):
            x = self.stack.chunk(r0, r1)  # (n_models, (r1 - r0) * cols)
            self.raw_sq += float(torch.linalg.vector_norm(x)) ** 2
            xc, mean = centered_chunk(x, self.center)
            self.mean_sq += float(mean @ mean)
            self.cross += xc @ mean
            yield xc
            if self.tick is not None:
                self.tick()

    def result(self, gram: torch.Tensor) -> GramResult:
        return GramResult(gram, self.raw_sq, self.mean_sq, self.cross)


def centered_gram(stack: UnitStack, *, center: bool, chunk_bytes: int, tick: Tick | None = None) -> GramResult:
    """Stream ``G = X_c X_cᵀ`` over row chunks of every member."""
    gram = torch.zeros(stack.n, stack.n, dtype=torch.float64)
    chunks = _ChunkStats(stack, center, chunk_bytes, tick)
    for xc in chunks:
        gram.addmm_(xc, xc.T)
    return chunks.result((gram + gram.T) / 2)


def center_gram(gram: torch.Tensor) -> torch.Tensor:
    """Double-centered Gram ``J G J`` with ``J = I − 11ᵀ/N``: the Gram of the rows after removing their mean.

    Parameters
    ----------
    gram : Tensor of shape (n, n)

    Returns
    -------
    Tensor of shape (n, n)
    """
    row = gram.mean(dim=1, keepdim=True)  # (n, 1)
    out = gram - row - row.T + gram.mean()
    return (out + out.T) / 2


def factored_gram(stack: UnitStack, *, center: bool) -> GramResult:
    """``G`` from factored members ``L_i R_i`` (scaling in ``L_i``) with no dense update formed.

    Cost ``O((Σ r_i)² (rows + cols))``; memory ``O((Σ r_i)(rows + cols) + (Σ r_i)²)``.
    """
    factors = [m.factors() for m in stack.members]
    if any(f is None for f in factors):
        raise ValueError("factored_gram needs every member to be factored")
    lefts = [f[0] for f in factors]  # type: ignore[index]
    rights = [f[1] for f in factors]  # type: ignore[index]
    ranks = [left.shape[1] for left in lefts]
    lcat = torch.cat(lefts, dim=1)  # (rows, sum_r)
    rcat = torch.cat(rights, dim=0)  # (sum_r, cols)
    hadamard = (lcat.T @ lcat) * (rcat @ rcat.T)  # (sum_r, sum_r)
    owner = torch.repeat_interleave(torch.arange(len(ranks)), torch.tensor(ranks))
    indicator = torch.zeros(hadamard.shape[0], len(ranks), dtype=torch.float64)
    indicator[torch.arange(hadamard.shape[0]), owner] = 1.0  # (sum_r, n_models)
    raw = indicator.T @ hadamard @ indicator  # (n_models, n_models) = X Xᵀ
    raw = (raw + raw.T) / 2
    raw_sq = float(raw.trace())
    n = len(ranks)
    if not center:
        return GramResult(raw, raw_sq, 0.0, torch.zeros(n, dtype=torch.float64))
    mean_sq = float(raw.sum()) / n**2
    cross = raw.sum(dim=1) / n - mean_sq  # X_c μ = X μ − ‖μ‖² 1, with X μ = X Xᵀ 1 / N
    return GramResult(center_gram(raw), raw_sq, mean_sq, cross)


def tsqr_r(
    stack: UnitStack, *, center: bool, chunk_bytes: int, tick: Tick | None = None
) -> tuple[torch.Tensor, GramResult]:
    """R factor (≤ n_models × n_models) of the QR of ``X_cᵀ``, accumulated chunk by chunk.

    ``X_c X_cᵀ = Rᵀ R``, so the SVD of R gives the singular values and left singular vectors of ``X_c`` to full
    float64 accuracy.

    Returns
    -------
    r : Tensor of shape (m, n_models), m ≤ n_models
    gram : GramResult
        With ``gram = Rᵀ R``.
    """
    r = torch.zeros(0, stack.n, dtype=torch.float64)
    chunks = _ChunkStats(stack, center, chunk_bytes, tick)
    for xc in chunks:
        r = torch.linalg.qr(torch.cat([r, xc.T]), mode="r").R  # (min(rows_so_far, n), n_models)
    return r, chunks.result(r.T @ r)
