"""Subspace layers: a frozen shared basis in buffers and only the coefficients as ``nn.Parameter`` (VeRA-style).

A :class:`SubspaceLinear` (or :class:`SubspaceConv` for ``nn.Conv1d/2d/3d``) wraps a base layer and computes, per
re-parametrised tensor (the weight, and optionally the bias),

* PCA:   ``T = m·μ + Σ_j c_j V_j``   with ``V`` of shape ``(k, rows * cols)`` and trainable ``c`` of shape ``(k,)``;
* HOSVD: ``T = m·μ + U C Vᵀ``       with ``U (rows, k1)``, ``V (cols, k2)`` and a trainable core ``C (k1, k2)``;

then uses ``W = W0 + T`` (archive of task vectors, ``delta=True``) or ``W = T`` (archive of raw weights,
``delta=False``). A conv weight ``out × in × kh × kw`` is the unit ``out × in·kh·kw`` and ``T`` is reshaped back.

The basis, factors and mean are buffers registered with ``persistent=`` the config's ``save_basis``, so a
``state_dict`` holds them only when the adapter is meant to be self-contained.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from weightspace.errors import ParameterError, ShapeMismatchError
from weightspace.units import UnitSpec

__all__ = ["SubspaceConv", "SubspaceLayer", "SubspaceLinear", "UnitBasis", "wrap_layer"]

Role = Literal["weight", "bias"]
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class UnitBasis:
    """The frozen pieces of one unit as a layer uses them, plus the initial coefficients.

    Attributes
    ----------
    unit : str
        The archive unit key (``"blocks.0.attn.q.weight"``).
    method : {"pca", "hosvd"}
    shape : tuple of int
        The unit's shape in its own layout (the layer tensor's shape).
    mean : Tensor of shape (rows, cols) or None
        ``μ``; None when the mean is not used.
    basis : Tensor of shape (k, rows * cols) or None
        PCA basis (row ``j`` is ``V_j`` flattened); None for HOSVD.
    u : Tensor of shape (rows, k1) or None
        HOSVD mode-1 factor; None for PCA.
    v : Tensor of shape (cols, k2) or None
        HOSVD mode-2 factor; None for PCA.
    init : Tensor of shape (k,) or (k1, k2)
        Initial coefficients (PCA) or core (HOSVD).

    Examples
    --------
    >>> b = UnitBasis("fc.weight", "pca", (3, 2), None, torch.eye(6)[:2], None, None, torch.zeros(2))
    >>> b.rows, b.cols, b.k
    (3, 2, 2)
    """

    unit: str
    method: Literal["pca", "hosvd"]
    shape: tuple[int, ...]
    mean: torch.Tensor | None
    basis: torch.Tensor | None
    u: torch.Tensor | None
    v: torch.Tensor | None
    init: torch.Tensor

    @property
    def rows(self) -> int:
        return UnitSpec(self.unit, self.shape).rows

    @property
    def cols(self) -> int:
        return UnitSpec(self.unit, self.shape).cols

    @property
    def k(self) -> int | tuple[int, int]:
        """``k`` (PCA) or ``(k1, k2)`` (HOSVD)."""
        if self.method == "hosvd":
            return (int(self.init.shape[0]), int(self.init.shape[1]))
        return int(self.init.shape[0])

    def check(self) -> None:
        """Raise :class:`ShapeMismatchError` if the pieces do not fit ``shape`` together."""
        rows, cols = self.rows, self.cols
        want: dict[str, tuple[int, ...]] = {}
        if self.mean is not None:
            want["mean"] = (rows, cols)
        if self.method == "pca":
            k = self.init.shape[0] if self.init.dim() == 1 else -1
            want["basis"] = (k, rows * cols)
            got = {"basis": None if self.basis is None else tuple(self.basis.shape)}
        else:
            k1, k2 = (self.init.shape[0], self.init.shape[1]) if self.init.dim() == 2 else (-1, -1)
            want["u"], want["v"] = (rows, k1), (cols, k2)
            got = {
                "u": None if self.u is None else tuple(self.u.shape),
                "v": None if self.v is None else tuple(self.v.shape),
            }
        if self.mean is not None:
            got["mean"] = tuple(self.mean.shape)
        for name, shape in want.items():
            if got.get(name) != shape:
                raise ShapeMismatchError(
                    f"{self.method} {name} has shape {got.get(name)}, expected {shape} for a unit of shape "
                    f"{self.shape} with {'k' if self.method == 'pca' else '(k1, k2)'}={self.k}",
                    tensor=self.unit,
                )


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half-precision coefficients would quantise the (small) Adam steps away, as in peft's fp32 adapter cast.
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class SubspaceLayer(nn.Module):
    """Base class: a base layer whose weight (and bias) live in a frozen subspace; only coefficients train.

    Parameters
    ----------
    base_layer : nn.Module
        The wrapped ``nn.Linear`` or ``nn.Conv*d``; its parameters are left as they are (``inject`` freezes them).
    delta : bool, default True
        ``True``: ``W = W0 + T`` (task-vector archive). ``False``: ``W = T`` replaces ``W0`` (raw-weight archive).

    Attributes
    ----------
    weight_coef : Parameter of shape (k,) or (k1, k2), or None
        Trainable coefficients of the weight unit (after :meth:`update_layer`).
    bias_coef : Parameter of shape (k_b,) or None
        Trainable coefficients of the bias unit, if the bias is re-parametrised.
    weight_mean, weight_basis, weight_u, weight_v, bias_mean, bias_basis : buffers or None
        The frozen subspace (see :class:`UnitBasis`).
    merged : bool
        Whether the adapted weights are currently written into the base layer.
    """

    def __init__(self, base_layer: nn.Module, *, delta: bool = True) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.delta = bool(delta)
        self.merged = False
        self.units: dict[str, UnitBasis] = {}  # role -> basis record (tensors dropped after registration)
        self._backup: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------------------------------------
    def _target(self, role: Role) -> torch.Tensor:
        t = getattr(self.base_layer, role, None)
        if not isinstance(t, torch.Tensor):
            raise ParameterError(f"layer {type(self.base_layer).__name__} has no {role} to re-parametrise")
        return t

    def update_layer(
        self, weight: UnitBasis | None, bias: UnitBasis | None = None, *, persistent: bool = True
    ) -> None:
        """Register the frozen subspace of the weight (and bias) and create the trainable coefficients.

        Parameters
        ----------
        weight, bias : UnitBasis or None
            The subspace of ``base_layer.weight`` / ``.bias``; None leaves that tensor untouched.
        persistent : bool, default True
            Whether the mean/basis buffers are part of ``state_dict`` (the config's ``save_basis``).

        Raises
        ------
        ShapeMismatchError
            A unit's shape differs from the layer tensor's shape (the message names both).
        """
        for role, basis in (("weight", weight), ("bias", bias)):
            if basis is None:
                continue
            target = self._target(role)  # type: ignore[arg-type]
            rows = target.shape[0] if target.dim() else 1
            cols = math.prod(target.shape[1:]) if target.dim() > 1 else 1
            if (basis.rows, basis.cols) != (rows, cols):
                raise ShapeMismatchError(
                    f"unit shape {tuple(basis.shape)} (rows×cols {basis.rows}×{basis.cols}) does not match the "
                    f"layer's {role} shape {tuple(target.shape)} (rows×cols {rows}×{cols})",
                    tensor=basis.unit,
                )
            basis.check()
            dev, dt = target.device, _compute_dtype(target.dtype)

            def buf(x: torch.Tensor | None, dev: torch.device = dev, dt: torch.dtype = dt) -> torch.Tensor | None:
                return None if x is None else x.detach().to(device=dev, dtype=dt).contiguous()

            self.register_buffer(f"{role}_mean", buf(basis.mean), persistent=persistent)
            if basis.method == "pca":
                self.register_buffer(f"{role}_basis", buf(basis.basis), persistent=persistent)
            else:
                self.register_buffer(f"{role}_u", buf(basis.u), persistent=persistent)
                self.register_buffer(f"{role}_v", buf(basis.v), persistent=persistent)
            coef = nn.Parameter(basis.init.detach().to(device=dev, dtype=dt).clone(), requires_grad=True)
            setattr(self, f"{role}_coef", coef)
            self.units[role] = UnitBasis(
                basis.unit, basis.method, tuple(basis.shape), None, None, None, None, coef
            )

    # ------------------------------------------------------------------------------------------------
    @property
    def n_trainable(self) -> int:
        """Number of coefficient entries (``k`` or ``k1·k2`` per re-parametrised tensor)."""
        return sum(getattr(self, f"{role}_coef").numel() for role in self.units)

    def subspace_tensor(self, role: Role = "weight") -> torch.Tensor:
        """``T = m·μ + Σ c_j V_j`` (PCA) or ``m·μ + U C Vᵀ`` (HOSVD), in the layer tensor's shape.

        Gradients flow to the coefficients. Computed in float32 for half-precision base layers.
        """
        rec = self.units[role]
        target = self._target(role)
        coef: torch.Tensor = getattr(self, f"{role}_coef")
        mean: torch.Tensor | None = getattr(self, f"{role}_mean")
        rows, cols = rec.rows, rec.cols
        if rec.method == "pca":
            basis: torch.Tensor = getattr(self, f"{role}_basis")
            flat = mean.reshape(-1) if mean is not None else coef.new_zeros(rows * cols)  # (rows * cols,)
            if coef.numel():
                flat = torch.addmv(flat, basis.T, coef)  # μ + Vᵀ c, one fused kernel
            return flat.reshape(target.shape)
        u: torch.Tensor = getattr(self, f"{role}_u")
        v: torch.Tensor = getattr(self, f"{role}_v")
        core = (u @ coef) @ v.T  # (rows, cols); k1, k2 are small so (U C) first is the cheap order
        if mean is not None:
            core = core + mean
        return core.reshape(target.shape)

    def effective(self, role: Role = "weight") -> torch.Tensor:
        """The tensor the layer applies: ``W0 + T`` (delta) or ``T`` (replace); ``W0`` if ``role`` is not adapted."""
        target = self._target(role)
        if role not in self.units:
            return target
        t = self.subspace_tensor(role)
        if self.delta:
            t = target.to(t.dtype) + t
        return t.to(target.dtype)

    def get_delta_weight(self, role: Role = "weight") -> torch.Tensor:
        """``W_eff − W0`` in the layer tensor's shape (so ``W0 + get_delta_weight() == W_eff``, as in PEFT).

        For a task-vector archive this is ``T``; for a raw-weight archive it is ``T − W0``.
        """
        target = self._target(role)
        if role not in self.units:
            return torch.zeros_like(target)
        t = self.subspace_tensor(role)
        if not self.delta:
            t = t - target.to(t.dtype)
        return t.to(target.dtype)

    # ------------------------------------------------------------------------------------------------
    def merge(self) -> None:
        """Write the adapted tensors into the base layer (forward then costs what the base layer costs)."""
        if self.merged:
            warnings.warn("layer is already merged; nothing to do", UserWarning, stacklevel=2)
            return
        with torch.no_grad():
            for role in self.units:
                target = self._target(role)  # type: ignore[arg-type]
                new = self.effective(role)  # type: ignore[arg-type]
                if not bool(torch.isfinite(new).all()):
                    raise ParameterError(
                        f"merging unit '{self.units[role].unit}' would write non-finite values; check the coefficients"
                    )
                # A copy (rather than subtracting on unmerge) makes unmerge exact, also for raw-weight archives.
                self._backup[role] = target.detach().clone()
                target.copy_(new)
        self.merged = True

    def unmerge(self) -> None:
        """Restore the base layer's own tensors after :meth:`merge` (bit-exact)."""
        if not self.merged:
            warnings.warn("layer is not merged; nothing to do", UserWarning, stacklevel=2)
            return
        with torch.no_grad():
            for role, saved in self._backup.items():
                self._target(role).copy_(saved)  # type: ignore[arg-type]
        self._backup.clear()
        self.merged = False

    def _apply(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``base_layer`` applied with the adapted weight and bias (formed once per call)."""
        if self.merged:
            return self.base_layer(x)
        bias = self.effective("bias") if getattr(self.base_layer, "bias", None) is not None else None
        return self._apply(x, self.effective("weight"), bias)

    def extra_repr(self) -> str:
        parts = [f"delta={self.delta}"]
        for role, rec in self.units.items():
            parts.append(f"{role}={rec.unit!r} {rec.method} k={rec.k}")
        return ", ".join(parts)


class SubspaceLinear(SubspaceLayer):
    """A :class:`SubspaceLayer` around ``nn.Linear``.

    For HOSVD with ``delta=True`` the update is applied as a low-rank product ``((x V) Cᵀ) Uᵀ`` when that costs
    fewer flops than forming ``U C Vᵀ`` (large ``k1·k2`` or few tokens per call).

    Examples
    --------
    >>> base = nn.Linear(3, 2, bias=False)
    >>> basis = UnitBasis("fc.weight", "pca", (2, 3), None, torch.eye(6)[:1], None, None, torch.zeros(1))
    >>> layer = SubspaceLinear(base)
    >>> layer.update_layer(basis)
    >>> x = torch.randn(4, 3)
    >>> torch.equal(layer(x), base(x)), layer.n_trainable
    (True, 1)
    >>> with torch.no_grad():
    ...     _ = layer.weight_coef.fill_(2.0)
    >>> layer.get_delta_weight().detach()
    tensor([[2., 0., 0.],
            [0., 0., 0.]])
    """

    def __init__(self, base_layer: nn.Linear, *, delta: bool = True) -> None:
        if not isinstance(base_layer, nn.Linear):
            raise ParameterError(f"SubspaceLinear wraps nn.Linear, got {type(base_layer).__name__}")
        super().__init__(base_layer, delta=delta)

    def _lowrank_pays(self, x: torch.Tensor) -> bool:
        rec = self.units.get("weight")
        if rec is None or rec.method != "hosvd" or not self.delta:
            return False
        k1, k2 = rec.k  # type: ignore[misc]
        tokens = x.numel() // max(1, rec.cols)
        dense = rec.rows * k2 * (k1 + rec.cols)  # (U C) then (U C) Vᵀ
        lowrank = tokens * (rec.cols * k2 + k2 * k1 + k1 * rec.rows)
        return lowrank < dense

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged or not self._lowrank_pays(x):
            return super().forward(x)
        bias = self.effective("bias") if self.base_layer.bias is not None else None
        w0 = self.base_layer.weight
        mean = self.weight_mean
        dense = w0 if mean is None else w0 + mean.to(w0.dtype)
        z = F.linear(x.to(self.weight_u.dtype), self.weight_v.T)  # (..., k2)
        z = F.linear(F.linear(z, self.weight_coef), self.weight_u)  # (..., k1) then (..., rows)
        return F.linear(x, dense, bias) + z.to(x.dtype)

    def _apply(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, weight, bias)


class SubspaceConv(SubspaceLayer):
    """A :class:`SubspaceLayer` around ``nn.Conv1d``, ``nn.Conv2d`` or ``nn.Conv3d`` (unit ``out × in·k…``).

    Examples
    --------
    >>> base = nn.Conv1d(2, 3, kernel_size=2)
    >>> layer = SubspaceConv(base)
    >>> layer.update_layer(UnitBasis("c.weight", "pca", (3, 2, 2), None, torch.eye(12)[:2], None, None,
    ...                                torch.zeros(2)))
    >>> x = torch.randn(1, 2, 5)
    >>> torch.equal(layer(x), base(x))
    True
    """

    def __init__(self, base_layer: nn.Module, *, delta: bool = True) -> None:
        if not isinstance(base_layer, _CONV):
            raise ParameterError(f"SubspaceConv wraps nn.Conv1d/2d/3d, got {type(base_layer).__name__}")
        super().__init__(base_layer, delta=delta)

    def _apply(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return self.base_layer._conv_forward(x, weight, bias)  # type: ignore[operator]


def wrap_layer(module: nn.Module, *, delta: bool = True) -> SubspaceLayer:
    """The subspace layer class matching ``module`` (``nn.Linear`` or ``nn.Conv*d``), wrapping it.

    Raises
    ------
    ParameterError
        ``module`` is of another type.
    """
    if isinstance(module, nn.Linear):
        return SubspaceLinear(module, delta=delta)
    if isinstance(module, _CONV):
        return SubspaceConv(module, delta=delta)
    raise ParameterError(
        f"cannot re-parametrise a {type(module).__name__}; supported: nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d"
    )


def supports(module: nn.Module) -> bool:
    """Whether :func:`wrap_layer` accepts ``module``."""
    return isinstance(module, (nn.Linear, *_CONV))
