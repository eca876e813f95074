"""Units: how one weight of N models becomes an N × D stack, read lazily and in float64.

A *unit* is one weight key shared by every model. Its 2-D view is ``(shape[0], prod(shape[1:]))``: a linear
weight stays ``d_out × d_in``, a conv weight ``out × in × kh × kw`` becomes ``out × in·kh·kw``, a 1-D vector
``n`` becomes ``n × 1``. Row ranges of the 2-D view are contiguous on disk, so a unit can be streamed in row
chunks across all models with memory ``O(N · chunk)``.

What a model contributes (its *member*) is, in float64:

* ``W_i`` (raw), or ``W_i − W_base`` with a base, for stored tensors;
* ``s_i · B_i A_i`` for a LoRA update, kept factored: :meth:`UnitMember.factors` gives ``(s·B, A)`` in the
  unit's layout, so a Gram entry ``⟨ΔW_i, ΔW_j⟩`` costs an r × r computation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from weightspace.errors import NonFiniteError, ShapeMismatchError
from weightspace.io import ModelSource

__all__ = ["TensorMember", "UnitMember", "UnitSpec", "UnitStack", "all_finite"]


@dataclass(frozen=True)
class UnitSpec:
    """A shared weight key and its geometry.

    Attributes
    ----------
    name : str
        The tensor key (for LoRA: the base model's weight key).
    shape : tuple of int
        Shape of the weight in its own layout.
    lora : bool
        True when every model gives this unit as a factored LoRA update.
    """

    name: str
    shape: tuple[int, ...]
    lora: bool = False

    @property
    def kind(self) -> Literal["matrix", "vector"]:
        """``matrix`` for ≥2-D weights, ``vector`` for biases, norms and scalars."""
        return "matrix" if len(self.shape) >= 2 else "vector"

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def cols(self) -> int:
        return math.prod(self.shape[1:]) if len(self.shape) > 1 else 1

    @property
    def numel(self) -> int:
        return self.rows * self.cols


def all_finite(t: torch.Tensor) -> bool:
    """Whether every entry of ``t`` is finite (no NaN, no ±inf), usually from one streaming sum.

    A sum is finite exactly when every entry is, unless it overflows; only then is the elementwise test (about 25
    times slower, and allocating) needed. Half-precision sums accumulate in float32 so they cannot overflow.

    Examples
    --------
    >>> all_finite(torch.tensor([1.0, 2.0])), all_finite(torch.tensor([1.0, float("nan")]))
    (True, False)
    >>> all_finite(torch.tensor([3e38, 3e38]))  # the sum overflows, the entries are finite
    True
    """
    if not t.is_floating_point() or t.numel() == 0:
        return True
    total = t.sum(dtype=torch.float32 if t.element_size() < 4 else None)
    if math.isfinite(float(total)):
        return True
    return bool(torch.isfinite(t).all())


def _check_finite(t: torch.Tensor, path: object, key: str) -> None:
    if not all_finite(t):
        bad = int((~torch.isfinite(t)).sum())
        raise NonFiniteError(
            f"{bad} non-finite value(s) (NaN or inf); weights must be finite", path=path, tensor=key
        )


class UnitMember:
    """One model's contribution to one unit, read lazily.

    Parameters
    ----------
    source : ModelSource
        The model.
    spec : UnitSpec
        The unit.
    base : ModelSource, optional
        Subtracted from stored tensors (not from LoRA updates, which are deltas already).
    base_key : str, optional
        Key of the unit in ``base`` if it differs from ``spec.name``.
    """

    def __init__(
        self, source: ModelSource, spec: UnitSpec, base: ModelSource | None = None, base_key: str | None = None
    ):
        self.source = source
        self.spec = spec
        self.base = base
        self.base_key = base_key or spec.name
        self._entry = source.entry(spec.name)
        self._factors: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def dtype(self) -> str:
        """Stored dtype tag of this model's tensor (or factors)."""
        return self._entry.dtype

    @property
    def is_lora(self) -> bool:
        return self._entry.kind == "lora"

    def factors(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(L, R)`` with the member equal to ``L @ R`` in the unit's 2-D layout, or None for stored tensors.

        Returns
        -------
        L : Tensor of shape (rows, r), float64, with the LoRA scaling folded in
        R : Tensor of shape (r, cols), float64
        """
        if not self.is_lora:
            return None
        if self._factors is None:
            b, a, mod = self.source.lora(self.spec.name)
            _check_finite(b, self.source.path, mod.b_key)
            _check_finite(a, self.source.path, mod.a_key)
            b2 = b.reshape(b.shape[0], mod.rank).to(torch.float64)  # (d_out, r)
            a2 = a.reshape(mod.rank, -1).to(torch.float64)  # (r, d_in * k...)
            if mod.fan_in_fan_out:
                left, right = a2.T * mod.scaling, b2.T  # (B A)ᵀ = Aᵀ Bᵀ in the transposed base layout
            else:
                left, right = b2 * mod.scaling, a2
            self._factors = (left.contiguous(), right.contiguous())
        return self._factors

    def rows(self, r0: int, r1: int) -> torch.Tensor:
        """Rows ``[r0, r1)`` of the member's 2-D view, float64, shape ``(r1 - r0, cols)``."""
        out = torch.empty(r1 - r0, self.spec.cols, dtype=torch.float64)
        self.rows_into(r0, r1, out)
        return out

    def rows_into(self, r0: int, r1: int, out: torch.Tensor, *, subtract_base: bool = True) -> None:
        """Write rows ``[r0, r1)`` into ``out`` (float64, shape ``(r1 - r0, cols)``) with no extra copy.

        ``subtract_base=False`` leaves the base in (the caller subtracts :meth:`base_rows` once for many members).
        """
        fac = self.factors()
        if fac is not None:
            torch.matmul(fac[0][r0:r1], fac[1], out=out)
            return
        whole = self.spec.rows == r1 - r0
        raw = self.source.read(self.spec.name, None if whole else (r0, r1))
        _check_finite(raw, self.source.path, self.spec.name)
        out.copy_(raw.reshape(r1 - r0, self.spec.cols))  # converts to float64 while copying
        del raw
        if subtract_base:
            base = self.base_rows(r0, r1)
            if base is not None:
                out.sub_(base)

    def base_rows(self, r0: int, r1: int) -> torch.Tensor | None:
        """Rows ``[r0, r1)`` of the base weight as stored, shape ``(r1 - r0, cols)``; None without a base."""
        if self.base is None or self.is_lora:
            return None
        whole = self.spec.rows == r1 - r0
        b = self.base.read(self.base_key, None if whole else (r0, r1))
        _check_finite(b, self.base.path, self.base_key)
        return b.reshape(r1 - r0, self.spec.cols)

    def full(self) -> torch.Tensor:
        """The whole member, float64, shape ``(rows, cols)``."""
        return self.rows(0, self.spec.rows)


class TensorMember(UnitMember):
    """A member held in memory (for the pure-function API and tests).

    Parameters
    ----------
    tensor : Tensor
        Any shape with ``shape[0]`` rows; or pass ``factors=(L, R)`` for a factored member.
    """

    def __init__(
        self,
        tensor: torch.Tensor | None = None,
        *,
        factors: tuple[torch.Tensor, torch.Tensor] | None = None,
        name: str = "unit",
    ):
        if (tensor is None) == (factors is None):
            raise ValueError("pass exactly one of tensor or factors")
        if factors is not None:
            left, right = (f.to(torch.float64) for f in factors)
            shape: tuple[int, ...] = (left.shape[0], right.shape[1])
            self._mem_factors: tuple[torch.Tensor, torch.Tensor] | None = (left, right)
            self._tensor = None
            dtype = "F64"
        else:
            assert tensor is not None
            shape = tuple(tensor.shape)
            self._mem_factors = None
            self._tensor = tensor.detach()
            dtype = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}.get(tensor.dtype, "F64")
        self.spec = UnitSpec(name, shape, lora=factors is not None)
        self._dtype = dtype
        self.source = None  # type: ignore[assignment]
        self.base = None

    @property
    def dtype(self) -> str:
        return self._dtype

    @property
    def is_lora(self) -> bool:
        return self._mem_factors is not None

    def factors(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self._mem_factors

    def rows_into(self, r0: int, r1: int, out: torch.Tensor, *, subtract_base: bool = True) -> None:
        if self._mem_factors is not None:
            torch.matmul(self._mem_factors[0][r0:r1], self._mem_factors[1], out=out)
            return
        assert self._tensor is not None
        t = self._tensor.reshape(self.spec.rows, self.spec.cols)[r0:r1]
        _check_finite(t, "<memory>", self.spec.name)
        out.copy_(t)


class UnitStack:
    """The N members of one unit: the N × D matrix ``X`` the decompositions work on, never materialised whole.

    Parameters
    ----------
    spec : UnitSpec
    members : sequence of UnitMember
        One per model, in model order.

    Examples
    --------
    >>> stack = UnitStack.from_tensors([torch.ones(2, 3), torch.zeros(2, 3)])
    >>> stack.n, stack.spec.rows, stack.spec.cols
    (2, 2, 3)
    >>> stack.chunk(0, 1).shape  # (n_models, rows_in_chunk * cols)
    torch.Size([2, 3])
    """

    def __init__(self, spec: UnitSpec, members: Sequence[UnitMember]):
        self.spec = spec
        self.members = list(members)

    @classmethod
    def from_tensors(cls, tensors: Sequence[torch.Tensor], name: str = "unit") -> UnitStack:
        """Stack in-memory tensors of one shape (e.g. for tests or the pure-function API)."""
        if not tensors:
            raise ShapeMismatchError("no tensors to stack", tensor=name)
        shape = tuple(tensors[0].shape)
        for i, t in enumerate(tensors):
            if tuple(t.shape) != shape:
                raise ShapeMismatchError(
                    f"tensor {i} has shape {tuple(t.shape)}, tensor 0 has {shape}", tensor=name
                )
        members = [TensorMember(t, name=name) for t in tensors]
        return cls(UnitSpec(name, shape), members)

    @classmethod
    def from_factors(cls, factors: Sequence[tuple[torch.Tensor, torch.Tensor]], name: str = "unit") -> UnitStack:
        """Stack factored members ``L_i @ R_i`` (LoRA-style, scaling folded into ``L_i``)."""
        members = [TensorMember(factors=f, name=name) for f in factors]
        shape = members[0].spec.shape
        for i, m in enumerate(members):
            if m.spec.shape != shape:
                raise ShapeMismatchError(f"member {i} has shape {m.spec.shape}, member 0 has {shape}", tensor=name)
        return cls(UnitSpec(name, shape, lora=True), members)

    @property
    def n(self) -> int:
        return len(self.members)

    def chunk(self, r0: int, r1: int, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """Rows ``[r0, r1)`` of every member, flattened: float64 of shape ``(n_models, (r1 - r0) * cols)``.

        ``out`` (float64, that shape, contiguous) is filled and returned instead of a new tensor: streaming passes
        reuse one buffer rather than paying fresh page faults for every chunk.
        """
        shape = (self.n, (r1 - r0) * self.spec.cols)
        if out is None:
            out = torch.empty(shape, dtype=torch.float64)  # (n_models, chunk)
        elif tuple(out.shape) != shape or out.dtype != torch.float64 or not out.is_contiguous():
            raise ValueError(f"chunk out= must be a contiguous float64 tensor of shape {shape}")
        first = self.members[0]
        # Task vectors of one base: read the base rows once per chunk, not once per member.
        shared = first.base is not None and all(
            m.base is first.base and m.base_key == first.base_key for m in self.members
        )
        for i, m in enumerate(self.members):
            m.rows_into(r0, r1, out[i].view(r1 - r0, self.spec.cols), subtract_base=not shared)
        base = first.base_rows(r0, r1) if shared else None
        if base is not None:
            out.sub_(base.reshape(1, -1))
        return out

    def all_factored(self) -> bool:
        return all(m.is_lora for m in self.members)

    def row_chunks(self, chunk_bytes: int) -> list[tuple[int, int]]:
        """Row ranges whose float64 stack across all members fits in about ``chunk_bytes``."""
        per_row = max(1, self.n * self.spec.cols * 8)
        step = max(1, chunk_bytes // per_row)
        return [(r, min(r + step, self.spec.rows)) for r in range(0, self.spec.rows, step)]
