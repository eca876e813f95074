"""Shared CLI plumbing: the typer app, consoles, progress, JSON output and the option vocabulary.

One vocabulary across commands: ``-o/--out`` is always the output path and ``--format`` the output format;
``--json`` prints one JSON object on stdout (errors too: ``{"error", "path", "tensor", "exit_code"}``);
``--quiet`` silences progress. Nothing here imports torch, so ``weightspace --help`` stays fast: commands import
the library inside their bodies.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator, Sequence
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from weightspace._json import json_safe
from weightspace._progress import ProgressLines
from weightspace._validation import Interval, validate_params
from weightspace.backends import RUN_OPTIONS_HELP  # torch-free: the CLI's --help imports no torch
from weightspace.errors import InputError

__all__ = [
    "MODELS_HELP",
    "AllowPickle",
    "BaseOpt",
    "DeviceOpt",
    "ExcludeOpt",
    "FollowSymlinksOpt",
    "JsonOpt",
    "ModelsArg",
    "OverwriteOpt",
    "PrivateOpt",
    "QuietOpt",
    "SchedulerOpt",
    "ThreadsOpt",
    "app",
    "default_base",
    "emit_json",
    "err_console",
    "print_table",
    "progress_bar",
    "rank_choice",
    "read_policy",
    "run_options",
    "say",
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

MODELS_HELP = (
    "Checkpoints: files, model/adapter dirs, folders of checkpoints, globs, @list.txt (paths relative to the "
    "current directory), or Hugging Face Hub ids (org/name, org/name@rev, hf://org/name/sub; from the local cache)."
)
ModelsArg = Annotated[list[str], typer.Argument(help=MODELS_HELP, show_default=False)]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print one JSON object on stdout (human text goes to stderr).")
]
QuietOpt = Annotated[
    bool,
    typer.Option("--quiet", "-q", help="No progress bars or progress lines (results and errors still print)."),
]
BaseOpt = Annotated[
    str | None,
    typer.Option(
        "--base",
        "-b",
        help="Base model (path or Hub id): members become task vectors W_i − W_base.",
        show_default=False,
    ),
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
OverwriteOpt = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Replace an existing -o path even if weightspace did not write it (refused by default).",
    ),
]
FollowSymlinksOpt = Annotated[
    bool,
    typer.Option(
        "--follow-symlinks",
        help="Read files that are symbolic links out of their model or archive folder (refused by default).",
    ),
]


def read_policy(follow_symlinks: bool) -> None:
    """Apply ``--follow-symlinks`` for the rest of the command (``main`` runs each command in its own context)."""
    from weightspace.io import set_follow_symlinks

    set_follow_symlinks(follow_symlinks)


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
    from weightspace.backends import RunOptions, resolve_device

    opts = RunOptions(threads=threads, scheduler=scheduler, device=device)
    resolve_device(opts.device)  # a missing CUDA device fails before any work
    return {"threads": opts.threads, "scheduler": opts.scheduler, "device": opts.device}


def emit_json(obj: Any) -> None:
    """Write ``obj`` as one JSON object on stdout (non-finite floats become null/"inf")."""
    sys.stdout.write(json.dumps(json_safe(obj), indent=1) + "\n")
    sys.stdout.flush()


def say(message: str, *, quiet: bool = False) -> None:
    """One plain line of human text on stderr (stage messages, notes); nothing with ``--quiet``."""
    if not quiet:
        err_console.print(message, markup=False, highlight=False, soft_wrap=True)


def _noop(stage: str, done: int, total: int) -> None:
    return None


@contextlib.contextmanager
def progress_bar(description: str, *, quiet: bool = False) -> Iterator[Any]:
    """Progress on stderr as a ``progress(stage, done, total)`` callback.

    On a terminal: rich bars (one per stage, with elapsed time and ETA). Otherwise (a pipe, a log file, CI):
    plain lines ``description: stage done/total (pct), elapsed, ETA`` when a stage starts, every 10 s and when
    it ends. With ``quiet``: nothing.
    """
    if quiet:
        yield _noop
        return
    if not err_console.is_terminal:
        yield ProgressLines(lambda line: say(line), prefix=description)
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    )
    tasks: dict[str, Any] = {}

    def callback(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(f"{escape(description)}: {escape(stage)}", total=total)
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


def print_table(
    title: str | None,
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    legend: Sequence[str] = (),
    left: int = 1,
    width: int | None = None,
) -> None:
    """Print a table on stderr that fits the console (80 columns when not a terminal), never cutting a cell.

    Columns that do not fit are moved into a continuation table that repeats the first ``left`` (label)
    columns; ``legend`` lines (what each header means) follow the table.

    Parameters
    ----------
    title : str or None
    headers : sequence of str
        Column headers; keep them short and explain them in ``legend``.
    rows : sequence of sequence of str
        Cell texts, one per header.
    legend : sequence of str
        Lines printed (dim) under the table.
    left : int, default 1
        Leading columns that are left-aligned and repeated in every part.
    width : int, optional
        Total width (default: the console's).
    """
    from rich.table import Table
    from rich.text import Text

    total = width or err_console.width
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    pad = 2  # box=None tables put one space on each side of a cell
    fixed = sum(widths[:left]) + pad * left
    parts: list[list[int]] = []
    current: list[int] = []
    used = fixed
    for i in range(left, len(headers)):
        need = widths[i] + pad
        if current and used + need > total:
            parts.append(current)
            current, used = [], fixed
        current.append(i)
        used += need
    parts.append(current)
    for n, cols in enumerate(parts):
        shown = list(range(left)) + cols
        name = title if n == 0 else (f"{title} (continued)" if title else None)
        t = Table(title=name, box=None, pad_edge=False, title_justify="left")
        for i in shown:
            t.add_column(Text(headers[i]), justify="left" if i < left else "right", no_wrap=True)
        for r in rows:
            t.add_row(*(Text(r[i]) for i in shown))
        err_console.print(t)
    for line in legend:
        err_console.print(Text(line, style="dim"), soft_wrap=False)


def default_base(
    models: Sequence[str], base: str | None, *, needed: bool, allow_pickle: bool = False, quiet: bool = False
) -> str | None:
    """``--base``, or where it is needed and not given, the adapters' ``base_model_name_or_path`` if it resolves.

    The adapters must all name the same base, and it must be a local path or a Hub id in the cache (or
    downloadable); the choice is said on stderr. Otherwise None (the command then explains that it needs
    ``--base``).
    """
    if base is not None or not needed or not models:
        return base
    from weightspace.io import adapter_base_model, expand_models, resolve_model_path

    name = adapter_base_model(expand_models(models, allow_pickle=allow_pickle))
    if name is None:
        return None
    try:
        path = resolve_model_path(name, allow_pickle=allow_pickle)
    except InputError:
        return None
    if not path.exists():
        return None
    say(
        f"using --base {name} ({path}): the base_model_name_or_path of the adapters' adapter_config.json",
        quiet=quiet,
    )
    return str(path)
