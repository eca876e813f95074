"""Where the units of a run execute: local threads or a Dask cluster, and on which device.

Units are independent, so a unit is the unit of work: :func:`open_executor` gives a :class:`LocalExecutor`
(``threads`` units at once in this process) or a :class:`DaskExecutor` (``scheduler="local:N"`` starts a
LocalCluster, ``scheduler="tcp://HOST:PORT"`` or ``client=`` uses a running one). :class:`RunOptions` carries the
choice (and the device, :func:`resolve_device`) from the CLI or the Python API to the library's loops; it never
changes what is computed.

Names are imported on first use, so the CLI can read :data:`RUN_OPTIONS_HELP` (for ``--help``) without importing
torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY: dict[str, str] = {
    "resolve_device": "weightspace.backends._device",
    "to_device": "weightspace.backends._device",
    "DaskExecutor": "weightspace.backends._executor",
    "Executor": "weightspace.backends._executor",
    "LocalExecutor": "weightspace.backends._executor",
    "Task": "weightspace.backends._executor",
    "open_executor": "weightspace.backends._executor",
    "require_dask": "weightspace.backends._executor",
    "torch_threads": "weightspace.backends._executor",
    "DEFAULT_CACHE_BYTES": "weightspace.backends._options",
    "DEVICES": "weightspace.backends._options",
    "RUN_OPTIONS_HELP": "weightspace.backends._options",
    "RunOptions": "weightspace.backends._options",
    "available_cores": "weightspace.backends._options",
    "parse_scheduler": "weightspace.backends._options",
    "give": "weightspace.backends._scratch",
    "scratch_scope": "weightspace.backends._scratch",
    "take": "weightspace.backends._scratch",
}

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "DEVICES",
    "RUN_OPTIONS_HELP",
    "DaskExecutor",
    "Executor",
    "LocalExecutor",
    "RunOptions",
    "Task",
    "available_cores",
    "give",
    "open_executor",
    "parse_scheduler",
    "require_dask",
    "resolve_device",
    "scratch_scope",
    "take",
    "to_device",
    "torch_threads",
]

if TYPE_CHECKING:
    from weightspace.backends._device import resolve_device, to_device
    from weightspace.backends._executor import (
        DaskExecutor,
        Executor,
        LocalExecutor,
        Task,
        open_executor,
        require_dask,
        torch_threads,
    )
    from weightspace.backends._options import (
        DEFAULT_CACHE_BYTES,
        DEVICES,
        RUN_OPTIONS_HELP,
        RunOptions,
        available_cores,
        parse_scheduler,
    )
    from weightspace.backends._scratch import give, scratch_scope, take


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'weightspace.backends' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
