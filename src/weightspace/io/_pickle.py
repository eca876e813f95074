"""Opt-in loading of pickled PyTorch state dicts (``.bin``, ``.pt``, ``.pth``, ``.ckpt``).

Pickle can run arbitrary code, so these files are refused unless the caller passes ``allow_pickle=True``
(``--allow-pickle`` on the CLI), and even then they are loaded only with ``torch.load(weights_only=True)``
passed *explicitly*: torch honours an explicit ``weights_only=True`` even when
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` is set, so a hostile environment variable cannot turn the restricted
unpickler off.

Before torch sees a zip checkpoint (the format ``torch.save`` writes), every member is checked: its declared
size must not exceed :data:`MAX_EXPANSION` times its stored size (``torch.save`` stores members uncompressed, so a
large ratio is a decompression bomb), the declared total must fit in available memory, and every member's CRC-32
is verified (a flipped bit is an error, not a silently different weight). A refusal by the restricted unpickler
names the global the file tried to load and never suggests turning the restriction off.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path

import torch

from weightspace.errors import CorruptFileError, UnsafeFileError, UnsupportedFormatError
from weightspace.io._pathpolicy import open_regular
from weightspace.io._safetensors import available_memory

__all__ = ["MAX_EXPANSION", "PICKLE_SUFFIXES", "load_pickled_state_dict"]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
MAX_EXPANSION = 16
"""Largest ratio of a zip member's declared size to its stored size (``torch.save`` stores, ratio ≈ 1)."""
_WRAPPER_KEYS = ("state_dict", "model", "module")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def _clean(text: str) -> str:
    """First line of a torch message, without terminal escapes or torch's advice to disable the restriction."""
    text = _ANSI.sub("", text).strip()
    first = text.splitlines()[0] if text else ""
    if "weights_only" in first:
        first = first.split("weights_only")[0].rstrip(" .,;:(`'\"") or "refused by the restricted unpickler"
    return first[:300]


def _check_zip(path: Path, fd: int) -> None:
    """Sizes and CRC-32 of every member of a zip checkpoint, before torch reads it."""
    with os.fdopen(os.dup(fd), "rb") as fh:
        if not zipfile.is_zipfile(fh):
            return  # a legacy (non-zip) torch pickle: nothing to check here
        fh.seek(0)
        try:
            with zipfile.ZipFile(fh) as zf:
                infos = zf.infolist()
                total = 0
                for info in infos:
                    if info.file_size > MAX_EXPANSION * info.compress_size + (1 << 16):
                        raise UnsafeFileError(
                            f"zip member {info.filename!r} declares {info.file_size} bytes from "
                            f"{info.compress_size} stored bytes ({info.file_size / max(info.compress_size, 1):.0f}×); "
                            "refused as a decompression bomb (torch.save stores its data uncompressed)",
                            path=path,
                        )
                    total += info.file_size
                avail = available_memory()
                if avail is not None and total > avail:
                    raise UnsafeFileError(
                        f"zip members declare {total} bytes, more than the {avail} bytes of available memory",
                        path=path,
                    )
                for info in infos:
                    with zf.open(info) as member:
                        while member.read(1 << 22):
                            pass
        except zipfile.BadZipFile as err:
            raise CorruptFileError(
                f"zip checkpoint is corrupted ({_clean(str(err))}; CRC or structure)", path=path
            ) from None
        except (OSError, EOFError, ValueError, NotImplementedError, RuntimeError) as err:
            raise CorruptFileError(
                f"zip checkpoint is unreadable ({type(err).__name__}: {_clean(str(err))})", path=path
            ) from None


def load_pickled_state_dict(
    path: Path, *, allow_pickle: bool, root: str | os.PathLike[str] | None = None
) -> dict[str, torch.Tensor]:
    """Load a flat ``{name: tensor}`` state dict from a pickle file, safely.

    Parameters
    ----------
    path : Path
        The pickle file.
    allow_pickle : bool
        Must be True; otherwise the file is refused with a message that suggests converting it.
    root : path, optional
        The model directory the file belongs to (a link out of it is refused).

    Returns
    -------
    dict of str to Tensor
        The tensors, on CPU.
    """
    if not allow_pickle:
        raise UnsafeFileError(
            "pickle checkpoints can run arbitrary code and are refused by default; convert the file to "
            "safetensors with a tool you trust, or pass --allow-pickle to load it with torch's restricted "
            "weights-only unpickler",
            path=path,
        )
    fd = open_regular(path, root=root)
    try:
        _check_zip(path, fd)
        with os.fdopen(os.dup(fd), "rb") as fh:  # a dup shares the offset: rewind after the checks
            fh.seek(0)
            try:
                with warnings.catch_warnings():  # torch's own notes about its unpickler are not for our users
                    warnings.simplefilter("ignore")
                    obj = torch.load(fh, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as err:
                found = _GLOBAL.search(_ANSI.sub("", str(err)))
                what = (
                    f"loads the global {found.group(1)}, which is not a tensor type"
                    if found
                    else "holds objects other than tensors"
                )
                raise UnsafeFileError(
                    f"refused: the pickle {what} and could run code when loaded; weightspace reads only plain "
                    "state dicts. Convert the checkpoint to safetensors with a tool you trust",
                    path=path,
                ) from None
            except (RuntimeError, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as err:
                raise CorruptFileError(
                    f"cannot load as a torch checkpoint ({type(err).__name__}: {_clean(str(err))})", path=path
                ) from None
    finally:
        os.close(fd)
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
                f"entry {str(k)[:80]!r} is {type(v).__name__}, not a tensor; only flat state dicts are read",
                path=path,
            )
        out[k] = v.detach().contiguous()
    return out
