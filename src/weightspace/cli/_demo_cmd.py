"""``weightspace demo``: build real zoos offline and put the paper's claims beside honest controls."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from weightspace.cli._common import JsonOpt, OverwriteOpt, QuietOpt, app, emit_json, progress_bar, say


@app.command()
def demo(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output folder (demo.html, demo.json, analysis reports).")
    ] = Path("demo-out"),
    quick: Annotated[
        bool, typer.Option("--quick", help="Three small zoos, about a minute on 2 CPU cores (= --scale quick).")
    ] = False,
    scale: Annotated[
        str | None,
        typer.Option(
            "--scale",
            help="quick | default (96 models per small zoo, ≤ 10 min on 2 cores) | paper (480 models, a second seed; "
            "over an hour on 2 cores).",
        ),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache-dir", help="Zoo cache root (default $WEIGHTSPACE_ZOO_CACHE or ~/.cache/weightspace/zoos)."
        ),
    ] = None,
    zoos: Annotated[list[str] | None, typer.Option("--zoo", help="Run only these zoos (repeatable).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of zoo builds, nulls and splits.")] = 0,
    no_merge: Annotated[bool, typer.Option("--no-merge", help="Skip the merge benchmark.")] = False,
    no_adapt: Annotated[bool, typer.Option("--no-adapt", help="Skip the adaptation benchmark.")] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Run the whole pipeline on real model zoos and write demo.html + demo.json (offline, CPU only)."""
    from weightspace._atomic import check_output, mark_dir
    from weightspace.demo import run_demo

    # The demo writes into the folder (zoos are cached there): only a demo folder, an empty or a new one is used,
    # unless --overwrite; it is marked first, so an interrupted demo is recognised on the next run.
    check_output(out, "demo", overwrite=overwrite)
    out.mkdir(parents=True, exist_ok=True)
    mark_dir(out, "demo")
    t0 = time.perf_counter()
    with progress_bar("demo", quiet=quiet) as cb:
        result = run_demo(
            out,
            quick=quick,
            scale=scale,
            cache_dir=cache_dir,
            zoos=zoos or None,
            seed=seed,
            merge=not no_merge,
            adapt=not no_adapt,
            say=lambda msg: say(msg, quiet=quiet),
            progress=cb,
        )
    if json_out:
        emit_json(result)
    for z in result["zoos"]:
        for c in z["claims"]:
            say(f"{z['zoo']:16s} {c['verdict']:22s} {c['claim']}: {c['evidence']}")
    for section in ("merge", "adapt"):
        if result.get(section) and result[section].get("claim"):
            c = result[section]["claim"]
            say(f"{section:16s} {c['verdict']:22s} {c['claim']}: {c['evidence']}")
    cpu = f" (CPU {result['cpu_s']:.0f} s)" if "cpu_s" in result else ""
    say(f"wrote {out / 'demo.html'} and {out / 'demo.json'} in {time.perf_counter() - t0:.0f} s{cpu}")
