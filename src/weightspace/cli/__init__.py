"""The ``weightspace`` command line: thin typer commands over the library.

Exit codes: 0 ok, 2 bad input or usage (the message names the file and tensor), 1 internal error. With ``--json``
an error is also one JSON object on stdout: ``{"error": ..., "path": ..., "tensor": ..., "exit_code": ...}``.
The command modules import nothing heavy (no torch) at import time, so ``weightspace --help`` is fast.
"""

from __future__ import annotations

import contextvars
import errno
import functools
import os
import signal
import sys
import traceback
import warnings
from collections.abc import Sequence

import click
import typer
from rich.markup import escape

# Commands register on import; this order is the order `weightspace --help` lists them (the data flow).
# isort: off
from weightspace.cli import _core_cmds  # noqa: F401
from weightspace.cli import _align_cmd  # noqa: F401
from weightspace.cli import _analyze_cmd  # noqa: F401
from weightspace.cli import _merge_cmd  # noqa: F401
from weightspace.cli import _adapt_cmd  # noqa: F401
from weightspace.cli import _zoo_cmd  # noqa: F401
from weightspace.cli import _demo_cmd  # noqa: F401
from weightspace.cli import _run_cmd  # noqa: F401

# isort: on
from weightspace.cli._common import app, emit_json, err_console
from weightspace.errors import WeightspaceError, printable

__all__ = ["app", "main"]

# File-system refusals that are about the user's disk or permissions, not a weightspace bug: exit 2.
_FS_FAULTS = {
    errno.ENOSPC,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.EFBIG,
    getattr(errno, "EDQUOT", errno.ENOSPC),
}


@functools.lru_cache(maxsize=1)
def _command() -> click.Command:
    """The click command of the app, built once (building it inspects every command's signature)."""
    return typer.main.get_command(app)


def _show_warning(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> None:
    err_console.print(f"warning: {printable(str(message))}", markup=False, soft_wrap=True)


def _wants_json(args: Sequence[str]) -> bool:
    for a in args:
        if a == "--":
            return False
        if a == "--json":
            return True
    return False


def _json_error(on: bool, message: str, code: int, path: str | None = None, tensor: str | None = None) -> None:
    if on:
        emit_json({"error": message, "path": path, "tensor": tensor, "exit_code": code})


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: run the CLI and map errors to exit codes (never returns)."""
    # Offline by default: a hub miss in transformers would otherwise retry for ~46 s.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    command = _command()
    args = list(argv) if argv is not None else sys.argv[1:]
    json_errors = _wants_json(args)
    if hasattr(signal, "SIGXFSZ"):  # a file-size limit then fails a write with EFBIG (exit 2), not a core dump
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = _show_warning  # type: ignore[assignment]
            # Each command runs in its own context, so per-command settings (--follow-symlinks) end with it.
            rv = contextvars.copy_context().run(
                command.main, args=args, prog_name="weightspace", standalone_mode=False
            )
    except (click.exceptions.Exit, typer.Exit) as exc:
        sys.exit(getattr(exc, "exit_code", 0))
    except (click.exceptions.Abort, typer.Abort, KeyboardInterrupt):
        err_console.print("aborted")
        _json_error(json_errors, "aborted", 130)
        sys.exit(130)
    except (click.ClickException, typer.TyperException) as exc:  # usage errors: exit 2
        code = getattr(exc, "exit_code", 2)
        show = getattr(exc, "show", None)
        if show is not None:
            show(file=sys.stderr)
        else:
            err_console.print(f"error: {exc}")
        fmt = getattr(exc, "format_message", None)
        _json_error(json_errors, fmt() if callable(fmt) else str(exc), code)
        sys.exit(code)
    except WeightspaceError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True, markup=True)
        _json_error(json_errors, exc.message, exc.exit_code, exc.path, exc.tensor)
        sys.exit(exc.exit_code)
    except OSError as exc:
        if exc.errno not in _FS_FAULTS:
            err_console.print("[bold red]internal error[/] (please report):", markup=True)
            traceback.print_exc(file=sys.stderr)
            _json_error(json_errors, f"internal error: {type(exc).__name__}: {exc}", 1)
            sys.exit(1)
        where = f"{exc.filename}: " if exc.filename else ""
        msg = printable(f"{where}{exc.strerror or os.strerror(exc.errno or 0)}")
        err_console.print(f"[bold red]error:[/] {escape(msg)}", soft_wrap=True, markup=True)
        _json_error(json_errors, exc.strerror or str(exc), 2, None if exc.filename is None else str(exc.filename))
        sys.exit(2)
    except Exception as exc:
        err_console.print("[bold red]internal error[/] (please report):", markup=True)
        traceback.print_exc(file=sys.stderr)
        _json_error(json_errors, f"internal error: {type(exc).__name__}: {exc}", 1)
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)
