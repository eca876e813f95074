"""``weightspace demo``: build real zoos offline and put the paper's claims beside honest controls."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from weightspace.cli._common import JsonOpt, OverwriteOpt, app, emit_json, err_console, progress_bar


@app.command()
def demo(
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder (zoos are cached inside).")] = Path(
        "demo-out"
    ),
    quick: Annotated[bool, typer.Option("--quick", help="Three small zoos, ~3 minutes on 2 CPU cores.")] = False,
    zoos: Annotated[list[str] | None, typer.Option("--zoo", help="Run only these zoos (repeatable).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of zoo builds, nulls and splits.")] = 0,
    no_merge: Annotated[bool, typer.Option("--no-merge", help="Skip the merge benchmark.")] = False,
    no_adapt: Annotated[bool, typer.Option("--no-adapt", help="Skip the adaptation benchmark.")] = False,
    json_out: JsonOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Run the whole pipeline on real model zoos and write demo.html + demo.json (offline, CPU only)."""
    from weightspace._atomic import check_output, mark_dir
    from weightspace.demo import run_demo

    # The demo writes into the folder (zoos are cached there): only a demo folder, an empty or a new one is used,
    # unless --overwrite; it is marked first, so an interrupted demo is recognised on the next run.
    check_output(output, "demo", overwrite=overwrite)
    output.mkdir(parents=True, exist_ok=True)
    mark_dir(output, "demo")
    t0 = time.perf_counter()
    with progress_bar("demo") as cb:
        result = run_demo(
            output,
            quick=quick,
            zoos=zoos or None,
            seed=seed,
            merge=not no_merge,
            adapt=not no_adapt,
            say=lambda msg: err_console.print(msg, markup=False),  # '[zoo]' prefixes are not markup
            progress=cb,
        )
    if json_out:
        emit_json(result)
    for z in result["zoos"]:
        for c in z["claims"]:
            err_console.print(f"{z['zoo']:16s} {c['verdict']:22s} {c['claim']}: {c['evidence']}", markup=False)
    for section in ("merge", "adapt"):
        if result.get(section) and result[section].get("claim"):
            c = result[section]["claim"]
            err_console.print(f"{section:16s} {c['verdict']:22s} {c['claim']}: {c['evidence']}", markup=False)
    err_console.print(
        f"wrote {output / 'demo.html'} and {output / 'demo.json'} in {time.perf_counter() - t0:.0f} s"
    )
