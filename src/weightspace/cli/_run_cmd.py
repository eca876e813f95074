"""``weightspace run RECIPE.yaml``: a merge (mergekit-shaped), compress or analyze recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from weightspace.cli._common import (
    FollowSymlinksOpt,
    JsonOpt,
    OverwriteOpt,
    QuietOpt,
    app,
    emit_json,
    err_console,
    progress_bar,
    read_policy,
    say,
)
from weightspace.errors import InputError

_HELP = """Run a YAML recipe: a mergekit-style merge, or a compress / analyze job.

Merge recipes take mergekit's shape (merge_method, base_model, models with per-model parameters such as weight
and density, parameters, dtype); compress and analyze recipes say job: compress / job: analyze and take the
command's options (models, base_model, rank or variance, method, seed, ...). Paths are relative to the current
directory. Errors name the recipe's line and field. Example:

\b
  merge_method: ties
  base_model: zoos/cnn/base.safetensors
  models:
    - model: zoos/cnn/models/000_perm-0.safetensors
      parameters: {weight: 0.7, density: 0.3}
    - model: zoos/cnn/models/001_pair-0-1.safetensors
  parameters: {density: 0.2}
  dtype: float32
  out: merged.safetensors
"""


@app.command(help=_HELP)
def run(
    recipe: Annotated[Path, typer.Argument(help="Recipe file (YAML).")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output path (overrides the recipe's out:).")
    ] = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    overwrite: OverwriteOpt = False,
    follow_symlinks: FollowSymlinksOpt = False,
) -> None:
    from weightspace.recipes import AnalyzeRecipe, CompressRecipe, MergeRecipe, load_recipe, merge_params

    read_policy(follow_symlinks)
    r = load_recipe(recipe)
    dest = out if out is not None else (Path(r.out) if r.out is not None else None)
    if dest is None:
        raise InputError("the recipe names no output: add out: PATH to it, or pass -o/--out", path=recipe)
    if isinstance(r, MergeRecipe):
        from weightspace.cli._merge_cmd import run_merge

        run_merge(
            r.ordered_models(),
            method=r.method_name(),
            params=merge_params(r),
            weights=r.weights(),
            out=dest,
            fmt=r.format,
            dtype=r.dtype,
            base=r.merge_base(),
            rank=r.rank,
            json_out=json_out,
            quiet=quiet,
            allow_pickle=r.allow_pickle,
            private=r.private,
            exclude=r.exclude,
            overwrite=overwrite,
        )
        return
    from weightspace.collection import Collection

    coll = Collection.from_paths(
        r.model_specs(), base=r.base_model, allow_pickle=r.allow_pickle, private=r.private, exclude=r.exclude
    )
    if isinstance(r, CompressRecipe):
        from weightspace.cli._core_cmds import compress_summary, print_compress_summary
        from weightspace.cli._rank import check_rank
        from weightspace.compress import compress

        n_components = r.rank if r.rank is not None else (r.variance if r.variance is not None else 16)
        check_rank(coll, r.method, r.rank, center=r.center, clip=r.clip_rank)
        with progress_bar("compress", quiet=quiet) as cb:
            result = compress(
                coll,
                dest,
                method=r.method,
                n_components=n_components,
                center=r.center,
                svd_solver=r.solver,
                storage_dtype=r.dtype,
                allow_larger=r.allow_larger,
                progress=cb,
                overwrite=overwrite,
            )
        summary = {**compress_summary(result, n_components), "duplicates": coll.duplicates()}
        if json_out:
            emit_json(summary)
        print_compress_summary(summary, dest)
        return
    assert isinstance(r, AnalyzeRecipe)  # the three recipe kinds are exhaustive
    from weightspace._atomic import check_output
    from weightspace.analyze import analyze

    if r.plots:
        from weightspace.report import require_matplotlib

        require_matplotlib()
    inputs = [s.path for s in coll.sources] + ([coll.base.path] if coll.base is not None else [])
    check_output(dest, "report", overwrite=overwrite, inputs=inputs)  # before the analysis
    with progress_bar("analyze", quiet=quiet) as cb:
        rep = analyze(coll, method=r.method, seed=r.seed, n_null=r.null_draws, folds=r.folds, progress=cb)
        rep.save(dest, plots=r.plots, overwrite=overwrite)
    if json_out:
        emit_json(rep.to_dict())
    rep.print_summary(err_console)
    say(f"wrote {dest / 'report.html'}, report.json{' and plots' if r.plots else ''}")
