"""Shared CLI plumbing: the typer app, consoles, progress bars, JSON output and the option vocabulary."""

from __future__ import annotations

import contextlib
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from weightspace._validation import Interval, validate_params
from weightspace.backends import RUN_OPTIONS_HELP, RunOptions, resolve_device
from weightspace.errors import InputError

__all__ = [
    "AllowPickle",
    "BaseOpt",
    "DeviceOpt",
    "ExcludeOpt",
    "JsonOpt",
    "PrivateOpt",
    "SchedulerOpt",
    "ThreadsOpt",
    "app",
    "emit_json",
    "err_console",
    "progress_bar",
    "rank_choice",
    "run_options",
]

app = typer.Typer(
    name="weightspace",
    help="Find, test and use the shared weight subspace of model collections — with honest controls.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Human-readable output goes to stderr so that --json keeps stdout to exactly one JSON object. Markup is off by
# default because messages quote file names, tensor keys and shapes ("[4, 12]") verbatim; the few styled lines
# pass markup=True and escape what they interpolate.
err_console = Console(stderr=True, highlight=False, markup=False)

JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print one JSON object on stdout (human text goes to stderr).")
]
BaseOpt = Annotated[
    Path | None,
    typer.Option("--base", "-b", help="Base model: members become task vectors W_i − W_base.", show_default=False),
]
AllowPickle = Annotated[
    bool,
    typer.Option(
        "--allow-pickle", help="Read .bin/.pt pickles (with torch's weights-only unpickler). Off by default."
    ),
]
PrivateOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--private", help="Glob of tensor keys to keep per model verbatim (repeatable).", show_default=False
    ),
]
ExcludeOpt = Annotated[
    list[str] | None,
    typer.Option("--exclude", help="Glob of tensor keys to leave out entirely (repeatable).", show_default=False),
]


ThreadsOpt = Annotated[
    int | None, typer.Option("--threads", help=RUN_OPTIONS_HELP["threads"], show_default=False, min=1)
]
SchedulerOpt = Annotated[
    str | None,
    typer.Option("--scheduler", help=RUN_OPTIONS_HELP["scheduler"], metavar="local[:N]|tcp://HOST:PORT"),
]
DeviceOpt = Annotated[str, typer.Option("--device", help=RUN_OPTIONS_HELP["device"], metavar="cpu|cuda|auto")]


def run_options(threads: int | None, scheduler: str | None, device: str = "cpu") -> dict[str, Any]:
    """The run options of a command (``--threads``, ``--scheduler``, ``--device``) as library keyword arguments,
    checked once by :class:`~weightspace.backends.RunOptions`."""
    opts = RunOptions(threads=threads, scheduler=scheduler, device=device)
    resolve_device(opts.device)  # a missing CUDA device fails before any work
    return {"threads": opts.threads, "scheduler": opts.scheduler, "device": opts.device}


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def emit_json(obj: Any) -> None:
    """Write ``obj`` as one JSON object on stdout (non-finite floats become null/"inf")."""
    sys.stdout.write(json.dumps(_clean(obj), indent=1) + "\n")
    sys.stdout.flush()


@contextlib.contextmanager
def progress_bar(description: str) -> Iterator[Any]:
    """A rich progress bar on stderr, exposed as a ``progress(stage, done, total)`` callback."""
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    )
    tasks: dict[str, Any] = {}

    def callback(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(f"{description}: {stage}", total=total)
        bar.update(tasks[stage], completed=done, total=total)

    with bar:
        yield callback


def rank_choice(rank: int | None, variance: float | None, default: int | float = 16) -> int | float:
    """``--rank K`` or ``--variance F`` (exclusive) as ``n_components``, checked by the shared constraints."""
    if rank is not None and variance is not None:
        raise InputError("pass either --rank or --variance, not both")
    rules = {"--rank": [Interval(int, 1, None)], "--variance": [Interval(float, 0, 1, closed="neither")]}
    given = {k: v for k, v in (("--rank", rank), ("--variance", variance)) if v is not None}
    validate_params("weightspace", rules, given)
    if rank is not None:
        return int(rank)
    if variance is not None:
        return float(variance)
    return default
