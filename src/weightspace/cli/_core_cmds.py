"""``inspect``, ``compress``, ``reconstruct`` and ``project``: thin commands over the library."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

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
    print_table,
    progress_bar,
    rank_choice,
    read_policy,
    run_options,
    say,
)
from weightspace.errors import InputError


def _mb(n: float) -> str:
    return f"{n / 1e6:,.2f} MB"


@app.command()
def inspect(
    models: ModelsArg,
    base: BaseOpt = None,
    json_out: JsonOpt = False,
    allow_pickle: AllowPickle = False,
    private: PrivateOpt = None,
    exclude: ExcludeOpt = None,
    follow_symlinks: FollowSymlinksOpt = False,
) -> None:
    """Index a collection: formats, dtypes, shared units, private tensors, duplicates. Reads no weights."""
    from weightspace.collection import Collection

    read_policy(follow_symlinks)
    coll = Collection.from_paths(
        models, base=base, allow_pickle=allow_pickle, private=private or (), exclude=exclude or (), min_models=1
    )
    summary = coll.summary()
    if json_out:
        emit_json(summary)
        return
    rows = [
        [m["name"], m["format"], ",".join(m["dtypes"]), _mb(m["bytes"]), m["sha256"][:12]]
        for m in summary["models"]
    ]
    print_table(
        f"{coll.n_models} models ({summary['kind']}{', task vectors' if coll.is_delta else ''})",
        ["name", "format", "dtypes", "size", "sha256"],
        rows,
        legend=["sha256: first 12 hex digits of the content hash (identical models share it)"],
    )
    if summary["base"]:
        say(f"base: {summary['base']}")
    say(
        f"units: {summary['n_units']} ({summary['n_matrix_units']} matrices, {summary['n_vector_units']} vectors"
        f"{', ' + str(summary['n_lora_units']) + ' LoRA' if summary['n_lora_units'] else ''}), "
        f"{summary['unit_params_per_model']:,} parameters per model"
    )
    for p in summary["private"]:
        say(f"private: {p['key']} — {p['reason']}")
    for k in summary["excluded"]:
        say(f"excluded: {k}")
    for group in summary["duplicates"]:
        err_console.print(f"[yellow]duplicates[/] (identical content): {escape(', '.join(group))}", markup=True)


def compress_summary(result: Any, requested: int | float) -> dict[str, Any]:
    """The JSON of ``compress`` (and ``run`` of a compress recipe): the result, the effective k and the size."""
    from weightspace._words import ratio_words
    from weightspace.cli._rank import k_summary

    summary = result.to_dict()
    summary["k"] = k_summary(summary["units"], requested)
    summary["size"] = ratio_words(summary["models_bytes"], summary["archive_bytes"])
    return summary


def print_compress_summary(summary: dict[str, Any], out: Path) -> None:
    """Human summary of a compress run: sizes in words, the effective k beside the requested one, warnings."""
    for group in summary.get("duplicates", []):
        err_console.print(
            f"[yellow]warning:[/] identical models (they distort the spectrum): {escape(', '.join(group))}",
            markup=True,
        )
    k = summary["k"]
    span = f"{k['min']}" if k["min"] == k["max"] else f"{k['min']}–{k['max']}"
    capped = k["capped_units"]
    note = (
        f"; {len(capped)} of {summary['n_units']} units kept fewer than asked (their size or rank)"
        if capped
        else ""
    )
    say(
        f"wrote {out}: {summary['n_models']} models, {summary['n_units']} units, k per unit {span} "
        f"(requested {k['requested']}{note})"
    )
    say(
        f"archive {_mb(summary['archive_bytes'])} vs {_mb(summary['models_bytes'])} of checkpoints: "
        f"{summary['size']} (measured on disk), in {summary['wall_s']:.1f} s"
    )


@app.command()
def compress(
    models: ModelsArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Archive directory to write (*.wsz).")],
    base: BaseOpt = None,
    method: Annotated[
        str,
        typer.Option(
            help="auto (LoRA units factored, others PCA), pca (model axis) or hosvd (Tucker on weight axes; LoRA "
            "units factored)."
        ),
    ] = "auto",
    rank: Annotated[
        int | None,
        typer.Option("--rank", "-k", help="Components per unit (default 16); above what the data allows: error."),
    ] = None,
    variance: Annotated[
        float | None, typer.Option("--variance", help="Keep this fraction of centered variance per unit.")
    ] = None,
    clip_rank: Annotated[
        bool,
        typer.Option("--clip-rank", help="Cap --rank at what the data allows instead of failing (k reported)."),
    ] = False,
    dtype: Annotated[
        str,
        typer.Option(
            help="Storage dtype of basis and coefficients (auto: float64 for F64 sources, else float32)."
        ),
    ] = "auto",
    no_center: Annotated[bool, typer.Option("--no-center", help="Do not subtract the mean model.")] = False,
    solver: Annotated[str, typer.Option(help="auto, gram or tsqr.")] = "auto",
    allow_larger: Annotated[
        bool,
        typer.Option(
            "--allow-larger",
            help="Write a PEFT archive even if, estimated from the shapes, it is larger than the adapters.",
        ),
    ] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    allow_pickle: AllowPickle = False,
    private: PrivateOpt = None,
    exclude: ExcludeOpt = None,
    align: Annotated[
        bool,
        typer.Option("--align", help="Align hidden units first; the archive stores the permutations."),
    ] = False,
    reference: ReferenceOpt = None,
    to: ToOpt = None,
    spec: SpecOpt = None,
    symmetries: SymmetriesOpt = None,
    seed: Annotated[int, typer.Option(help="Seeds the alignment's matching order (with --align).")] = 0,
    overwrite: OverwriteOpt = False,
    follow_symlinks: FollowSymlinksOpt = False,
    threads: ThreadsOpt = None,
    scheduler: SchedulerOpt = None,
    device: DeviceOpt = "cpu",
) -> None:
    """Fit the shared subspace and write a compressed archive (basis + coefficients + private tensors)."""
    from weightspace.cli._rank import check_rank
    from weightspace.collection import Collection
    from weightspace.compress import compress as run

    read_policy(follow_symlinks)
    opts = align_options(align, reference=reference, to=to, spec=spec, symmetries=symmetries, seed=seed)
    n_components = rank_choice(rank, variance)
    where = run_options(threads, scheduler, device)
    coll = Collection.from_paths(
        models, base=base, allow_pickle=allow_pickle, private=private or (), exclude=exclude or ()
    )
    check_rank(coll, method, rank, center=not no_center, clip=clip_rank)
    with progress_bar("compress", quiet=quiet) as cb:
        result = run(
            coll,
            out,
            method=method,
            n_components=n_components,
            center=not no_center,
            svd_solver=solver,
            storage_dtype=dtype,
            align=opts,
            allow_larger=allow_larger,
            progress=cb,
            overwrite=overwrite,
            **where,
        )
    if result.alignment is not None:
        print_alignment(result.alignment)
    summary = {**compress_summary(result, n_components), "duplicates": coll.duplicates()}
    if json_out:
        emit_json(summary)
    print_compress_summary(summary, out)


@app.command()
def reconstruct(
    archive: Annotated[Path, typer.Argument(help="Archive directory (*.wsz).")],
    names: Annotated[
        list[str] | None, typer.Argument(help="Models to rebuild (default with --all: every one).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the rebuilt checkpoints.")] = Path(
        "reconstructed"
    ),
    all_models: Annotated[bool, typer.Option("--all", help="Rebuild every model.")] = False,
    base: BaseOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    allow_pickle: AllowPickle = False,
    aligned: Annotated[
        bool,
        typer.Option("--aligned", help="For a compress --align archive: keep the aligned unit order."),
    ] = False,
    overwrite: OverwriteOpt = False,
    follow_symlinks: FollowSymlinksOpt = False,
) -> None:
    """Rebuild models from an archive in their source format (dtypes, keys, configs restored)."""
    from weightspace.compress import reconstruct as run

    read_policy(follow_symlinks)
    if names and all_models:
        raise InputError("pass model names or --all, not both")
    if not names and not all_models:
        raise InputError("name the models to rebuild, or pass --all")
    base_path = _local_base(base, allow_pickle)
    with progress_bar("reconstruct", quiet=quiet) as cb:
        results = run(
            archive,
            out,
            names or None,
            base=base_path,
            allow_pickle=allow_pickle,
            aligned=aligned,
            progress=cb,
            overwrite=overwrite,
        )
    if json_out:
        emit_json({"archive": str(archive), "out": str(out), "models": [r.to_dict() for r in results]})
    worst = max((r.max_lora_truncation_error for r in results), default=0.0)
    extra = f"; largest LoRA re-factoring error {worst:.2e}" if worst else ""
    say(f"rebuilt {len(results)} model(s) into {out}{extra}")


def _local_base(base: str | None, allow_pickle: bool) -> Path | None:
    """``--base`` as a local path (a Hub id resolved through the cache)."""
    if base is None:
        return None
    from weightspace.io import resolve_model_path

    return resolve_model_path(base, allow_pickle=allow_pickle)


@app.command()
def project(
    archive: Annotated[Path, typer.Argument(help="Archive directory (*.wsz).")],
    models: ModelsArg,
    add: Annotated[bool, typer.Option("--add", help="Store the projected models in the archive.")] = False,
    base: BaseOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    allow_pickle: AllowPickle = False,
    follow_symlinks: FollowSymlinksOpt = False,
    threads: ThreadsOpt = None,
    scheduler: SchedulerOpt = None,
) -> None:
    """Project unseen models onto an archive's subspace; residuals beside the mean-only baseline."""
    from weightspace.compress import project as run

    read_policy(follow_symlinks)
    where = run_options(threads, scheduler)
    where.pop("device")
    with progress_bar("project", quiet=quiet) as cb:
        result = run(
            archive,
            models,
            add=add,
            base=_local_base(base, allow_pickle),
            allow_pickle=allow_pickle,
            progress=cb,
            **where,
        )
    if json_out:
        emit_json(result.to_dict())
        return
    rows = [
        [m.name, f"{m.mean_plus_basis:.4f}", f"{m.mean_only:.4f}", f"{m.basis_only:.4f}"] for m in result.models
    ]
    print_table(
        "relative residual ‖x − x̂‖ / ‖x‖ of each model (lower is better)",
        ["model", "mean+basis", "mean only", "basis only"],
        rows,
        legend=[
            "mean+basis: rebuilt from the archive's mean and basis; mean only: the archive's mean alone (the "
            "baseline the basis must beat); basis only: the basis without the mean"
        ],
    )
    if add:
        say(f"added {len(result.models)} model(s) to {archive}")
