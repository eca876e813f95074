"""``weightspace adapt``: train a held-out zoo task inside an archive's subspace, beside LoRA and full FT."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from weightspace.cli._common import (
    JsonOpt,
    OverwriteOpt,
    QuietOpt,
    app,
    emit_json,
    err_console,
    print_table,
    progress_bar,
    say,
)
from weightspace.errors import InputError


def _parse_ks(text: str) -> list[int]:
    try:
        ks = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise InputError(f"--ks must be comma-separated ints >= 0, got {text!r}") from None
    if not ks or any(k < 0 for k in ks):
        raise InputError(f"--ks must be comma-separated ints >= 0, got {text!r}")
    return ks


@app.command()
def adapt(
    zoo: Annotated[Path, typer.Option("--zoo", help="A built fine-tune zoo directory (mnist1d-cnn, digits-vit).")],
    task: Annotated[str, typer.Option("--task", help="Held-out task; its model must not be in the archive.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for results.json and adapter/.")],
    archive: Annotated[
        Path | None,
        typer.Argument(
            help="Archive (*.wsz) of task vectors relative to the zoo base, without the task's model. "
            "Default: compress the zoo's other models (leave-task-out).",
            show_default=False,
        ),
    ] = None,
    k: Annotated[int | None, typer.Option("--k", help="k of the saved adapter (default: max of --ks).")] = None,
    ks: Annotated[str, typer.Option("--ks", help="k sweep of the coefficient-only rows.")] = "1,4,16",
    variant: Annotated[
        str | None, typer.Option("--variant", help="pca or hosvd (default: the archive's method).")
    ] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Steps of every run (default: zoo's).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Head init, LoRA init, batch order, val split.")] = 0,
    save_basis: Annotated[
        bool,
        typer.Option("--save-basis", help="Embed the basis in the adapter instead of referencing the archive."),
    ] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Coefficient-only adapters (mean- and zero-init, k sweep) vs LoRA r=8, full FT, head-only, mean-only."""
    from weightspace._atomic import check_output
    from weightspace.decompose import UNIT_FITS

    if variant is not None and variant not in UNIT_FITS:
        raise InputError(f"--variant must be one of {', '.join(UNIT_FITS.names())}, got {variant!r}")
    if k is not None and k < 0:
        raise InputError(f"--k must be an int >= 0, got {k}")
    if steps is not None and steps < 1:
        raise InputError(f"--steps must be an int >= 1, got {steps}")
    if archive is not None:
        _check_archive(archive, zoo, task, out)
    check_output(out, "adapt", overwrite=overwrite, inputs=[p for p in (archive, zoo) if p is not None])
    from weightspace.bench import adaptation_benchmark

    with progress_bar("adapt", quiet=quiet) as cb:
        result = adaptation_benchmark(
            zoo,
            archive,
            task,
            ks=_parse_ks(ks),
            k=k,
            variant=variant,
            steps=steps,
            seed=seed,
            out=out,
            save_basis=save_basis,
            progress=cb,
        )
    if json_out:
        emit_json(result)
        return
    rows = []
    for r in result["rows"]:
        keff = r.get("k_effective_range")
        kcol = "" if r.get("k") is None else f"{r['k']}" + (f" ({keff[0]}–{keff[1]})" if keff else "")
        rows.append(
            [
                r["name"],
                kcol,
                f"{r['trainable_adapter']:,}",
                f"{r['trainable_head']:,}",
                f"{r['test_accuracy']:.3f}",
                f"{r['lr']:g}",
                f"{r['train_wall_s']:.1f}",
                f"{r['step_ms']:.1f}",
            ]
        )
    print_table(
        f"{result['zoo']} task '{result['task']}': {result['steps']} steps, seed {result['seed']}",
        ["variant", "k", "adapter", "head", "test acc", "lr", "train s", "ms/step"],
        rows,
        legend=[
            "k: components per unit (effective range where units cap it); adapter, head: trainable parameters "
            "of the adapter and of the task head; test acc: accuracy on the task's test split; lr: learning rate "
            "chosen on a validation split of the training data; train s: training time; ms/step: per step"
        ],
    )
    sm = result["summary"]
    if "best_coef" in sm:
        err_console.print(
            f"best coefficient-only ({sm['best_coef']}): {sm['coef_minus_lora']:+.3f} vs LoRA, "
            f"{sm['coef_minus_head_only']:+.3f} vs head-only; spread over k (mean-init) {sm['k_spread_mean_init']:.3f}"
        )
    for note in result["k_caps"][:3]:
        err_console.print(f"[yellow]k capped:[/] {escape(str(note))}", markup=True)
    say(f"wrote {out / 'results.json'} and {out / 'adapter'} ({result['lr_selection']})")


def _check_archive(archive: Path, zoo: Path, task: str, out: Path) -> None:
    """Fail before any training on a non-archive, or on an archive that holds the held-out task's model."""
    from weightspace.bench import check_held_out
    from weightspace.decompose import Archive
    from weightspace.zoo import load_zoo_info

    if not archive.exists():
        raise InputError("archive does not exist", path=archive)
    arch = Archive(archive, verify=False)  # exit 2 on a non-archive
    info = load_zoo_info(zoo)
    try:
        check_held_out(arch, [m for m in info.models if m.task == task], task)
    except InputError as err:
        others = [m for m in info.models if m.task != task]
        listing = " ".join(str(m.path) for m in others[:2]) + (" ..." if len(others) > 2 else "")
        what = err.message.split("; ")[0]  # which model of the task, and why that is refused
        raise InputError(
            f"{what}. Leave ARCHIVE out to build a leave-task-out archive from the zoo's other models:  "
            f"weightspace adapt --zoo {zoo} --task {task} -o {out}  — or compress the other models yourself:  "
            f"weightspace compress {listing} --base {info.base_path} -o without-{task}.wsz",
            path=archive,
        ) from None
