"""Streaming second-moment passes over a :class:`~weightspace.units.UnitStack`, all in float64.

* :class:`ChunkStream` — the centered row chunks of a stack, ``(n_models, c)`` each. A pass reads every byte of the
  unit once into one reused float64 buffer (no fresh page faults per chunk); when the unit's float64 rows fit in
  ``cache_bytes`` the first pass keeps its chunks and later passes replay them without reading again, so a
  two-pass fit reads each byte once.
* :func:`centered_gram` — ``G = X_c X_cᵀ`` (N × N), streaming over row chunks so memory is
  ``O(N² + N · chunk)``. Each chunk is centered by its own column means, computed as ``x_0 + mean_i(x_i − x_0)``
  so that identical models give exactly zero (and a dominant mean loses no precision to cancellation).
* :func:`factored_gram` — the same matrix from LoRA factors without forming any ``d_out × d_in`` update:
  ``⟨L_i R_i, L_j R_j⟩ = Σ (L_iᵀ L_j) ∘ (R_i R_jᵀ)``, an r × r computation per pair, then double centering.
* :func:`tsqr_r` — the R factor of a tall-skinny QR of ``X_cᵀ``, whose singular values are those of ``X_c``
  without the squaring that limits the Gram route to ``σ_k/σ_1 ≳ 1e-7``.

The products run on ``device`` (chunks are copied host → device one at a time; results come back to the host).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from weightspace.backends import give, resolve_device, take, to_device
from weightspace.units import UnitStack

__all__ = [
    "ChunkStream",
    "GramResult",
    "MemberReader",
    "center_gram",
    "centered_chunk",
    "centered_gram",
    "factored_gram",
    "tsqr_r",
]

Tick = Callable[[], None]
Device = str | torch.device | None


@dataclass
class GramResult:
    """Output of a Gram pass.

    Attributes
    ----------
    gram : Tensor of shape (n_models, n_models), float64
        ``X_c X_cᵀ`` (or ``X Xᵀ`` when not centering). Empty ``(0, 0)`` when a fit took the covariance route
        (``n_models > n_features``) and no caller needed the Gram.
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


class ChunkStream:
    """Centered row chunks of a unit, pass after pass, read once when the unit fits ``cache_bytes``.

    Iterating yields ``(r0, r1, x_c, mean)`` for each row range: ``x_c`` of shape ``(n_models, (r1 - r0) * cols)``
    (valid until the next step unless the stream keeps its chunks), ``mean`` of shape ``((r1 - r0) * cols,)``. The
    first pass also accumulates ``‖μ‖²`` and ``X_c μ``.

    Parameters
    ----------
    stack : UnitStack
    center : bool
    chunk_bytes : int
        Budget of one float64 chunk across all members.
    cache_bytes : int, default 0
        Keep the chunks of the first pass when the whole unit (float64, all members) fits in this many bytes.
    tick : callable, optional
        Called after each chunk read.

    Attributes
    ----------
    reads : int
        Passes that read the data (1 for a kept unit, whatever the number of passes).
    kept : bool
        Whether the chunks are kept after the first pass.

    Examples
    --------
    >>> stack = UnitStack.from_tensors([torch.ones(4, 3) * i for i in range(3)])
    >>> s = ChunkStream(stack, center=True, chunk_bytes=3 * 3 * 8 * 2, cache_bytes=1 << 20)
    >>> [tuple(xc.shape) for _, _, xc, _ in s], [tuple(xc.shape) for _, _, xc, _ in s], s.reads
    ([(3, 6), (3, 6)], [(3, 6), (3, 6)], 1)
    """

    def __init__(
        self,
        stack: UnitStack,
        *,
        center: bool,
        chunk_bytes: int,
        cache_bytes: int = 0,
        tick: Tick | None = None,
    ):
        self.stack, self.center, self.tick = stack, center, tick
        self.ranges = stack.row_chunks(chunk_bytes)
        self.kept = stack.n * stack.spec.numel * 8 <= cache_bytes
        self.reads = 0
        self.mean_sq = 0.0
        self.cross = torch.zeros(stack.n, dtype=torch.float64)
        self._chunks: list[tuple[int, int, torch.Tensor, torch.Tensor]] | None = None
        self._buf: torch.Tensor | None = None

    def _view(self, r0: int, r1: int, offset: int) -> torch.Tensor:
        """A contiguous ``(n_models, (r1 - r0) * cols)`` block of the scratch buffer starting at ``offset``."""
        n, cols = self.stack.n, self.stack.spec.cols
        need = n * (r1 - r0) * cols
        if self._buf is None:
            total = n * self.stack.spec.numel if self.kept else max(n * (b - a) * cols for a, b in self.ranges)
            self._buf = take(total)
        return self._buf[offset : offset + need].view(n, (r1 - r0) * cols)

    def close(self) -> None:
        """Hand the scratch buffer back (kept chunks become invalid)."""
        buf, self._buf, self._chunks = self._buf, None, None
        if buf is not None:
            give(buf)

    def __iter__(self) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
        if self._chunks is not None:
            yield from self._chunks
            return
        first = self.reads == 0
        keep: list[tuple[int, int, torch.Tensor, torch.Tensor]] | None = [] if self.kept else None
        self.reads += 1
        offset = 0
        for r0, r1 in self.ranges:
            x = self.stack.chunk(r0, r1, out=self._view(r0, r1, offset))
            if keep is not None:
                offset += x.numel()
            xc, mean = centered_chunk(x, self.center)  # (n_models, c), (c,)
            if first:
                self.mean_sq += float(mean @ mean)
                if self.center:
                    self.cross += xc @ mean
            if keep is not None:
                keep.append((r0, r1, xc, mean))
            yield r0, r1, xc, mean
            if self.tick is not None:
                self.tick()
        if keep is not None:
            self._chunks = keep

    def whole(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole centered unit ``(n_models, rows * cols)`` and its mean ``(rows * cols,)`` (one pass)."""
        parts = list(self)
        if len(parts) == 1:
            return parts[0][2], parts[0][3]
        return torch.cat([p[2] for p in parts], dim=1), torch.cat([p[3] for p in parts])

    def result(self, gram: torch.Tensor) -> GramResult:
        """A :class:`GramResult` from ``gram = X_c X_cᵀ`` (on the host) and this stream's first-pass sums.

        ``‖X‖² = tr(X_c X_cᵀ) + N ‖μ‖²`` (the centered rows sum to zero), so no pass computes it separately.
        """
        raw = float(gram.trace()) + self.stack.n * self.mean_sq if gram.numel() else 0.0
        return GramResult(gram, raw, self.mean_sq, self.cross)


def centered_gram(
    stack: UnitStack,
    *,
    center: bool,
    chunk_bytes: int,
    tick: Tick | None = None,
    device: Device = None,
    stream: ChunkStream | None = None,
) -> GramResult:
    """Stream ``G = X_c X_cᵀ`` over row chunks of every member (on ``device``; the result is on the host)."""
    dev = resolve_device(device)
    chunks = (
        stream if stream is not None else ChunkStream(stack, center=center, chunk_bytes=chunk_bytes, tick=tick)
    )
    gram = torch.zeros(stack.n, stack.n, dtype=torch.float64, device=dev)
    for _, _, xc, _ in chunks:
        xd = to_device(xc, dev)
        gram.addmm_(xd, xd.T)
    gram = gram.cpu()
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


def factored_gram(stack: UnitStack, *, center: bool, device: Device = None) -> GramResult:
    """``G`` from factored members ``L_i R_i`` (scaling in ``L_i``) with no dense update formed.

    Cost ``O((Σ r_i)² (rows + cols))``; memory ``O((Σ r_i)(rows + cols) + (Σ r_i)²)``.
    """
    factors = [m.factors() for m in stack.members]
    if any(f is None for f in factors):
        raise ValueError("factored_gram needs every member to be factored")
    dev = resolve_device(device)
    lefts = [f[0] for f in factors]  # type: ignore[index]
    rights = [f[1] for f in factors]  # type: ignore[index]
    ranks = [left.shape[1] for left in lefts]
    lcat = to_device(torch.cat(lefts, dim=1), dev)  # (rows, sum_r)
    rcat = to_device(torch.cat(rights, dim=0), dev)  # (sum_r, cols)
    hadamard = ((lcat.T @ lcat) * (rcat @ rcat.T)).cpu()  # (sum_r, sum_r)
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
    stack: UnitStack,
    *,
    center: bool,
    chunk_bytes: int,
    tick: Tick | None = None,
    device: Device = None,
    stream: ChunkStream | None = None,
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
    dev = resolve_device(device)
    chunks = (
        stream if stream is not None else ChunkStream(stack, center=center, chunk_bytes=chunk_bytes, tick=tick)
    )
    r = torch.zeros(0, stack.n, dtype=torch.float64, device=dev)
    for _, _, xc, _ in chunks:
        r = torch.linalg.qr(torch.cat([r, to_device(xc, dev).T]), mode="r").R  # (min(rows_so_far, n), n_models)
    r = r.cpu()
    return r, chunks.result(r.T @ r)


class MemberReader:
    """Whole members of a stack, shifted by a fixed member: ``y_i = x_i − shift``, float64 ``(rows, cols)``.

    The base of task vectors is read once for all members (not once per member). When the unit's float64 members
    fit in ``cache_bytes`` each is read once and kept, so methods that pass over the models several times (HOSVD:
    scatters, then cores or folds) read each byte once; otherwise a member is read into one reused buffer and is
    valid until the next read.

    Parameters
    ----------
    stack : UnitStack
    cache_bytes : int, default 0
    tick : callable, optional
        Called after each member read from its source.

    Attributes
    ----------
    sq_norms : Tensor of shape (n_models,)
        ``‖x_i‖²`` of every member read so far (NaN before its first read).
    reads : int
        Member reads from the sources.
    kept : bool

    Examples
    --------
    >>> stack = UnitStack.from_tensors([torch.full((2, 2), float(i)) for i in range(3)])
    >>> r = MemberReader(stack, cache_bytes=1 << 20)
    >>> r.set_shift(r[0])
    >>> [float(r[i].sum()) for i in (0, 1, 2, 2)], r.reads, r.sq_norms.tolist()
    ([0.0, 4.0, 8.0, 8.0], 3, [0.0, 4.0, 16.0])
    """

    def __init__(self, stack: UnitStack, *, cache_bytes: int = 0, tick: Tick | None = None):
        self.stack, self.tick = stack, tick
        self.rows, self.cols = stack.spec.rows, stack.spec.cols
        self.kept = stack.n * self.rows * self.cols * 8 <= cache_bytes
        first = stack.members[0]
        self._shared_base = first.base is not None and all(
            m.base is first.base and m.base_key == first.base_key for m in stack.members
        )
        self._base: torch.Tensor | None = None
        self._shift: torch.Tensor | None = None
        self._buf: torch.Tensor | None = None
        self._have = [False] * stack.n
        self.sq_norms = torch.full((stack.n,), float("nan"), dtype=torch.float64)
        self.reads = 0

    @property
    def shift(self) -> torch.Tensor | None:
        """What is subtracted from every member (None: nothing)."""
        return self._shift

    def set_shift(self, shift: torch.Tensor) -> None:
        """Subtract ``shift`` (rows, cols) from every member from now on (members read so far are shifted too)."""
        self._shift = shift.clone()
        if self.kept and self._buf is not None:
            for i, have in enumerate(self._have):
                if have:
                    self._slot(i).sub_(self._shift)

    def _slot(self, i: int) -> torch.Tensor:
        size = self.rows * self.cols
        if self._buf is None:
            self._buf = take(size * (self.stack.n if self.kept else 1))
        start = i * size if self.kept else 0
        return self._buf[start : start + size].view(self.rows, self.cols)

    def __getitem__(self, i: int) -> torch.Tensor:
        out = self._slot(i)
        if self.kept and self._have[i]:
            return out
        m = self.stack.members[i]
        m.rows_into(0, self.rows, out, subtract_base=not self._shared_base)
        if self._shared_base:
            if self._base is None:
                self._base = m.base_rows(0, self.rows)
            assert self._base is not None
            out.sub_(self._base)
        flat = out.view(-1)
        self.sq_norms[i] = float(flat @ flat)
        if self._shift is not None:
            out.sub_(self._shift)
        self.reads += 1
        if self.kept:
            self._have[i] = True
        if self.tick is not None:
            self.tick()
        return out

    def close(self) -> None:
        """Hand the scratch buffer back (kept members become invalid)."""
        buf, self._buf = self._buf, None
        self._have = [False] * self.stack.n
        if buf is not None:
            give(buf)
