"""What serving reads from an archive: per unit, one bank of every adapter's piece, ready for a layer.

* A LoRA unit stored factored gives a :class:`LoraBank`: the shared ``U`` (rows × k1) and ``V`` (cols × k2) and the
  cores of all N adapters in one tensor ``(N, k1, k2)`` (mean core included), so adapter ``i``'s update is
  ``U cores[i] Vᵀ``.
* A full tensor every adapter carries (a ``modules_to_save`` copy such as a task head, kept per model verbatim, or
  any unit that is not a LoRA update) gives a :class:`TensorBank` ``(N, *shape)``: every adapter's own tensor.
  Per-model tensors whose shapes differ between the served adapters have no bank and are refused (or skipped with
  ``ignore_private``).

Everything comes from the archive alone; the adapters' own files are never read.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from weightspace.decompose import SharedSubspace
from weightspace.errors import ParameterError, UnsupportedFormatError

__all__ = ["AdapterBank", "LoraBank", "TensorBank"]

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class LoraBank:
    """A LoRA unit's shared factors and every adapter's core.

    Attributes
    ----------
    unit : str
        The weight key (``<module>.weight``).
    u : Tensor of shape (rows, k1)
    v : Tensor of shape (cols, k2)
    cores : Tensor of shape (n_adapters, k1, k2)
        ``M + C_i``: adapter i's update is ``u @ cores[i] @ v.T`` (float64 as read).
    fan_in_fan_out : bool
        The base weight is stored transposed (GPT-2 ``Conv1D``): the update is in that layout.
    """

    unit: str
    u: torch.Tensor
    v: torch.Tensor
    cores: torch.Tensor
    fan_in_fan_out: bool = False

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.u.shape[0]), int(self.v.shape[0])


@dataclass(frozen=True)
class TensorBank:
    """A full tensor every adapter carries (e.g. its task head), one per adapter.

    Attributes
    ----------
    unit : str
        The tensor key (``<module>.weight`` or ``<module>.bias``).
    tensors : Tensor of shape (n_adapters, *shape)
    """

    unit: str
    tensors: torch.Tensor


@dataclass(frozen=True)
class AdapterBank:
    """Every unit of a PEFT archive as banks over the selected adapters.

    Attributes
    ----------
    names : list of str
        Adapter names, in bank order.
    lora : dict of str to LoraBank
    tensors : dict of str to TensorBank
    archive : str or None
    """

    names: list[str]
    lora: dict[str, LoraBank]
    tensors: dict[str, TensorBank]
    archive: str | None = None

    @classmethod
    def from_archive(
        cls,
        archive: PathLike | SharedSubspace,
        adapters: Sequence[str] | None = None,
        *,
        ignore_private: bool = False,
    ) -> AdapterBank:
        """Read the banks of ``adapters`` (default: every model, fitted or added) from a PEFT archive.

        Parameters
        ----------
        archive : path or SharedSubspace
        adapters : sequence of str, optional
        ignore_private : bool, default False
            Serve without the private tensors no bank can hold (shapes that differ between the served adapters);
            by default they are refused.

        Raises
        ------
        UnsupportedFormatError
            The archive does not hold PEFT adapters, a LoRA unit is not stored factored, or a private tensor
            has different shapes across the served adapters (without ``ignore_private``).
        """
        ss = archive if isinstance(archive, SharedSubspace) else SharedSubspace.load(archive)
        where = ss.path_
        if ss.kind_ != "peft":
            raise UnsupportedFormatError(
                "serving takes an archive of PEFT adapters; this one holds full checkpoints", path=where
            )
        names = list(adapters) if adapters is not None else list(ss.model_names_)
        if not names:
            raise ParameterError("no adapters to serve")
        if len(set(names)) != len(names):
            raise ParameterError("adapter names to serve must be unique")
        idx = torch.tensor([ss.model_index(n) for n in names], dtype=torch.long)
        lora: dict[str, LoraBank] = {}
        tensors: dict[str, TensorBank] = {}
        for key, unit in ss.units_.items():
            if unit.spec.lora:
                shared = unit.shared_factors()
                if shared is None:
                    raise UnsupportedFormatError(
                        f"this LoRA unit is stored with method {unit.method!r}, not factored; serving needs shared "
                        "factors (compress with the default method)",
                        path=where,
                        tensor=key,
                    )
                u, cores, v = shared
                rec = (ss.models_[int(idx[0])].lora or {}).get(key)
                ffo = bool(rec is not None and rec.fan_in_fan_out)
                lora[key] = LoraBank(key, u, v, cores.index_select(0, idx).contiguous(), ffo)
            else:
                stacked = torch.stack([unit.member(int(i)).reshape(unit.spec.shape) for i in idx])
                tensors[key] = TensorBank(key, stacked)  # (n_adapters, *shape)
        arc = ss.archive_
        for rec in ss.private_:
            shapes = {tuple(rec.shapes.get(n, ())) for n in names}
            if arc is None or len(shapes) != 1 or not all(n in rec.shapes for n in names):
                if ignore_private:
                    continue
                raise UnsupportedFormatError(
                    f"the served adapters keep private tensors of different shapes under this key ({rec.reason}); "
                    "no shared bank can hold them: pass ignore_private=True to serve without them",
                    path=where,
                    tensor=rec.key,
                )
            stacked = torch.stack([arc.private(n, rec.key).to(torch.float64) for n in names])
            tensors[rec.key] = TensorBank(rec.key, stacked)  # (n_adapters, *shape), stored verbatim per adapter
        return cls(names, lora, tensors, None if where is None else str(where))
