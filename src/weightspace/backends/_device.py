"""The device the linear algebra runs on.

Data is always read on the host; each chunk is copied to the device just before its products (``to_device``) and
small results come back with ``.cpu()``. Everything is float64 on every device, so a CUDA run equals the CPU run to
float64 rounding (the reduction order inside a GEMM differs).

Examples
--------
>>> resolve_device("cpu")
device(type='cpu')
>>> resolve_device("auto").type in ("cpu", "cuda")
True
"""

from __future__ import annotations

import torch

from weightspace.errors import ParameterError

__all__ = ["resolve_device", "to_device"]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``cpu``, ``cuda``/``cuda:N`` (checked to exist) or ``auto`` (cuda when available) as a ``torch.device``.

    Raises
    ------
    ParameterError
        CUDA was asked for and is not available, or the name is not a device.
    """
    if device is None:
        return torch.device("cpu")
    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, ValueError):
            raise ParameterError(
                f"The 'device' parameter must be 'cpu', 'cuda', 'cuda:N' or 'auto'. Got {device!r} instead."
            ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ParameterError(
                "device 'cuda' was requested but torch sees no CUDA device (use --device cpu or --device auto)"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ParameterError(
                f"device {dev} does not exist: torch sees {torch.cuda.device_count()} CUDA device(s)"
            )
    elif dev.type != "cpu":
        raise ParameterError(f"The 'device' parameter must be 'cpu', 'cuda', 'cuda:N' or 'auto'. Got {device!r}.")
    return dev


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device`` (no copy when it is there already; pinned-free, synchronous host → device copy)."""
    return t if t.device == device else t.to(device)
