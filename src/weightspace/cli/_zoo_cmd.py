"""``weightspace zoo``: build a real model collection offline (for the demo, tests and your own experiments)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from weightspace.cli._common import JsonOpt, QuietOpt, app, emit_json, progress_bar, say


@app.command()
def zoo(
    name: Annotated[
        str, typer.Argument(help="digits-mlp, digits-mlp-init, mnist1d-cnn, digits-vit or minilm-lora.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to build the zoo in.")],
    n: Annotated[int | None, typer.Option("--n", help="Number of models (default: the zoo's).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the whole build.")] = 0,
    quick: Annotated[
        bool, typer.Option("--quick", help="Fewer models and steps (for CI and a first look).")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if a matching zoo is there.")] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a zoo of real models on offline data; every checkpoint carries its task in its metadata."""
    from weightspace._atomic import check_output
    from weightspace.zoo import build_zoo

    check_output(out, "zoo")  # a folder or file that is not a zoo is never replaced (before any training)
    with progress_bar(f"zoo {name}", quiet=quiet) as cb:
        info = build_zoo(
            name, out, n=n, seed=seed, quick=quick, force=force, progress=lambda d, t, m: cb("train", d, t)
        )
    rows = [{"name": m.name, "path": str(m.path), "task": m.task, "seed": m.seed} for m in info.models]
    if json_out:
        emit_json(
            {
                "zoo": info.zoo,
                "dir": str(info.dir),
                "base": str(info.base_path) if info.base_path else None,
                "models": rows,
            }
        )
    say(
        f"zoo {info.zoo}: {len(rows)} models in {info.dir}"
        + (f" (base {info.base_path})" if info.base_path else "")
    )
