"""``inspect``, ``compress``, ``reconstruct`` and ``project``: thin commands over the library."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from weightspace.cli._common import (
    AllowPickle,
    BaseOpt,
    ExcludeOpt,
    JsonOpt,
    PrivateOpt,
    app,
    emit_json,
    err_console,
    progress_bar,
    rank_choice,
)
from weightspace.collection import Collection
from weightspace.errors import InputError

ModelsArg = Annotated[
    list[str],
    typer.Argument(help="Checkpoints: files, model/adapter dirs, folders of checkpoints, globs, @list.txt."),
]


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
) -> None:
    """Index a collection: formats, dtypes, shared units, private tensors, duplicates. Reads no weights."""
    coll = Collection.from_paths(
        models, base=base, allow_pickle=allow_pickle, private=private or (), exclude=exclude or (), min_models=1
    )
    summary = coll.summary()
    if json_out:
        emit_json(summary)
        return
    t = Table(title=f"{coll.n_models} models ({summary['kind']}{', task vectors' if coll.is_delta else ''})")
    for col in ("name", "format", "dtypes", "size", "sha256"):
        t.add_column(col)
    for m in summary["models"]:
        t.add_row(m["name"], m["format"], ",".join(m["dtypes"]), _mb(m["bytes"]), m["sha256"][:12])
    err_console.print(t)
    err_console.print(
        f"units: {summary['n_units']} ({summary['n_matrix_units']} matrices, {summary['n_vector_units']} vectors"
        f"{', ' + str(summary['n_lora_units']) + ' LoRA' if summary['n_lora_units'] else ''}), "
        f"{summary['unit_params_per_model']:,} parameters per model"
    )
    for p in summary["private"]:
        err_console.print(f"private: {p['key']} — {p['reason']}")
    for k in summary["excluded"]:
        err_console.print(f"excluded: {k}")
    for group in summary["duplicates"]:
        err_console.print(f"[yellow]duplicates[/] (identical content): {escape(', '.join(group))}", markup=True)


@app.command()
def compress(
    models: ModelsArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Archive directory to write (*.wsz).")],
    base: BaseOpt = None,
    method: Annotated[
        str,
        typer.Option(
            help="auto (LoRA units factored, others PCA), pca (model axis) or hosvd (Tucker on weight axes; LoRA "
            "units factored)."
        ),
    ] = "auto",
    rank: Annotated[int | None, typer.Option("--rank", "-k", help="Components per unit (default 16).")] = None,
    variance: Annotated[
        float | None, typer.Option("--variance", help="Keep this fraction of centered variance per unit.")
    ] = None,
    dtype: Annotated[str, typer.Option(help="Storage dtype of basis and coefficients.")] = "float32",
    no_center: Annotated[bool, typer.Option("--no-center", help="Do not subtract the mean model.")] = False,
    solver: Annotated[str, typer.Option(help="auto, gram or tsqr.")] = "auto",
    allow_larger: Annotated[
        bool,
        typer.Option(
            "--allow-larger",
            help="Write a PEFT archive even if, bounded from the shapes, it could outgrow the adapters.",
        ),
    ] = False,
    json_out: JsonOpt = False,
    allow_pickle: AllowPickle = False,
    private: PrivateOpt = None,
    exclude: ExcludeOpt = None,
) -> None:
    """Fit the shared subspace and write a compressed archive (basis + coefficients + private tensors)."""
    from weightspace.compress import compress as run

    n_components = rank_choice(rank, variance)
    coll = Collection.from_paths(
        models, base=base, allow_pickle=allow_pickle, private=private or (), exclude=exclude or ()
    )
    with progress_bar("compress") as cb:
        result = run(
            coll,
            output,
            method=method,
            n_components=n_components,
            center=not no_center,
            svd_solver=solver,
            storage_dtype=dtype,
            allow_larger=allow_larger,
            progress=cb,
        )
    dups = coll.duplicates()
    summary = {**result.to_dict(), "duplicates": dups}
    if json_out:
        emit_json(summary)
    for group in dups:
        err_console.print(
            f"[yellow]warning:[/] identical models (they distort the spectrum): {escape(', '.join(group))}",
            markup=True,
        )
    err_console.print(
        f"wrote {output}: {summary['n_models']} models, {summary['n_units']} units, "
        f"{_mb(summary['archive_bytes'])} for {_mb(summary['models_bytes'])} of checkpoints: "
        f"{summary['ratio_words']} (measured on disk), in {summary['wall_s']:.1f}s"
    )


@app.command()
def reconstruct(
    archive: Annotated[Path, typer.Argument(help="Archive directory (*.wsz).")],
    names: Annotated[
        list[str] | None, typer.Argument(help="Models to rebuild (default with --all: every one).")
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for the rebuilt checkpoints.")] = Path(
        "reconstructed"
    ),
    all_models: Annotated[bool, typer.Option("--all", help="Rebuild every model.")] = False,
    base: BaseOpt = None,
    json_out: JsonOpt = False,
    allow_pickle: AllowPickle = False,
) -> None:
    """Rebuild models from an archive in their source format (dtypes, keys, configs restored)."""
    from weightspace.compress import reconstruct as run

    if names and all_models:
        raise InputError("pass model names or --all, not both")
    if not names and not all_models:
        raise InputError("name the models to rebuild, or pass --all")
    with progress_bar("reconstruct") as cb:
        results = run(archive, output, names or None, base=base, allow_pickle=allow_pickle, progress=cb)
    if json_out:
        emit_json({"archive": str(archive), "output": str(output), "models": [r.to_dict() for r in results]})
    worst = max((r.max_lora_truncation_error for r in results), default=0.0)
    extra = f"; largest LoRA re-factoring error {worst:.2e}" if worst else ""
    err_console.print(f"rebuilt {len(results)} model(s) into {output}{extra}")


@app.command()
def project(
    archive: Annotated[Path, typer.Argument(help="Archive directory (*.wsz).")],
    models: ModelsArg,
    add: Annotated[bool, typer.Option("--add", help="Store the projected models in the archive.")] = False,
    base: BaseOpt = None,
    json_out: JsonOpt = False,
    allow_pickle: AllowPickle = False,
) -> None:
    """Project unseen models onto an archive's subspace; residuals beside the mean-only baseline."""
    from weightspace.compress import project as run

    with progress_bar("project") as cb:
        result = run(archive, models, add=add, base=base, allow_pickle=allow_pickle, progress=cb)
    if json_out:
        emit_json(result.to_dict())
        return
    t = Table(title="relative residual ‖x − x̂‖ / ‖x‖ (lower is better)")
    for col in ("model", "mean + basis", "mean only", "basis only"):
        t.add_column(col)
    for m in result.models:
        t.add_row(m.name, f"{m.mean_plus_basis:.4f}", f"{m.mean_only:.4f}", f"{m.basis_only:.4f}")
    err_console.print(t)
    if add:
        err_console.print(f"added {len(result.models)} model(s) to {archive}")
