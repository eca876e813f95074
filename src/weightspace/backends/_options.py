"""Run options: where and how the units of one run execute, kept apart from the maths' hyperparameters.

A :class:`RunOptions` never changes a result beyond float64 rounding (the same maths runs per unit whatever the
backend); it only decides how many units are in flight, on which machines, on which device, and how much memory a
unit in flight may keep between its passes. The help text of every option lives in one dict,
:data:`RUN_OPTIONS_HELP`, which the CLI uses verbatim.

Examples
--------
>>> RunOptions(threads=2).workers
2
>>> RunOptions(scheduler="local:3").dask
True
>>> RunOptions(threads=0)
Traceback (most recent call last):
...
weightspace.errors.ParameterError: The 'threads' parameter of RunOptions must be None or an int >= 1. Got 0 instead.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from weightspace._validation import NONE, Interval, Kind, Options, validate_params
from weightspace.errors import ParameterError

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "DEVICES",
    "RUN_OPTIONS_HELP",
    "RunOptions",
    "available_cores",
    "parse_scheduler",
]

#: Memory (float64 bytes) for keeping units between the passes of a fit, shared by the units in flight on one
#: machine (each gets ``cache_bytes // units in flight``): a unit that fits its share is read once, not twice.
DEFAULT_CACHE_BYTES = 1 << 30

DEVICES = ("cpu", "cuda", "auto")

#: The one source of the run options' help text (CLI and docs).
RUN_OPTIONS_HELP: dict[str, str] = {
    "threads": (
        "Units processed at once on this machine (default: every core). Memory grows with it: one unit per "
        "thread is in flight."
    ),
    "scheduler": (
        "Run units on Dask: 'local' or 'local:N' starts a LocalCluster of N single-threaded workers on this "
        "machine, 'tcp://HOST:PORT' uses a running cluster whose workers see the same paths (needs "
        "weightspace[dask])."
    ),
    "device": (
        "Where the linear algebra runs (Gram, eigh, cores, merges, bases): cpu, cuda (or cuda:N), or auto "
        "(cuda when available). Data streams host → device one chunk at a time."
    ),
}

_LOCAL = re.compile(r"local(?::([0-9]+))?")
_REMOTE = re.compile(r"[a-z][a-z0-9+.-]*://\S+")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def parse_scheduler(scheduler: str) -> tuple[str, int | None]:
    """``("local", n_workers)`` or ``("remote", None)`` for a scheduler string.

    Examples
    --------
    >>> parse_scheduler("local:2"), parse_scheduler("tcp://10.0.0.1:8786")
    (('local', 2), ('remote', None))
    """
    m = _LOCAL.fullmatch(scheduler)
    if m is not None:
        n = int(m.group(1)) if m.group(1) else available_cores()
        if n < 1:
            raise ParameterError(f"--scheduler local:N needs N >= 1. Got {scheduler!r} instead.")
        return "local", n
    if _REMOTE.fullmatch(scheduler):
        return "remote", None
    raise ParameterError(
        "The 'scheduler' parameter must be 'local', 'local:N' (N workers on this machine) or a scheduler address "
        f"such as 'tcp://HOST:PORT'. Got {scheduler!r} instead."
    )


@dataclass(frozen=True)
class RunOptions:
    """How one run executes (never what it computes).

    Parameters
    ----------
    threads : int, optional
        Units in flight on this machine (default: every core). Ignored by Dask runs, whose workers bring their
        own threads; giving both is an error.
    scheduler : str, optional
        ``local``, ``local:N`` or a scheduler address (``tcp://HOST:PORT``): run units on Dask.
    client : distributed.Client, optional
        An existing Dask client (instead of ``scheduler``).
    device : {"cpu", "cuda", "cuda:N", "auto"}, default "cpu"
        Device of the linear algebra.
    cache_bytes : int
        Memory for keeping units between the passes of a fit, shared by the units in flight (a unit whose float64
        rows fit its share is read once).

    Attributes
    ----------
    dask : bool
        True when units run on Dask.
    workers : int
        Units in flight for a local run (``threads`` or every core).
    """

    threads: int | None = None
    scheduler: str | None = None
    client: Any = None
    device: str = "cpu"
    cache_bytes: int = DEFAULT_CACHE_BYTES

    def __post_init__(self) -> None:
        validate_params(
            "RunOptions",
            {
                "threads": [NONE, Interval(int, 1, None)],
                "scheduler": [NONE, Kind((str,), "a str")],
                "device": [Kind((str,), "a str")],
                "cache_bytes": [Interval(int, 0, None)],
            },
            {
                "threads": self.threads,
                "scheduler": self.scheduler,
                "device": self.device,
                "cache_bytes": self.cache_bytes,
            },
        )
        if self.scheduler is not None:
            parse_scheduler(self.scheduler)
        if self.scheduler is not None and self.client is not None:
            raise ParameterError("pass either scheduler= or client=, not both")
        if self.dask and self.threads is not None:
            raise ParameterError(
                "threads= sets local threads; a Dask run (scheduler= or client=) uses its workers' threads instead"
            )
        if not (self.device in DEVICES or re.fullmatch(r"cuda:[0-9]+", self.device)):
            validate_params("RunOptions", {"device": [Options(DEVICES)]}, {"device": self.device})

    @property
    def dask(self) -> bool:
        return self.scheduler is not None or self.client is not None

    @property
    def workers(self) -> int:
        return self.threads if self.threads is not None else available_cores()

    @classmethod
    def of(
        cls,
        options: RunOptions | None = None,
        *,
        threads: int | None = None,
        scheduler: str | None = None,
        client: Any = None,
        device: str | None = None,
    ) -> RunOptions:
        """``options`` (or the defaults) with any keyword given here taking precedence.

        Examples
        --------
        >>> RunOptions.of(RunOptions(device="auto"), threads=3)
        RunOptions(threads=3, scheduler=None, client=None, device='auto', cache_bytes=1073741824)
        """
        base = options if options is not None else cls()
        return cls(
            threads=threads if threads is not None else base.threads,
            scheduler=scheduler if scheduler is not None else base.scheduler,
            client=client if client is not None else base.client,
            device=device if device is not None else base.device,
            cache_bytes=base.cache_bytes,
        )
