"""``align``: remove permutation (and, opt-in, scale) symmetries and write every model aligned."""

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
    ExcludeOpt,
    FollowSymlinksOpt,
    JsonOpt,
    ModelsArg,
    OverwriteOpt,
    PrivateOpt,
    QuietOpt,
    app,
    emit_json,
    progress_bar,
    read_policy,
    say,
)


@app.command()
def align(
    models: ModelsArg,
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Directory for the aligned models, alignment.json and spec.json."),
    ],
    base: BaseOpt = None,
    reference: ReferenceOpt = None,
    to: ToOpt = None,
    spec: SpecOpt = None,
    symmetries: SymmetriesOpt = None,
    seed: Annotated[int, typer.Option(help="Seeds the matching's group order (deterministic given it).")] = 0,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    allow_pickle: AllowPickle = False,
    private: PrivateOpt = None,
    exclude: ExcludeOpt = None,
    overwrite: OverwriteOpt = False,
    follow_symlinks: FollowSymlinksOpt = False,
) -> None:
    """Remove permutation (and scale) symmetries: write every model aligned, function and layout unchanged.

    LoRA adapters of one base share its unit order and need no alignment (refused with exit 2).
    """
    from weightspace.align import align as run

    read_policy(follow_symlinks)
    opts = align_options(True, reference=reference, to=to, spec=spec, symmetries=symmetries, seed=seed)
    with progress_bar("align", quiet=quiet) as cb:
        result = run(
            models,
            out=out,
            base=base,
            reference=opts.reference,
            to=opts.to,
            spec=opts.spec,
            symmetries=opts.symmetries,
            seed=opts.seed,
            allow_pickle=allow_pickle,
            private=private or (),
            exclude=exclude or (),
            progress=cb,
            overwrite=overwrite,
        )
    data = result.to_dict()
    if json_out:
        emit_json(data)
    print_alignment(data)
    say(
        f"wrote {len(result.models)} aligned model(s), alignment.json and spec.json into {out} "
        f"(mean distance {result.mean_distance_before:.4g} → {result.mean_distance_after:.4g}, {result.wall_s:.1f}s)"
    )
