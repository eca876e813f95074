"""Where the units of a run execute: local threads or a Dask cluster, and on which device.

Units are independent, so a unit is the unit of work: :func:`open_executor` gives a :class:`LocalExecutor`
(``threads`` units at once in this process) or a :class:`DaskExecutor` (``scheduler="local:N"`` starts a
LocalCluster, ``scheduler="tcp://HOST:PORT"`` or ``client=`` uses a running one). :class:`RunOptions` carries the
choice (and the device, :func:`resolve_device`) from the CLI or the Python API to the library's loops; it never
changes what is computed.
"""

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
