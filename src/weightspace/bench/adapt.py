"""Train a held-out task inside the shared subspace and compare it with LoRA and full fine-tuning.

:func:`adaptation_benchmark` takes a fine-tune zoo (a pretrained ``base.safetensors`` plus one fully fine-tuned
model per task), holds one task out, and trains that task from the base with

* ``coef`` — coefficient-only subspace adapters (:mod:`weightspace.adapt`), two starting points:
  ``init="mean"`` (``use_mean=True``, ``c = c̄``: training starts at the archive's mean task vector) and
  ``init="zero"`` (``use_mean=False``, ``c = 0``: training starts at the base), each at every ``k`` of a sweep;
* ``lora`` — PEFT LoRA (``r=8``, ``lora_alpha=16``) on the same layers;
* ``full`` — every parameter;
* two controls that say whether the subspace coefficients matter at all: ``head-only`` (a linear probe: only
  the task head trains) and ``mean-only`` (the archive mean is added, ``k=0``, only the head trains).

Every run uses the same fresh model (base backbone + the same seeded head), the same data, steps, batch
order (seed) and optimiser (AdamW with a cosine schedule, the zoo's training loop). The head is a per-task
private tensor, not a subspace unit, so it trains in every variant and is counted in its own column.

Learning rates differ by what is trained (a coefficient moves a whole basis direction, so it needs much larger
steps than a weight). They are therefore *chosen the same way for every variant*: each row's learning rate is
the best of a small grid (:data:`LR_GRIDS`) by accuracy on a validation split carved (seeded) from the task's
training data; the test split is never used to choose. Pass fixed rates to skip the search.

The archive must not contain the held-out task's model: a given archive is checked (path and sha256 of every
model of the task against the archive's model records); without one, a leave-task-out archive is compressed
from the zoo's other models relative to the zoo base.

The harness reads the zoo (manifest, base checkpoint, data, training loop, evaluator) and calls the adapter
library (:mod:`weightspace.adapt`) and :func:`~weightspace.compress.compress`; the library knows nothing of zoos.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from weightspace._atomic import atomic_dir
from weightspace._progress import Progress
from weightspace._validation import Interval, Kind, Options, validate_params
from weightspace.adapt.model import archive_fingerprint, save
from weightspace.bench._adapt_runs import run_variants
from weightspace.collection import Collection
from weightspace.compress import compress
from weightspace.decompose import UNIT_FITS, Archive, PCAUnit
from weightspace.errors import InputError, ParameterError
from weightspace.io import file_sha256
from weightspace.zoo import Zoo, ZooInfo, ZooModel, get_zoo, load_zoo_info, read_checkpoint

__all__ = ["DEFAULT_KS", "LR_GRIDS", "adaptation_benchmark", "check_held_out"]

PathLike = str | os.PathLike[str]

DEFAULT_KS: tuple[int, ...] = (1, 4, 16)

#: Learning-rate grids searched per variant family on the validation split (AdamW peak LR, cosine decay).
#: Every family gets the same budget (4 values, 1.5 decades) placed where it trains well on the built-in zoos;
#: a coefficient moves a whole unit-norm basis direction, so its grid sits ~10× above the weight grids.
LR_GRIDS: dict[str, tuple[float, ...]] = {
    "full": (1e-3, 3e-3, 1e-2, 3e-2),
    "lora": (3e-3, 1e-2, 3e-2, 1e-1),
    "head-only": (3e-3, 1e-2, 3e-2, 1e-1),
    "mean-only": (3e-3, 1e-2, 3e-2, 1e-1),
    "coef": (1e-2, 3e-2, 1e-1, 3e-1),
}

_K_VALUE = Interval(int, 0, None)
_NONE = Kind((type(None),), "None")
_CONSTRAINTS = {
    "k": [_K_VALUE, _NONE],
    "steps": [Interval(int, 1, None)],
}


def check_held_out(archive: Archive, task_models: Sequence[ZooModel], task: str) -> None:
    """Raise :class:`InputError` if any of ``task_models`` (zoo models of ``task``) is a member of ``archive``.

    A model counts as a member when its resolved path or its file's sha256 equals a model record of the
    archive, so copies and moved files are caught too.
    """
    paths = {m.source_path for m in archive.manifest.models}
    shas = {m.source_sha256 for m in archive.manifest.models}
    for zm in task_models:
        p = Path(zm.path).resolve()
        if str(p) in paths or (p.is_file() and file_sha256(p) in shas):
            raise InputError(
                f"the archive contains zoo model '{zm.name}' of the held-out task '{task}', so the task is not "
                "held out and the benchmark would be measuring memorisation; compress the zoo's other models "
                "without it (or call adaptation_benchmark without an archive to build a leave-task-out one)",
                path=archive.path,
            )


def _resolve(zoo_dir: PathLike | ZooInfo, task: str | None) -> tuple[ZooInfo, Zoo, str, str]:
    info = zoo_dir if isinstance(zoo_dir, ZooInfo) else load_zoo_info(zoo_dir)
    zoo = get_zoo(info.zoo)
    if zoo.kind != "finetune" or info.base_path is None or not Path(info.base_path).is_file():
        raise InputError(
            f"zoo '{info.zoo}' ({zoo.kind}) has no pretrained base checkpoint; the adaptation benchmark needs a "
            "fine-tune zoo (mnist1d-cnn, digits-vit) whose tasks are all trained from one base",
            path=info.dir,
        )
    if task is None:
        task = info.models[0].task
    zoo.check_task(task)
    if task == getattr(zoo, "base_task", None):
        raise ParameterError(f"task {task!r} is what the base was pretrained on; hold out one of: {zoo.tasks()}")
    head = str(info.meta.get("head_prefix", "head."))
    return info, zoo, task, head


# ------------------------------------------------------------------------------------------------ benchmark
def adaptation_benchmark(
    zoo_dir: PathLike | ZooInfo,
    archive: str | Any | None = None,
    task: str | None = None,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    k: int | None = None,
    variant: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    lrs: Mapping[str, float | Sequence[float]] | None = None,
    batch_size: int | None = None,
    out: str | Any | None = None,
    save_basis: bool | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Hold one task of a fine-tune zoo out and train it with coefficient-only adapters, LoRA and full FT.

    Parameters
    ----------
    zoo_dir : path or ZooInfo
        A built fine-tune zoo (``zoo.json`` + ``base.safetensors`` + models), or its parsed
        :class:`~weightspace.zoo.ZooInfo`.
    archive : path, optional
        A ``.wsz`` archive of task vectors relative to the zoo base that does **not** contain the task's model
        (checked; :class:`InputError` otherwise). Default: compress a leave-task-out archive from the zoo's
        other models (``n_components = max(ks, k)``, ``method = variant``).
    task : str, optional
        The held-out task (default: the task of the zoo's first model).
    ks : sequence of int, default (1, 4, 16)
        ``k`` sweep for the coefficient-only rows (capped per unit at what the archive stores; the effective
        values are reported).
    k : int, optional
        ``k`` of the main coefficient-only adapter (the one written to ``out``); default ``max(ks)``.
    variant : str, optional
        A registered decomposition; default: the archive's method (``pca`` when the archive is built here).
    steps : int, optional
        Optimiser steps of every run (default: the zoo's fine-tuning steps).
    seed : int, default 0
        Seeds the head initialisation, LoRA initialisation, batch order and validation split.
    lrs : mapping, optional
        Per family (``"full"``, ``"lora"``, ``"head-only"``, ``"mean-only"``, ``"coef"``): a float (fixed) or
        a sequence (grid searched on the validation split). Missing families use :data:`LR_GRIDS`.
    batch_size : int, optional
        Default: the zoo's.
    out : path, optional
        Directory written atomically with ``results.json`` and ``adapter/`` (the main adapter, mean-init).
    save_basis : bool, optional
        Whether the written adapter embeds the basis; default: only when the archive was built here (a
        temporary archive cannot be referenced).
    progress : callable, optional
        ``progress(stage, done, total)``.

    Returns
    -------
    dict
        ``rows`` (one per variant: ``name``, ``family``, ``init``, ``k``, ``trainable_adapter``,
        ``trainable_head``, ``trainable_total``, ``test_accuracy``, ``init_accuracy``, ``val_accuracy``, ``lr``,
        ``train_wall_s``, ``final_loss`` ...), plus the task, zoo, archive record, steps, seed, learning-rate
        search and notes; ``summary`` holds the comparisons (best coefficient-only row minus LoRA, full and
        head-only; LoRA parameters per coefficient; accuracy spread over ``k``).

    Examples
    --------
    >>> from weightspace.bench import adaptation_benchmark
    >>> from weightspace.zoo import build_zoo
    >>> info = build_zoo("mnist1d-cnn", "zoos/cnn", quick=True)  # doctest: +SKIP
    >>> res = adaptation_benchmark(info.dir, task="reverse", ks=(1, 4, 16))  # doctest: +SKIP
    >>> [(r["name"], r["trainable_adapter"], round(r["test_accuracy"], 3)) for r in res["rows"]][:2]  # doctest: +SKIP
    [('full', 26944, 0.792), ('lora-r8', 5416, 0.783)]
    """
    t_start = time.perf_counter()
    info, zoo, task, head = _resolve(zoo_dir, task)
    ks = list(ks)
    if not ks or not all(_K_VALUE.accepts(v) for v in ks):
        raise ParameterError(
            f"The 'ks' parameter of adaptation_benchmark must be a non-empty sequence of ints >= 0. Got {ks!r} instead."
        )
    ks = [int(v) for v in ks]
    rules = {**_CONSTRAINTS, "variant": [Options(UNIT_FITS.names()), _NONE]}
    validate_params("adaptation_benchmark", rules, {"k": k, "variant": variant})
    main_k = max(ks) if k is None else int(k)
    sweep = sorted(set(ks) | {main_k})
    task_models = [m for m in info.models if m.task == task]
    grids = {fam: tuple(v) for fam, v in LR_GRIDS.items()}
    for fam, v in (lrs or {}).items():
        if fam not in grids:
            raise ParameterError(f"unknown learning-rate family {fam!r}; valid: {', '.join(grids)}")
        vals = (v,) if isinstance(v, int | float) else tuple(v)
        if not vals or not all(isinstance(x, int | float) and math.isfinite(x) and x > 0 for x in vals):
            raise ParameterError(f"learning rates of {fam!r} must be positive finite numbers, got {v!r}")
        grids[fam] = tuple(float(x) for x in vals)
    if steps is None:
        steps = int(info.meta.get("settings", {}).get("finetune", {}).get("steps", 300))
    validate_params("adaptation_benchmark", _CONSTRAINTS, {"steps": steps})
    base_state, _ = read_checkpoint(info.base_path)
    base_sha = file_sha256(Path(info.base_path))

    with contextlib.ExitStack() as stack:
        built = archive is None
        if built:
            others = [m for m in info.models if m.task != task]
            if len(others) < 2:
                raise InputError(
                    f"the zoo has {len(others)} model(s) of other tasks; a leave-task-out archive needs >= 2",
                    path=info.dir,
                )
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ws-adapt-")))
            coll = Collection.from_paths([m.path for m in others], base=info.base_path, private=[head + "*"])
            apath = tmp / "leave-task-out.wsz"
            compress(coll, apath, method=variant or PCAUnit.method, n_components=max(1, *sweep))
            if progress is not None:
                progress("archive", 1, 1)
        else:
            apath = Path(archive)
        arch = Archive(apath)
        check_held_out(arch, task_models, task)
        method = arch.manifest.method
        variant = variant or method
        if variant != method:
            raise ParameterError(
                f"archive was compressed with --method {method}; variant {variant!r} needs an archive compressed "
                f"with --method {variant}"
            )
        base_rec = arch.manifest.base
        if not arch.manifest.delta or base_rec is None:
            raise InputError(
                "archive stores raw weights (compressed without --base); the benchmark adapts the zoo base, so "
                f"compress the other models with --base {info.base_path}",
                path=arch.path,
            )
        if base_rec.sha256 != base_sha:
            raise InputError(
                f"archive task vectors are relative to another base ({base_rec.path}), not this zoo's "
                f"{info.base_path}",
                path=arch.path,
            )
        if save_basis is None:
            save_basis = built
        results = run_variants(
            zoo=zoo,
            task=task,
            head=head,
            base_state=base_state,
            archive=arch,
            variant=variant,
            sweep=sweep,
            main_k=main_k,
            steps=steps,
            seed=seed,
            grids=grids,
            batch_size=batch_size,
            save_basis=bool(save_basis),
            progress=progress,
        )
        adapter_model = results.pop("_main_model")
        results.update(
            {
                "zoo": info.zoo,
                "zoo_dir": str(info.dir),
                "task": task,
                "archive": {
                    "path": None if built else str(arch.path.resolve()),
                    "built_leave_task_out": built,
                    "sha256": archive_fingerprint(arch.path),
                    "method": method,
                    "n_models": arch.n_models,
                    "models": arch.model_names,
                    "units": {
                        u: {name: getattr(r, name) for name in ("k", "k1", "k2") if hasattr(r, name)}
                        for u, r in arch.units.items()
                    },
                },
                "held_out_models": [m.name for m in task_models],
                "reference_test_accuracy": {m.name: m.test_accuracy for m in task_models},
                "wall_s": time.perf_counter() - t_start,
            }
        )
        if out is not None:
            with atomic_dir(out, kind="adapt") as tmp_out:
                save(adapter_model, tmp_out / "adapter")
                (tmp_out / "results.json").write_text(json.dumps(_jsonable(results), indent=1) + "\n")
            results["out"] = str(out)
    return results


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
