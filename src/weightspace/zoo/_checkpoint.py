"""Zoo checkpoints: float32 safetensors with ``weightspace.zoo``/``weightspace.task`` metadata, read and loaded strictly.

Both directions go through :mod:`weightspace.io` (one safetensors writer; the validated, pread-based reader).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from weightspace._atomic import atomic_file
from weightspace.errors import ShapeMismatchError, TensorKeyError
from weightspace.io import SafetensorsFile, save_safetensors

__all__ = ["META_TASK", "META_ZOO", "load_state_strict", "read_checkpoint", "save_checkpoint"]

META_ZOO = "weightspace.zoo"
META_TASK = "weightspace.task"


def save_checkpoint(
    path: str | os.PathLike[str],
    state: Mapping[str, Tensor],
    *,
    zoo: str,
    task: str,
    extra_meta: Mapping[str, str] | None = None,
) -> None:
    """Atomically write the float tensors of ``state`` as float32 safetensors with zoo/task metadata."""
    tensors = {
        k: v.detach().to(device="cpu", dtype=torch.float32)
        for k, v in state.items()
        if torch.is_tensor(v) and v.is_floating_point()
    }
    meta = {"format": "pt", META_ZOO: zoo, META_TASK: task, **(extra_meta or {})}
    # Sorted keys and metadata: the same state always gives the same bytes (rebuilds are byte-identical).
    with atomic_file(path) as tmp:
        save_safetensors(tmp, {k: tensors[k] for k in sorted(tensors)}, {k: str(meta[k]) for k in sorted(meta)})


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a safetensors file: (tensors, metadata), through weightspace's validated reader.

    Missing, non-regular or malformed files raise :class:`~weightspace.errors.InputError` subclasses naming the
    file (and tensor).
    """
    st = SafetensorsFile(path)
    return {k: st.read(k) for k in st}, dict(st.metadata)


def load_state_strict(model: nn.Module, state: Mapping[str, Tensor], *, path: str | None = None) -> None:
    """Copy ``state`` into ``model`` after checking keys and shapes, with errors that name the tensor."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing:
        raise TensorKeyError(f"state dict lacks {len(missing)} tensor(s): {', '.join(missing[:8])}", path=path)
    if unexpected:
        raise TensorKeyError(
            f"state dict has {len(unexpected)} tensor(s) this architecture does not: {', '.join(unexpected[:8])}",
            path=path,
        )
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ShapeMismatchError(
                f"expected shape {tuple(own[k].shape)}, got {tuple(v.shape)} (wrong task head?)",
                path=path,
                tensor=k,
            )
    model.load_state_dict({k: v.detach().to(dtype=own[k].dtype) for k, v in state.items()})
