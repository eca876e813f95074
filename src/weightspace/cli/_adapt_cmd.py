"""``weightspace adapt``: train a held-out zoo task inside an archive's subspace, beside LoRA and full FT."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from weightspace.cli._common import JsonOpt, OverwriteOpt, app, emit_json, err_console, progress_bar
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
    archive: Annotated[Path, typer.Argument(help="Archive (*.wsz) of task vectors relative to the zoo base.")],
    zoo: Annotated[Path, typer.Option("--zoo", help="A built fine-tune zoo directory (mnist1d-cnn, digits-vit).")],
    task: Annotated[str, typer.Option("--task", help="Held-out task; its model must not be in the archive.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for results.json and adapter/.")],
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
    overwrite: OverwriteOpt = False,
) -> None:
    """Coefficient-only adapters (mean- and zero-init, k sweep) vs LoRA r=8, full FT, head-only, mean-only."""
    from weightspace._atomic import check_output
    from weightspace.bench import adaptation_benchmark
    from weightspace.decompose import UNIT_FITS, Archive

    check_output(output, "adapt", overwrite=overwrite, inputs=[archive, zoo])
    if not archive.exists():
        raise InputError("archive does not exist", path=archive)
    Archive(archive, verify=False)  # fail fast (exit 2) on a non-archive before any training
    if variant is not None and variant not in UNIT_FITS:
        raise InputError(f"--variant must be one of {', '.join(UNIT_FITS.names())}, got {variant!r}")
    if k is not None and k < 0:
        raise InputError(f"--k must be an int >= 0, got {k}")
    if steps is not None and steps < 1:
        raise InputError(f"--steps must be an int >= 1, got {steps}")
    with progress_bar("adapt") as cb:
        result = adaptation_benchmark(
            zoo,
            archive,
            task,
            ks=_parse_ks(ks),
            k=k,
            variant=variant,
            steps=steps,
            seed=seed,
            out=output,
            save_basis=save_basis,
            progress=cb,
        )
    if json_out:
        emit_json(result)
        return
    t = Table(title=f"{result['zoo']} task '{result['task']}': {result['steps']} steps, seed {result['seed']}")
    for col in ("variant", "k (eff.)", "adapter params", "head params", "test acc", "lr", "train s", "step ms"):
        t.add_column(col, justify="left" if col == "variant" else "right", no_wrap=col == "variant")
    for r in result["rows"]:
        keff = r.get("k_effective_range")
        kcol = "" if r.get("k") is None else f"{r['k']}" + (f" ({keff[0]}–{keff[1]})" if keff else "")
        t.add_row(
            r["name"],
            kcol,
            f"{r['trainable_adapter']:,}",
            f"{r['trainable_head']:,}",
            f"{r['test_accuracy']:.3f}",
            f"{r['lr']:g}",
            f"{r['train_wall_s']:.2f}",
            f"{r['step_ms']:.2f}",
        )
    err_console.print(t)
    sm = result["summary"]
    if "best_coef" in sm:
        err_console.print(
            f"best coefficient-only ({sm['best_coef']}): {sm['coef_minus_lora']:+.3f} vs LoRA, "
            f"{sm['coef_minus_head_only']:+.3f} vs head-only; spread over k (mean-init) {sm['k_spread_mean_init']:.3f}"
        )
    for note in result["k_caps"][:3]:
        err_console.print(f"[yellow]k capped:[/] {escape(str(note))}", markup=True)
    err_console.print(f"wrote {output}/results.json and {output}/adapter ({result['lr_selection']})")
