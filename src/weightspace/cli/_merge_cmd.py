"""``weightspace merge``: data-free merging in ΔW space, its method listing, and the zoo benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from weightspace.cli._common import (
    AllowPickle,
    BaseOpt,
    DeviceOpt,
    ExcludeOpt,
    JsonOpt,
    PrivateOpt,
    SchedulerOpt,
    ThreadsOpt,
    app,
    emit_json,
    err_console,
    progress_bar,
    run_options,
)
from weightspace.collection import Collection
from weightspace.errors import InputError
from weightspace.merge import MERGE_METHODS, MergeResult, list_methods

_HELP = f"""Merge N fine-tuned checkpoints or LoRA adapters in task-vector (ΔW) space into one model.

Full checkpoints need --base (task vectors are W_i − W_base); the output is base + merged ΔW in the base's layout.
LoRA adapters are merged as ΔW = s·B·A (never factor-wise) and written as an adapter of rank --rank (truncated
SVD; the truncation error is reported), or into the base with --format full. Per-task heads and other tensors
whose shape differs across models are never merged: the summary lists them and what was done.

Methods: {", ".join(MERGE_METHODS.names())} (see --list-methods for parameters, ranges and papers).

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


def _print_methods() -> None:
    # Plain lines rather than a table: a table squeezed into a narrow terminal would break the URLs.
    for m in list_methods():
        err_console.print(f"[bold]{escape(m['name'])}[/] — {escape(m['doc'])}", soft_wrap=True, markup=True)
        err_console.print(f"  {m['reference_url']}", soft_wrap=True, markup=False)
        shown = [p for p in m["params"] if p["cli"]]
        for p in shown:
            err_console.print(
                f"  --param {p['name']}=…  {p['constraint']}, default {p['default']!r}: {p['doc']}",
                soft_wrap=True,
                markup=False,
            )
        if not shown:
            err_console.print("  (no parameters)")


def _print_table(result: dict[str, Any], title: str) -> None:
    t = Table(title=title)
    t.add_column("method")
    for c in result["columns"]:
        t.add_column(c["task"], justify="right")
    t.add_column("average", justify="right")
    for row in result["rows"]:
        cells = [f"{row['accuracy'][c['model']]:.3f}" for c in result["columns"]]
        t.add_row(row["label"], *cells, f"{row['average']:.3f}")
    err_console.print(t)


def _print_summary(r: MergeResult) -> None:
    params = ", ".join(f"{k}={v}" for k, v in r.params.items())
    rel = r.rel_diff_from_mean
    err_console.print(
        f"merged {r.n_models} models with {r.method}({params}) into {r.out} ({r.layout}): "
        f"{r.n_units} units; ‖merged ΔW − mean ΔW‖ / ‖mean ΔW‖ = {'n/a' if rel is None else f'{rel:.4f}'}"
    )
    if r.format == "peft":
        err_console.print(
            f"adapter rank {r.rank}: largest relative truncation error {r.max_truncation_error:.2e} "
            f"({r.worst_truncation_module})"
        )
    for p in r.not_merged:
        shapes = ", ".join(f"{m}: {tuple(v)}" for m, v in list(p.shapes.items())[:4])
        err_console.print(
            f"[yellow]not merged[/] {escape(p.key)} ({escape(p.reason)}; {escape(shapes)}) — {escape(p.action)}",
            markup=True,
        )


@app.command(help=_HELP)
def merge(
    models: Annotated[
        list[str] | None,
        typer.Argument(help="Fine-tuned checkpoints or LoRA adapter dirs (files, dirs, globs, @list.txt)."),
    ] = None,
    base: BaseOpt = None,
    method: Annotated[
        str | None, typer.Option("--method", "-m", help="Merge method (see --list-methods).")
    ] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="Method parameter KEY=VALUE (repeatable).")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output file or directory.")] = None,
    fmt: Annotated[
        str,
        typer.Option(
            "--format", help="Output format: auto (adapters stay adapters), full (into the base) or peft."
        ),
    ] = "auto",
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
    allow_pickle: AllowPickle = False,
    private: PrivateOpt = None,
    exclude: ExcludeOpt = None,
    threads: ThreadsOpt = None,
    scheduler: SchedulerOpt = None,
    device: DeviceOpt = "cpu",
) -> None:
    from weightspace.bench import evaluate_merged, load_zoo, merge_benchmark
    from weightspace.merge import merge as merge_fn

    if list_all:
        if json_out:
            emit_json({"methods": list_methods()})
        else:
            _print_methods()
        return
    if not models:
        if eval_zoo is None:
            raise InputError("name the models to merge (or pass --list-methods, or --eval ZOO_DIR to benchmark)")
        methods = [MERGE_METHODS.get(method).name] if method else None
        with progress_bar("benchmark") as cb:
            result = merge_benchmark(eval_zoo, methods, sweep=not no_sweep, progress=cb)
        if json_out:
            emit_json(result)
        _print_table(result, f"test accuracy of merged {result['zoo']} models (merged backbone + task head)")
        err_console.print("rows marked 'tuned on validation' chose their parameter on a split of the TRAIN data")
        return
    if method is None:
        raise InputError(f"--method is required. Valid choices: {', '.join(MERGE_METHODS.names())}.")
    if out is None:
        raise InputError("-o/--out is required: where to write the merged model")
    params = _parse_params(param)
    coll = Collection.from_paths(
        models, base=base, allow_pickle=allow_pickle, private=private or (), exclude=exclude or (), min_models=1
    )
    if eval_zoo is not None:
        load_zoo(eval_zoo)  # a bad zoo directory fails before anything is written
        if fmt == "peft" or (fmt == "auto" and coll.is_peft):
            raise InputError(
                "--eval scores a full model; merge adapters with --format full --base BASE to evaluate"
            )
    with progress_bar("merge") as cb:
        result = merge_fn(
            coll,
            method=method,
            params=params,
            out=out,
            format=fmt,  # type: ignore[arg-type]  (checked by merge)
            rank=rank,
            subspace=basis_archive,
            progress=cb,
            **run_options(threads, scheduler, device),
        )
    summary = result.to_dict()
    if eval_zoo is not None:
        summary["eval"] = evaluate_merged(eval_zoo, out, models=list(result.model_paths))
    if json_out:
        emit_json(summary)
    _print_summary(result)
    if eval_zoo is not None:
        _print_table(summary["eval"], f"test accuracy on {summary['eval']['zoo']} (merged backbone + task head)")
