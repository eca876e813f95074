"""The ``weightspace`` command line: thin typer commands over the library.

Exit codes: 0 ok, 2 bad input or usage (the message names the file and tensor), 1 internal error. With ``--json``
an error is also one JSON object on stdout: ``{"error": ..., "path": ..., "tensor": ..., "exit_code": ...}``.
The command modules import nothing heavy (no torch) at import time, so ``weightspace --help`` is fast.
"""

from __future__ import annotations

import os
import sys
import traceback
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
from weightspace.errors import WeightspaceError

__all__ = ["app", "main"]


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
    command = typer.main.get_command(app)
    args = list(argv) if argv is not None else sys.argv[1:]
    json_errors = _wants_json(args)
    try:
        rv = command.main(args=args, prog_name="weightspace", standalone_mode=False)
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
    except Exception as exc:
        err_console.print("[bold red]internal error[/] (please report):", markup=True)
        traceback.print_exc(file=sys.stderr)
        _json_error(json_errors, f"internal error: {type(exc).__name__}: {exc}", 1)
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)
