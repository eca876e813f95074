"""Inject one archive of PEFT adapters into a base torch model and switch between them without rebuilding.

:func:`serve` reads the archive's banks (:class:`~weightspace.serve.AdapterBank`), finds each unit's module in the
model (exact name, else the unique dotted-suffix match in either direction, as PEFT names are relative to the
wrapped model) and swaps it for a banked layer. The returned :class:`ServedModel` switches the adapter of the
whole model with one assignment (:meth:`ServedModel.set_adapter`) or gives each row of a batch its own adapter
(:meth:`ServedModel.set_adapter_rows`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from weightspace.decompose import SharedSubspace
from weightspace.errors import ParameterError, ShapeMismatchError, TensorKeyError, UnsupportedFormatError
from weightspace.serve._bank import AdapterBank
from weightspace.serve._layers import AdapterSelection, BankedLinear, BankedLoraLinear

__all__ = ["ServedModel", "find_module", "serve"]

PathLike = str | os.PathLike[str]


def find_module(model: nn.Module, name: str) -> str:
    """The name in ``model`` of the module an archive calls ``name``: exact, else the unique dotted-suffix match.

    Examples
    --------
    >>> m = nn.Sequential()
    >>> m.add_module("encoder", nn.Sequential())
    >>> m.encoder.add_module("q", nn.Linear(2, 2))
    >>> find_module(m, "bert.encoder.q"), find_module(m, "q")
    ('encoder.q', 'encoder.q')
    """
    names = [n for n, _ in model.named_modules() if n]
    if name in names:
        return name
    hits = [n for n in names if n.endswith("." + name) or name.endswith("." + n)]
    if len(hits) != 1:
        why = (
            "no module of the model matches it" if not hits else f"several modules match it: {', '.join(hits[:4])}"
        )
        raise TensorKeyError(f"cannot place this archive unit in the model: {why}", tensor=name)
    return hits[0]


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _linear(model: nn.Module, name: str, unit: str) -> nn.Linear:
    mod = model.get_submodule(name)
    if not isinstance(mod, nn.Linear):
        raise UnsupportedFormatError(
            f"module '{name}' is a {type(mod).__name__}; serving banks nn.Linear layers only", tensor=unit
        )
    return mod


class ServedModel:
    """A base model serving every adapter of an archive from shared banks.

    Attributes
    ----------
    model : nn.Module
        The base model, with banked layers in place of the adapted modules (modified in place).
    adapter_names : list of str
        Adapters in bank order.
    layers : dict of str to nn.Module
        Module name → its banked layer.
    selection : AdapterSelection
        Shared by every banked layer.
    """

    def __init__(
        self,
        model: nn.Module,
        bank: AdapterBank,
        layers: dict[str, nn.Module],
        originals: dict[str, nn.Module],
        selection: AdapterSelection,
    ):
        self.model = model
        self.adapter_names = list(bank.names)
        self.archive = bank.archive
        self.layers = layers
        self.selection = selection
        self._originals = originals
        self._index = {n: i for i, n in enumerate(self.adapter_names)}

    def index(self, name: str) -> int:
        """Bank index of adapter ``name``."""
        try:
            return self._index[name]
        except KeyError:
            listing = ", ".join(repr(n) for n in self.adapter_names[:10])
            raise ParameterError(f"no adapter {name!r} is served; adapters: {listing}") from None

    def set_adapter(self, name: str | None) -> None:
        """Use adapter ``name`` for every row from now on (None: the base model alone). O(1): one assignment."""
        index = None if name is None else self.index(name)
        self.selection.rows = None
        self.selection.index = index

    def set_adapter_rows(self, adapters: Sequence[str] | torch.Tensor | None) -> None:
        """Give each row of the next batches its own adapter: names, or bank indices of shape (batch,).

        ``None`` goes back to the single adapter of :meth:`set_adapter`.
        """
        if adapters is None:
            self.selection.rows = None
            return
        if isinstance(adapters, torch.Tensor):
            ids = adapters.to(torch.long)
            if ids.dim() != 1 or (
                ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= len(self.adapter_names))
            ):
                raise ParameterError(
                    f"adapter ids must be a 1-D tensor of bank indices in [0, {len(self.adapter_names)})"
                )
        else:
            ids = torch.tensor([self.index(n) for n in adapters], dtype=torch.long)
        device = next((t.device for layer in self.layers.values() for t in layer.buffers()), ids.device)
        self.selection.rows = ids.to(device)

    @contextlib.contextmanager
    def adapter_rows(self, adapters: Sequence[str] | torch.Tensor) -> Iterator[ServedModel]:
        """Per-row adapters inside a ``with`` block (restored after)."""
        saved = self.selection.rows
        self.set_adapter_rows(adapters)
        try:
            yield self
        finally:
            self.selection.rows = saved

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def memory_bytes(self) -> int:
        """Bytes of every bank buffer the adapters added to the model (U, V, cores, head banks)."""
        return sum(t.numel() * t.element_size() for layer in self.layers.values() for t in layer.buffers())

    def remove(self) -> nn.Module:
        """Put the original modules back and return the base model."""
        for name, original in self._originals.items():
            _set_module(self.model, name, original)
        self.layers.clear()
        return self.model


def serve(
    model: nn.Module,
    archive: PathLike | SharedSubspace | AdapterBank,
    adapters: Sequence[str] | None = None,
    *,
    ignore_private: bool = False,
) -> ServedModel:
    """Serve every adapter of an archive from one base model, with no adapter rebuilt.

    LoRA units become :class:`~weightspace.serve.BankedLoraLinear` layers (shared ``U``, ``V`` in frozen buffers
    and all N cores in one bank); full tensors the adapters carry (``modules_to_save`` heads) become
    :class:`~weightspace.serve.BankedLinear` layers. Banks take the dtype and device of the module they replace.

    Parameters
    ----------
    model : nn.Module
        The base model the adapters were trained on (modified in place).
    archive : path, SharedSubspace or AdapterBank
        An archive of PEFT adapters whose LoRA units are stored factored (the default ``compress`` method).
    adapters : sequence of str, optional
        Adapters to serve (default: all, fitted and added).
    ignore_private : bool, default False
        Serve without per-model private tensors (refused by default).

    Returns
    -------
    ServedModel
        With no adapter selected: call :meth:`ServedModel.set_adapter` first.

    Raises
    ------
    TensorKeyError
        A unit has no unique module in the model.
    UnsupportedFormatError
        A unit's module is not an ``nn.Linear``, an update is in the transposed (``fan_in_fan_out``) layout, or the
        archive is not a factored archive of PEFT adapters.
    """
    bank = (
        archive
        if isinstance(archive, AdapterBank)
        else AdapterBank.from_archive(archive, adapters, ignore_private=ignore_private)
    )
    selection = AdapterSelection()
    plan: dict[str, dict[str, str]] = {}  # module name -> role -> unit
    for unit in [*bank.lora, *bank.tensors]:
        module, _, role = unit.rpartition(".")
        if role not in ("weight", "bias") or not module:
            raise UnsupportedFormatError("serving maps units to a module's weight or bias only", tensor=unit)
        plan.setdefault(find_module(model, module), {})[role] = unit
    layers: dict[str, nn.Module] = {}
    originals: dict[str, nn.Module] = {}
    for name, roles in plan.items():
        lora_unit = roles.get("weight") if roles.get("weight") in bank.lora else None
        base = _linear(model, name, next(iter(roles.values())))
        if lora_unit is not None:
            lb = bank.lora[lora_unit]
            if "bias" in roles:
                raise UnsupportedFormatError(
                    "a LoRA-adapted layer with a per-adapter bias is not supported", tensor=roles["bias"]
                )
            if lb.fan_in_fan_out:
                raise UnsupportedFormatError(
                    "the update is in the transposed (fan_in_fan_out) layout; serving supports nn.Linear only",
                    tensor=lora_unit,
                )
            if lb.shape != tuple(base.weight.shape):
                raise ShapeMismatchError(
                    f"the archive's update has shape {lb.shape}, module '{name}' has weight {tuple(base.weight.shape)}",
                    tensor=lora_unit,
                )
            layer: nn.Module = BankedLoraLinear(base, lb.u, lb.v, lb.cores, selection, name)
        else:
            weights = bank.tensors[roles["weight"]].tensors if "weight" in roles else None
            biases = bank.tensors[roles["bias"]].tensors if "bias" in roles else None
            layer = BankedLinear(base, weights, biases, selection, name)
        originals[name] = base
        layers[name] = layer
    for name, layer in layers.items():
        _set_module(model, name, layer)
    return ServedModel(model, bank, layers, originals, selection)
