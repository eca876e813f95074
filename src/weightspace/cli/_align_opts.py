"""The ``--align`` options shared by ``align``, ``analyze`` and ``compress`` (no commands here)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from weightspace.cli._common import err_console
from weightspace.errors import InputError

__all__ = ["ReferenceOpt", "SpecOpt", "SymmetriesOpt", "ToOpt", "align_options", "print_alignment"]

ReferenceOpt = Annotated[
    str | None,
    typer.Option(
        "--reference",
        help="Model name to align to (default: the medoid by weight distance; with --base, the base).",
        show_default=False,
    ),
]
ToOpt = Annotated[
    str | None,
    typer.Option(
        "--to", help="reference (default), or mean: iteratively align to the mean of the aligned models."
    ),
]
SpecOpt = Annotated[
    str | None,
    typer.Option(
        "--spec",
        help="Permutation spec: a YAML/JSON file, or built-in vit[:heads=H,residual=false], bert[:...], "
        "sequential. Default: detected from the keys (ViT, BERT, else a sequential MLP/CNN chain).",
        show_default=False,
    ),
]
SymmetriesOpt = Annotated[
    str | None,
    typer.Option(
        "--symmetries",
        help="Comma list of permutation, scale (default permutation). scale holds only for ReLU-like nets.",
        show_default=False,
    ),
]


def align_options(
    enabled: bool,
    *,
    reference: str | None,
    to: str | None,
    spec: str | None,
    symmetries: str | None,
    seed: int,
) -> Any:
    """The :class:`~weightspace.align.AlignOptions` of the command line, or None without ``--align``."""
    from weightspace.align import AlignOptions

    given = [
        n
        for n, v in (("--reference", reference), ("--to", to), ("--spec", spec), ("--symmetries", symmetries))
        if v is not None
    ]
    if not enabled:
        if given:
            raise InputError(f"{', '.join(given)} only apply with --align")
        return None
    sym = tuple(s.strip() for s in (symmetries or "permutation").split(",") if s.strip())
    return AlignOptions(reference=reference, to=to or "reference", spec=spec, symmetries=sym, seed=seed)


def print_alignment(result: dict[str, Any]) -> None:
    """The spec, the scale warning and a per-model before/after table, on stderr."""
    from weightspace.align import SCALE_WARNING

    err_console.print(result["spec_text"], soft_wrap=True)
    if "scale" in result["symmetries"]:
        err_console.print(f"[yellow]note:[/] {escape(SCALE_WARNING)}", markup=True, soft_wrap=True)
    target = "the mean" if result["to"] == "mean" else f"reference {result['reference']}"
    t = Table(title=f"distance to {target} (over the shared tensors)")
    for col in ("model", "before", "after", "units moved"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for m in result["models"]:
        t.add_row(m["name"], f"{m['distance_before']:.4g}", f"{m['distance_after']:.4g}", str(m["moved_units"]))
    err_console.print(t)
    for note in result["notes"]:
        if note != SCALE_WARNING and note not in result["spec_text"]:  # the spec's own notes were just printed
            err_console.print(f"note: {note}", soft_wrap=True)
