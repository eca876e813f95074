"""``analyze``: spectra vs matched nulls, mean vs basis on held-out models, stability, a verdict per unit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from weightspace.cli._align_opts import (
    ReferenceOpt,
    SpecOpt,
    SymmetriesOpt,
    ToOpt,
    align_options,
    print_alignment,
)
from weightspace.cli._common import (
    AllowPickle,
    BaseOpt,
    DeviceOpt,
    ExcludeOpt,
    FollowSymlinksOpt,
    JsonOpt,
    ModelsArg,
    OverwriteOpt,
    PrivateOpt,
    QuietOpt,
    SchedulerOpt,
    ThreadsOpt,
    app,
    emit_json,
    err_console,
    progress_bar,
    read_policy,
    run_options,
    say,
)


@app.command()
def analyze(
    models: ModelsArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Report directory (report.json, report.html, PNGs).")],
    base: BaseOpt = None,
    method: Annotated[str, typer.Option(help="pca (model axis) or hosvd (Tucker on weight axes).")] = "pca",
    seed: Annotated[int, typer.Option(help="Seeds folds, the stability split and the null draws.")] = 0,
    null_draws: Annotated[int, typer.Option("--null-draws", help="Matched-null draws per unit.")] = 5,
    folds: Annotated[
        int | None,
        typer.Option(help="K-fold held-out evaluation (default: leave-one-out up to 64 models, else 10)."),
    ] = None,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Skip the PNGs (no matplotlib needed).")] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    allow_pickle: AllowPickle = False,
    private: PrivateOpt = None,
    exclude: ExcludeOpt = None,
    align: Annotated[
        bool, typer.Option("--align", help="Align hidden units first; the null is aligned the same way.")
    ] = False,
    reference: ReferenceOpt = None,
    to: ToOpt = None,
    spec: SpecOpt = None,
    symmetries: SymmetriesOpt = None,
    overwrite: OverwriteOpt = False,
    follow_symlinks: FollowSymlinksOpt = False,
    threads: ThreadsOpt = None,
    scheduler: SchedulerOpt = None,
    device: DeviceOpt = "cpu",
) -> None:
    """Is there a shared subspace, or only a mean? Evidence per unit beside a matched Gaussian null."""
    from weightspace._atomic import check_output
    from weightspace.analyze import analyze as run
    from weightspace.collection import Collection
    from weightspace.report import require_matplotlib

    where = run_options(threads, scheduler, device)
    opts = align_options(align, reference=reference, to=to, spec=spec, symmetries=symmetries, seed=seed)
    read_policy(follow_symlinks)
    if not no_plots:
        require_matplotlib()  # fail before the (long) analysis, not after it
    coll = Collection.from_paths(
        models, base=base, allow_pickle=allow_pickle, private=private or (), exclude=exclude or ()
    )
    inputs = [s.path for s in coll.sources] + ([coll.base.path] if coll.base is not None else [])
    check_output(out, "report", overwrite=overwrite, inputs=inputs)  # before the analysis, not after it
    with progress_bar("analyze", quiet=quiet) as cb:
        rep = run(coll, method=method, seed=seed, n_null=null_draws, folds=folds, align=opts, progress=cb, **where)
        cb("report", 0, 1)
        rep.save(out, plots=not no_plots, overwrite=overwrite)
        cb("report", 1, 1)
    if json_out:
        emit_json(rep.to_dict())
    if "alignment" in rep.data:
        print_alignment(rep.data["alignment"])
    rep.print_summary(err_console)
    say(f"wrote {out / 'report.html'}, report.json{'' if no_plots else ' and plots'}")
