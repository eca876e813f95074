"""Layers that serve N adapters from banks: one shared selection says which adapter each row uses.

:class:`BankedLoraLinear` adds ``x ΔW_iᵀ`` with ``ΔW_i = U cores[i] Vᵀ`` computed as ``((x V) cores[i]ᵀ) Uᵀ`` — three
thin products, no adapter is ever rebuilt. :class:`BankedLinear` replaces a linear layer's weight and bias by
adapter ``i``'s own (a task head). Both read an :class:`AdapterSelection` shared by every layer of a model, so
switching adapters is one assignment, whatever the number of layers or adapters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from weightspace.errors import ShapeMismatchError

__all__ = ["AdapterSelection", "BankedLinear", "BankedLoraLinear"]


@dataclass
class AdapterSelection:
    """Which adapter the next forward uses: one for the whole batch, one per row, or none (the base model).

    Attributes
    ----------
    index : int or None
        Bank index of the adapter every row uses.
    rows : Tensor of shape (batch,) or None
        Bank index per row (``int64``); takes precedence over ``index``.
    """

    index: int | None = None
    rows: torch.Tensor | None = None


def _rows(x: torch.Tensor, rows: torch.Tensor, where: str) -> torch.Tensor:
    if x.dim() < 2 or x.shape[0] != rows.shape[0]:
        raise ShapeMismatchError(
            f"the batch has {x.shape[0] if x.dim() else 0} rows but {rows.shape[0]} adapter ids were set",
            tensor=where,
        )
    return x.reshape(x.shape[0], -1, x.shape[-1])  # (batch, tokens, features)


class BankedLoraLinear(nn.Module):
    """An ``nn.Linear`` plus the update of the selected adapter(s), from shared factors and a bank of cores.

    Parameters
    ----------
    base_layer : nn.Linear
        Kept as is (its parameters are not copied).
    u : Tensor of shape (out_features, k1)
    v : Tensor of shape (in_features, k2)
    cores : Tensor of shape (n_adapters, k1, k2)
    selection : AdapterSelection
        Shared by every banked layer of the model.
    name : str
        The module's name, for messages.

    Attributes
    ----------
    u, vt, cores : buffers
        ``U``, ``Vᵀ`` (k2, in_features) and the core bank, frozen.

    Examples
    --------
    >>> lin = nn.Linear(3, 2)
    >>> u, v = torch.eye(2)[:, :1], torch.eye(3)[:, :1]
    >>> layer = BankedLoraLinear(lin, u, v, torch.tensor([[[0.0]], [[2.0]]]), AdapterSelection(index=1))
    >>> x = torch.ones(1, 3)
    >>> layer.delta(x).tolist()  # x ΔWᵀ with ΔW = U cores[1] Vᵀ
    [[2.0, 0.0]]
    >>> bool(torch.allclose(layer(x), lin(x) + layer.delta(x)))
    True
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        u: torch.Tensor,
        v: torch.Tensor,
        cores: torch.Tensor,
        selection: AdapterSelection,
        name: str = "",
    ) -> None:
        super().__init__()
        out_f, in_f = base_layer.weight.shape
        if u.shape[0] != out_f or v.shape[0] != in_f or cores.shape[1:] != (u.shape[1], v.shape[1]):
            raise ShapeMismatchError(
                f"factors U {tuple(u.shape)}, V {tuple(v.shape)}, cores {tuple(cores.shape)} do not fit a layer "
                f"of weight shape {(out_f, in_f)}",
                tensor=name,
            )
        self.base_layer = base_layer
        self.selection = selection
        self.name = name
        w = base_layer.weight
        self.register_buffer("u", u.to(device=w.device, dtype=w.dtype).contiguous(), persistent=False)
        self.register_buffer("vt", v.T.to(device=w.device, dtype=w.dtype).contiguous(), persistent=False)
        self.register_buffer("cores", cores.to(device=w.device, dtype=w.dtype).contiguous(), persistent=False)

    @property
    def n_adapters(self) -> int:
        return int(self.cores.shape[0])

    def delta(self, x: torch.Tensor) -> torch.Tensor | None:
        """``x ΔWᵀ`` for the selected adapter(s), or None when none is selected."""
        sel = self.selection
        if sel.rows is not None:
            z = F.linear(_rows(x, sel.rows, self.name), self.vt)  # (batch, tokens, k2)
            h = torch.bmm(z, self.cores.index_select(0, sel.rows).transpose(1, 2))  # (batch, tokens, k1)
            return F.linear(h, self.u).reshape(*x.shape[:-1], -1)  # (..., out_features)
        if sel.index is None:
            return None
        return F.linear(F.linear(F.linear(x, self.vt), self.cores[sel.index]), self.u)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        d = self.delta(x.to(self.u.dtype))
        return y if d is None else y + d.to(y.dtype)


class BankedLinear(nn.Module):
    """An ``nn.Linear`` whose weight and/or bias are replaced by the selected adapter's own (e.g. a task head).

    Parameters
    ----------
    base_layer : nn.Linear
        Used as is when no adapter is selected, and for a tensor the bank does not replace.
    weights : Tensor of shape (n_adapters, out_features, in_features) or None
    biases : Tensor of shape (n_adapters, out_features) or None
    selection : AdapterSelection
    name : str

    Examples
    --------
    >>> lin = nn.Linear(2, 1)
    >>> layer = BankedLinear(lin, torch.ones(2, 1, 2), torch.tensor([[0.0], [5.0]]), AdapterSelection(index=1))
    >>> layer(torch.ones(1, 2)).tolist()
    [[7.0]]
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        weights: torch.Tensor | None,
        biases: torch.Tensor | None,
        selection: AdapterSelection,
        name: str = "",
    ) -> None:
        super().__init__()
        out_f, in_f = base_layer.weight.shape
        if weights is not None and tuple(weights.shape[1:]) != (out_f, in_f):
            raise ShapeMismatchError(
                f"weight bank {tuple(weights.shape)} does not fit a layer of weight shape {(out_f, in_f)}",
                tensor=name,
            )
        if biases is not None and (base_layer.bias is None or tuple(biases.shape[1:]) != (out_f,)):
            raise ShapeMismatchError(f"bias bank {tuple(biases.shape)} does not fit this layer", tensor=name)
        self.base_layer = base_layer
        self.selection = selection
        self.name = name
        w = base_layer.weight
        self.register_buffer(
            "weights", None if weights is None else weights.to(w.device, w.dtype).contiguous(), persistent=False
        )
        self.register_buffer(
            "biases", None if biases is None else biases.to(w.device, w.dtype).contiguous(), persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sel, base = self.selection, self.base_layer
        if sel.rows is not None:
            xr = _rows(x, sel.rows, self.name)  # (batch, tokens, in)
            if self.weights is not None:
                y = torch.bmm(xr, self.weights.index_select(0, sel.rows).transpose(1, 2))
            else:
                y = F.linear(xr, base.weight)
            if self.biases is not None:
                y = y + self.biases.index_select(0, sel.rows)[:, None, :]
            elif base.bias is not None:
                y = y + base.bias
            return y.reshape(*x.shape[:-1], -1)
        if sel.index is None:
            return base(x)
        weight = base.weight if self.weights is None else self.weights[sel.index]
        bias = base.bias if self.biases is None else self.biases[sel.index]
        return F.linear(x, weight, bias)
