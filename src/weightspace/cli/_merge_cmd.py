"""``weightspace merge``: data-free merging in ΔW space, its method listing, and the zoo benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from weightspace.cli._common import (
    AllowPickle,
    BaseOpt,
    DeviceOpt,
    ExcludeOpt,
    FollowSymlinksOpt,
    JsonOpt,
    OverwriteOpt,
    PrivateOpt,
    QuietOpt,
    SchedulerOpt,
    ThreadsOpt,
    app,
    default_base,
    emit_json,
    err_console,
    print_table,
    progress_bar,
    read_policy,
    run_options,
    say,
)
from weightspace.errors import InputError

#: The registry's method names, written out so that ``--help`` needs no torch import (a test keeps them in sync).
METHOD_NAMES = (
    "mean",
    "linear",
    "slerp",
    "task_arithmetic",
    "ties",
    "dare",
    "dare_ties",
    "knots",
    "tsv",
    "subspace",
)

_HELP = f"""Merge N fine-tuned checkpoints or LoRA adapters in task-vector (ΔW) space into one model.

Full checkpoints need --base (task vectors are W_i − W_base); the output is base + merged ΔW in the base's layout.
linear and slerp also merge raw weights without a base, as mergekit does. LoRA adapters are merged as
ΔW = s·B·A (never factor-wise) and written as an adapter of rank --rank (truncated SVD; the truncation error is
reported), or into the base with --format full (--base defaults to the adapters' base_model_name_or_path when it
resolves). Per-task heads and other tensors whose shape differs across models are never merged: the summary
lists them and what was done.

Methods: {", ".join(METHOD_NAMES)}; --list-methods shows their parameters, ranges and papers. --weights gives
one weight per model.
A mergekit-style YAML recipe runs with `weightspace run RECIPE.yaml`.

--eval ZOO_DIR scores the merged model on a built fine-tune zoo (merged backbone + each task's own head). Without
MODELS it runs the benchmark: every method (or --method) at its defaults and tuned on a validation split carved
from the training data, beside the fine-tuned (upper) and base (lower) bounds.
"""


def _parse_params(items: list[str] | None) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(f"--param expects KEY=VALUE (e.g. --param density=0.3); got {item!r}")
        if key in params:
            raise InputError(f"--param {key} is given twice")
        params[key] = value.strip()
    return params


def _parse_weights(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise InputError(
            f"--weights expects comma-separated numbers, one per model (e.g. 0.7,0.3); got {text!r}"
        ) from None


def _print_methods() -> None:
    from weightspace.merge import list_methods

    # Plain lines rather than a table: a table squeezed into a narrow terminal would break the URLs.
    for m in list_methods():
        tags = [t for t, on in (("--weights", m["weighted"]), ("no base needed", m["base_free"])) if on]
        if m["n_models"]:
            tags.append(f"exactly {m['n_models']} models")
        tag = f" [{'; '.join(tags)}]" if tags else ""
        err_console.print(
            f"[bold]{escape(m['name'])}[/]{escape(tag)} — {escape(m['doc'])}", soft_wrap=True, markup=True
        )
        err_console.print(f"  {m['reference_url']}", soft_wrap=True, markup=False)
        shown = [p for p in m["params"] if p["cli"]]
        for p in shown:
            per = " (or one per model in a recipe)" if p["per_model"] else ""
            err_console.print(
                f"  --param {p['name']}=…  {p['constraint']}{per}, default {p['default']!r}: {p['doc']}",
                soft_wrap=True,
                markup=False,
            )
        if not shown:
            err_console.print("  (no parameters)")


def print_accuracy_table(result: dict[str, Any], title: str) -> None:
    """Method × task accuracy, split into parts that fit the terminal (the method column repeated)."""
    headers = ["method", *(c["task"] for c in result["columns"]), "average"]
    rows = [
        [row["label"], *(f"{row['accuracy'][c['model']]:.3f}" for c in result["columns"]), f"{row['average']:.3f}"]
        for row in result["rows"]
    ]
    print_table(
        title,
        headers,
        rows,
        legend=["each cell: test accuracy of the merged backbone with that task's own head; average: over tasks"],
    )


def print_merge_summary(r: Any) -> None:
    """Human summary of a :class:`~weightspace.merge.MergeResult`."""
    params = ", ".join(f"{k}={v}" for k, v in r.params.items())
    rel = r.rel_diff_from_mean
    weights = "" if r.weights is None else f", weights {', '.join(f'{w:g}' for w in r.weights)}"
    say(
        f"merged {r.n_models} models with {r.method}({params}){weights} into {r.out} ({r.layout}"
        f"{', ' + r.dtype if r.dtype else ''}): {r.n_units} units; ‖merged ΔW − mean ΔW‖ / ‖mean ΔW‖ = "
        f"{'n/a' if rel is None else f'{rel:.4f}'}"
    )
    if r.format == "peft":
        say(
            f"adapter rank {r.rank}: largest relative truncation error {r.max_truncation_error:.2e} "
            f"({r.worst_truncation_module})"
        )
    for p in r.not_merged:
        shapes = ", ".join(f"{m}: {tuple(v)}" for m, v in list(p.shapes.items())[:4])
        err_console.print(
            f"[yellow]not merged[/] {escape(p.key)} ({escape(p.reason)}; {escape(shapes)}) — {escape(p.action)}",
            markup=True,
            soft_wrap=True,
        )


@app.command(help=_HELP)
def merge(
    models: Annotated[
        list[str] | None,
        typer.Argument(
            help="Fine-tuned checkpoints or LoRA adapter dirs (files, dirs, globs, @list.txt, Hub ids).",
            show_default=False,
        ),
    ] = None,
    base: BaseOpt = None,
    method: Annotated[
        str | None, typer.Option("--method", "-m", help="Merge method (see --list-methods).")
    ] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="Method parameter KEY=VALUE (repeatable).")
    ] = None,
    weights: Annotated[
        str | None,
        typer.Option("--weights", help="One weight per model, comma-separated, in the order of MODELS."),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output file or directory.")] = None,
    fmt: Annotated[
        str,
        typer.Option(
            "--format", help="Output format: auto (adapters stay adapters), full (into the base) or peft."
        ),
    ] = "auto",
    dtype: Annotated[
        str | None,
        typer.Option(
            "--dtype", help="Output dtype: float32, float16, bfloat16 or float64 (default: the source's)."
        ),
    ] = None,
    rank: Annotated[
        int | None, typer.Option("--rank", "-r", help="Rank of a PEFT output (default: max source rank).")
    ] = None,
    basis_archive: Annotated[
        Path | None,
        typer.Option(
            "--basis-archive", help="subspace: use this .wsz archive's PCA basis per unit instead of fitting one."
        ),
    ] = None,
    eval_zoo: Annotated[
        Path | None,
        typer.Option("--eval", help="Built zoo directory: score the merge (or, without MODELS, benchmark)."),
    ] = None,
    no_sweep: Annotated[
        bool, typer.Option("--no-sweep", help="Benchmark: skip the validation-tuned rows.")
    ] = False,
    list_all: Annotated[bool, typer.Option("--list-methods", help="List methods, parameters and papers.")] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    allow_pickle: AllowPickle = False,
    private: PrivateOpt = None,
    exclude: ExcludeOpt = None,
    overwrite: OverwriteOpt = False,
    follow_symlinks: FollowSymlinksOpt = False,
    threads: ThreadsOpt = None,
    scheduler: SchedulerOpt = None,
    device: DeviceOpt = "cpu",
) -> None:
    read_policy(follow_symlinks)
    if list_all:
        if json_out:
            from weightspace.merge import list_methods

            emit_json({"methods": list_methods()})
        else:
            _print_methods()
        return
    if not models:
        if eval_zoo is None:
            raise InputError("name the models to merge (or pass --list-methods, or --eval ZOO_DIR to benchmark)")
        from weightspace.bench import merge_benchmark
        from weightspace.merge import MERGE_METHODS

        methods = [MERGE_METHODS.get(method).name] if method else None
        with progress_bar("benchmark", quiet=quiet) as cb:
            result = merge_benchmark(eval_zoo, methods, sweep=not no_sweep, progress=cb)
        if json_out:
            emit_json(result)
        print_accuracy_table(
            result, f"test accuracy of merged {result['zoo']} models (merged backbone + task head)"
        )
        say("rows marked 'tuned on validation' chose their parameter on a split of the TRAIN data")
        return
    if method is None:
        from weightspace.merge import MERGE_METHODS

        raise InputError(f"--method is required. Valid choices: {', '.join(MERGE_METHODS.names())}.")
    if out is None:
        raise InputError("-o/--out is required: where to write the merged model")
    run_merge(
        models,
        method=method,
        params=_parse_params(param),
        weights=_parse_weights(weights),
        out=out,
        fmt=fmt,
        dtype=dtype,
        base=base,
        rank=rank,
        basis_archive=basis_archive,
        eval_zoo=eval_zoo,
        json_out=json_out,
        quiet=quiet,
        allow_pickle=allow_pickle,
        private=private or (),
        exclude=exclude or (),
        overwrite=overwrite,
        run=run_options(threads, scheduler, device),
    )


def run_merge(
    models: list[str],
    *,
    method: str,
    params: dict[str, Any],
    weights: list[float] | None,
    out: Path,
    fmt: str = "auto",
    dtype: str | None = None,
    base: str | None = None,
    rank: int | None = None,
    basis_archive: Path | None = None,
    eval_zoo: Path | None = None,
    json_out: bool = False,
    quiet: bool = False,
    allow_pickle: bool = False,
    private: tuple[str, ...] | list[str] = (),
    exclude: tuple[str, ...] | list[str] = (),
    overwrite: bool = False,
    run: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Open the models, merge and write, print the summary (shared by ``merge`` and ``run``); the JSON summary.

    ``run`` holds the run options (``threads``, ``scheduler``, ``device``) from :func:`run_options`.
    """
    from weightspace.collection import Collection
    from weightspace.merge import merge as merge_fn

    base = default_base(
        models, base, needed=fmt == "full" or eval_zoo is not None, allow_pickle=allow_pickle, quiet=quiet
    )
    coll = Collection.from_paths(
        models, base=base, allow_pickle=allow_pickle, private=private, exclude=exclude, min_models=1
    )
    if eval_zoo is not None:
        from weightspace.bench import load_zoo

        load_zoo(eval_zoo)  # a bad zoo directory fails before anything is written
        if fmt == "peft" or (fmt == "auto" and coll.is_peft):
            raise InputError(
                "--eval scores a full model; merge adapters with --format full --base BASE to evaluate"
            )
    with progress_bar("merge", quiet=quiet) as cb:
        result = merge_fn(
            coll,
            method=method,
            params=params,
            weights=weights,
            out=out,
            format=fmt,  # type: ignore[arg-type]  (checked by merge)
            dtype=dtype,
            rank=rank,
            subspace=basis_archive,
            progress=cb,
            overwrite=overwrite,
            **(run or {}),
        )
    summary = result.to_dict()
    if eval_zoo is not None:
        from weightspace.bench import evaluate_merged

        summary["eval"] = evaluate_merged(eval_zoo, out, models=list(result.model_paths))
    if json_out:
        emit_json(summary)
    print_merge_summary(result)
    if eval_zoo is not None:
        print_accuracy_table(
            summary["eval"], f"test accuracy on {summary['eval']['zoo']} (merged backbone + task head)"
        )
    return summary
