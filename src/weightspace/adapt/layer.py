"""Subspace layers: a frozen shared basis in buffers and only the coefficients as ``nn.Parameter`` (VeRA-style).

A :class:`SubspaceLinear` (or :class:`SubspaceConv` for ``nn.Conv1d/2d/3d``) wraps a base layer and computes, per
re-parametrised tensor (the weight, and optionally the bias), ``T = m·μ + S(c)`` where ``S`` is the
decomposition's own map from coefficients to a tensor (:meth:`~weightspace.decompose.UnitFit.synthesize`):

* model-axis PCA: ``S(c) = Σ_j c_j V_j``  with ``V`` of shape ``(k, rows * cols)`` and trainable ``c`` of shape ``(k,)``;
* Tucker (HOSVD):  ``S(C) = U C Vᵀ``      with ``U (rows, k1)``, ``V (cols, k2)`` and a trainable core ``C (k1, k2)``;

then uses ``W = W0 + T`` (archive of task vectors, ``delta=True``) or ``W = T`` (archive of raw weights,
``delta=False``). A conv weight ``out × in × kh × kw`` is the unit ``out × in·kh·kw`` and ``T`` is reshaped back.

The frozen pieces and the mean are buffers registered with ``persistent=`` the config's ``save_basis``, so a
``state_dict`` holds them only when the adapter is meant to be self-contained. The layer never branches on the
method: it looks the decomposition up in :data:`~weightspace.decompose.UNIT_FITS`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from weightspace.decompose import UNIT_FITS, Parametrisation, UnitFit
from weightspace.errors import ParameterError, ShapeMismatchError
from weightspace.units import UnitSpec

__all__ = ["LayerUnit", "SubspaceConv", "SubspaceLayer", "SubspaceLinear", "wrap_layer"]

Role = Literal["weight", "bias"]
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class LayerUnit:
    """What a layer remembers of one re-parametrised tensor (its tensors live in buffers and the parameter).

    Attributes
    ----------
    unit : str
        The archive unit key (``"blocks.0.attn.q.weight"``).
    method : str
        The decomposition's registry name.
    shape : tuple of int
        The unit's shape in its own layout.
    buffers : tuple of str
        Names of the frozen pieces (besides the mean).
    k : int or tuple of int
        Coefficient shape.
    """

    unit: str
    method: str
    shape: tuple[int, ...]
    buffers: tuple[str, ...]
    k: int | tuple[int, ...]

    @property
    def rows(self) -> int:
        return UnitSpec(self.unit, self.shape).rows

    @property
    def cols(self) -> int:
        return UnitSpec(self.unit, self.shape).cols

    @property
    def fit_class(self) -> type[UnitFit]:
        return UNIT_FITS.get(self.method)


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
    weight_mean, bias_mean : buffer or None
        The frozen mean (None when the mean is not used).
    weight_<piece>, bias_<piece> : buffers
        The frozen pieces of the decomposition (``weight_basis`` for PCA, ``weight_u`` / ``weight_v`` for
        Tucker; see :class:`~weightspace.decompose.Parametrisation`).
    merged : bool
        Whether the adapted weights are currently written into the base layer.
    """

    def __init__(self, base_layer: nn.Module, *, delta: bool = True) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.delta = bool(delta)
        self.merged = False
        self.units: dict[str, LayerUnit] = {}  # role -> what was re-parametrised (tensors live in buffers)
        self._backup: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------------------------------------
    def _target(self, role: Role) -> torch.Tensor:
        t = getattr(self.base_layer, role, None)
        if not isinstance(t, torch.Tensor):
            raise ParameterError(f"layer {type(self.base_layer).__name__} has no {role} to re-parametrise")
        return t

    def update_layer(
        self, weight: Parametrisation | None, bias: Parametrisation | None = None, *, persistent: bool = True
    ) -> None:
        """Register the frozen subspace of the weight (and bias) and create the trainable coefficients.

        Parameters
        ----------
        weight, bias : Parametrisation or None
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
            spec = basis.spec
            if (spec.rows, spec.cols) != (rows, cols):
                raise ShapeMismatchError(
                    f"unit shape {tuple(basis.shape)} (rows×cols {spec.rows}×{spec.cols}) does not match the "
                    f"layer's {role} shape {tuple(target.shape)} (rows×cols {rows}×{cols})",
                    tensor=basis.unit,
                )
            basis.check()
            dev, dt = target.device, _compute_dtype(target.dtype)

            def buf(x: torch.Tensor | None, dev: torch.device = dev, dt: torch.dtype = dt) -> torch.Tensor | None:
                return None if x is None else x.detach().to(device=dev, dtype=dt).contiguous()

            self.register_buffer(f"{role}_mean", buf(basis.mean), persistent=persistent)
            for piece, tensor in basis.buffers.items():
                self.register_buffer(f"{role}_{piece}", buf(tensor), persistent=persistent)
            coef = nn.Parameter(basis.init.detach().to(device=dev, dtype=dt).clone(), requires_grad=True)
            setattr(self, f"{role}_coef", coef)
            self.units[role] = LayerUnit(
                basis.unit, basis.method, tuple(basis.shape), tuple(basis.buffers), basis.k
            )

    # ------------------------------------------------------------------------------------------------
    @property
    def n_trainable(self) -> int:
        """Number of coefficient entries (``k`` or ``k1·k2`` per re-parametrised tensor)."""
        return sum(getattr(self, f"{role}_coef").numel() for role in self.units)

    def _pieces(self, role: str) -> dict[str, torch.Tensor]:
        return {piece: getattr(self, f"{role}_{piece}") for piece in self.units[role].buffers}

    def subspace_tensor(self, role: Role = "weight") -> torch.Tensor:
        """``T = m·μ + S(c)`` (e.g. ``Σ c_j V_j`` or ``U C Vᵀ``), in the layer tensor's shape.

        Gradients flow to the coefficients. Computed in float32 for half-precision base layers.
        """
        rec = self.units[role]
        target = self._target(role)
        coef: torch.Tensor = getattr(self, f"{role}_coef")
        mean: torch.Tensor | None = getattr(self, f"{role}_mean")
        t = rec.fit_class.synthesize(self._pieces(role), coef, rec.rows, rec.cols)  # (rows, cols)
        if mean is not None:
            t = t + mean
        return t.reshape(target.shape)

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

    With ``delta=True`` the update is applied without forming it when the decomposition offers a cheaper
    product (:meth:`~weightspace.decompose.UnitFit.lowrank_apply`; e.g. Tucker's ``((x V) Cᵀ) Uᵀ`` for large
    ``k1·k2`` or few tokens per call).

    Examples
    --------
    >>> from weightspace.decompose import PCAUnit
    >>> base = nn.Linear(3, 2, bias=False)
    >>> basis = Parametrisation("fc.weight", PCAUnit.method, (2, 3), {"basis": torch.eye(6)[:1]}, None, torch.zeros(1))
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rec = self.units.get("weight")
        if self.merged or rec is None or not self.delta:
            return super().forward(x)
        z = rec.fit_class.lowrank_apply(x, self._pieces("weight"), self.weight_coef)
        if z is None:
            return super().forward(x)
        bias = self.effective("bias") if self.base_layer.bias is not None else None
        w0 = self.base_layer.weight
        mean = self.weight_mean
        dense = w0 if mean is None else w0 + mean.to(w0.dtype)
        return F.linear(x, dense, bias) + z.to(x.dtype)

    def _apply(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, weight, bias)


class SubspaceConv(SubspaceLayer):
    """A :class:`SubspaceLayer` around ``nn.Conv1d``, ``nn.Conv2d`` or ``nn.Conv3d`` (unit ``out × in·k…``).

    Examples
    --------
    >>> base = nn.Conv1d(2, 3, kernel_size=2)
    >>> layer = SubspaceConv(base)
    >>> from weightspace.decompose import PCAUnit
    >>> layer.update_layer(Parametrisation("c.weight", PCAUnit.method, (3, 2, 2), {"basis": torch.eye(12)[:2]},
    ...                                    None, torch.zeros(2)))
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
