"""Opt-in loading of pickled PyTorch state dicts (``.bin``, ``.pt``, ``.pth``, ``.ckpt``).

Pickle can run arbitrary code, so these files are refused unless the caller passes ``allow_pickle=True``
(``--allow-pickle`` on the CLI), and even then they are loaded only with ``torch.load(weights_only=True)``
passed *explicitly*: torch honours an explicit ``weights_only=True`` even when
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` is set, so a hostile environment variable cannot turn the restricted
unpickler off.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

from weightspace.errors import CorruptFileError, UnsafeFileError, UnsupportedFormatError
from weightspace.io._safetensors import open_regular_file

__all__ = ["PICKLE_SUFFIXES", "load_pickled_state_dict"]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
_WRAPPER_KEYS = ("state_dict", "model", "module")


def load_pickled_state_dict(path: Path, *, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """Load a flat ``{name: tensor}`` state dict from a pickle file, safely.

    Parameters
    ----------
    path : Path
        The pickle file.
    allow_pickle : bool
        Must be True; otherwise the file is refused with a message that suggests converting it.

    Returns
    -------
    dict of str to Tensor
        The tensors, on CPU.
    """
    if not allow_pickle:
        raise UnsafeFileError(
            "pickle checkpoints can run arbitrary code and are refused by default; convert the file to "
            "safetensors (e.g. `safetensors.torch.save_file(torch.load(p, weights_only=True), out)`) or pass "
            "--allow-pickle to load it with torch's restricted weights-only unpickler",
            path=path,
        )
    # Refuse FIFOs/devices before torch opens the path.
    os.close(open_regular_file(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnsafeFileError(
            f"refused by the weights-only unpickler ({first}); the file holds objects other than tensors, "
            "which could run code when loaded",
            path=path,
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CorruptFileError(
            f"cannot load as a torch checkpoint ({type(err).__name__}: {err})", path=path
        ) from None
    if isinstance(obj, dict):
        for wrapper in _WRAPPER_KEYS:
            if set(obj) == {wrapper} and isinstance(obj[wrapper], dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict):
        raise UnsupportedFormatError(
            f"expected a state dict (name -> tensor), got {type(obj).__name__}", path=path
        )
    out: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise UnsupportedFormatError(
                f"entry {k!r} is {type(v).__name__}, not a tensor; only flat state dicts are read", path=path
            )
        out[k] = v.detach().contiguous()
    return out
