"""Write a model back in the layout it came from, atomically.

Used by ``reconstruct`` and ``merge``. Every writer builds the complete output in a temporary sibling of the
destination and renames it into place only when it is whole and fsynced.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from weightspace._atomic import atomic_dir, atomic_file
from weightspace.errors import UnsupportedFormatError
from weightspace.io._safetensors import save_safetensors

__all__ = ["lora_factors_from_delta", "output_name", "write_model"]

_SHARD_INDEX = "model.safetensors.index.json"


def output_name(name: str, fmt: str) -> str:
    """File or directory name for model ``name`` written in format ``fmt``."""
    if fmt == "safetensors":
        return f"{name}.safetensors"
    if fmt == "torch":
        return f"{name}.bin"
    return name


def write_model(
    dest: str | os.PathLike[str],
    fmt: str,
    tensors: Mapping[str, torch.Tensor],
    *,
    metadata: Mapping[str, str] | None = None,
    configs: Mapping[str, str] | None = None,
) -> Path:
    """Write ``tensors`` to ``dest`` in layout ``fmt``.

    Parameters
    ----------
    dest : path
        Output file (``safetensors``, ``torch`` file) or directory (``hf-dir``, ``hf-sharded``, ``peft``,
        ``torch-dir``).
    fmt : str
        ``safetensors``, ``hf-dir``, ``hf-sharded``, ``peft``, ``torch`` or ``torch-dir``.
    tensors : mapping of str to Tensor
        File keys → tensors (for ``peft``: the adapter's ``base_model.model.…lora_A.weight`` keys).
    metadata : mapping, optional
        Safetensors ``__metadata__``.
    configs : mapping of str to str, optional
        Small text files written next to the weights (``config.json``, ``adapter_config.json``, the shard index).
    """
    dest = Path(dest)
    configs = dict(configs or {})
    meta = dict(metadata or {})
    meta.setdefault("format", "pt")
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    if fmt == "safetensors":
        with atomic_file(dest) as tmp:
            save_safetensors(tmp, tensors, meta)
    elif fmt == "torch":
        with atomic_file(dest) as tmp:
            torch.save(tensors, tmp)
    elif fmt in ("hf-dir", "peft", "torch-dir"):
        weights = {
            "hf-dir": "model.safetensors",
            "peft": "adapter_model.safetensors",
            "torch-dir": "pytorch_model.bin",
        }
        with atomic_dir(dest) as tmp:
            if fmt == "torch-dir":
                torch.save(tensors, tmp / weights[fmt])
            else:
                save_safetensors(tmp / weights[fmt], tensors, meta)
            for name, text in configs.items():
                (tmp / name).write_text(text, encoding="utf-8")
    elif fmt == "hf-sharded":
        _write_sharded(dest, tensors, meta, configs)
    else:
        raise UnsupportedFormatError(f"cannot write format {fmt!r}", path=dest)
    return dest


def _write_sharded(
    dest: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str], configs: dict[str, str]
) -> None:
    old_index = json.loads(configs.pop(_SHARD_INDEX, "{}") or "{}")
    old_map: dict[str, str] = old_index.get("weight_map", {}) if isinstance(old_index, dict) else {}
    fallback = sorted(set(old_map.values()))[-1] if old_map else "model-00001-of-00001.safetensors"
    shards: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        shards.setdefault(old_map.get(key, fallback), {})[key] = t
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {
        "metadata": {
            **(old_index.get("metadata", {}) if isinstance(old_index, dict) else {}),
            "total_size": total,
        },
        "weight_map": {k: shard for shard, ts in sorted(shards.items()) for k in sorted(ts)},
    }
    with atomic_dir(dest) as tmp:
        for shard, ts in shards.items():
            save_safetensors(tmp / shard, ts, meta)
        (tmp / _SHARD_INDEX).write_text(json.dumps(index, indent=2), encoding="utf-8")
        for name, text in configs.items():
            (tmp / name).write_text(text, encoding="utf-8")


def lora_factors_from_delta(
    delta: torch.Tensor,
    rank: int,
    scaling: float,
    *,
    fan_in_fan_out: bool = False,
    a_shape: tuple[int, ...] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Best rank-``rank`` LoRA factors of an update, keeping the adapter's scaling.

    Solves ``s · B A ≈ ΔW`` by truncated SVD ``ΔW ≈ U_r S_r V_rᵀ`` with ``B = U_r S_r^{1/2} / √s`` and
    ``A = S_r^{1/2} V_rᵀ / √s`` (balanced factors), so ``lora_alpha`` and ``r`` in the config stay valid.

    Parameters
    ----------
    delta : Tensor of shape (rows, cols)
        The update in the base weight's 2-D layout (for ``fan_in_fan_out``, the transposed layout).
    rank : int
        Rank of the factors.
    scaling : float
        The module's ``s`` (``alpha / r`` or ``alpha / √r``).
    fan_in_fan_out : bool
        Whether the base weight is stored transposed.
    a_shape : tuple of int, optional
        Shape of ``lora_A`` for conv adapters (``(r, c_in, k…)``); B then gets trailing 1-dims.

    Returns
    -------
    B : Tensor, A : Tensor, rel_error : float
        Factors in PEFT layout and the relative Frobenius error of the truncation.
    """
    m = delta.to(torch.float64)
    if fan_in_fan_out:
        m = m.T  # (d_out, d_in): the orientation in which ΔW = s·B·A
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    k = min(rank, s.numel())
    root = s[:k].sqrt()
    b = torch.zeros(m.shape[0], rank, dtype=torch.float64)
    a = torch.zeros(rank, m.shape[1], dtype=torch.float64)
    b[:, :k] = u[:, :k] * root / scaling**0.5
    a[:k] = root[:, None] * vh[:k] / scaling**0.5
    approx = scaling * (b @ a)
    norm = float(torch.linalg.norm(m))
    rel = float(torch.linalg.norm(m - approx)) / norm if norm > 0 else 0.0
    if a_shape is not None:
        a = a.reshape(a_shape)
        b = b.reshape(b.shape[0], rank, *([1] * (len(a_shape) - 2)))
    return b, a, rel
