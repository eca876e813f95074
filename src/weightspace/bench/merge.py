"""Which merge method really wins? Task accuracy of merged models on a built zoo.

A fine-tune zoo (``mnist1d-cnn``, ``digits-vit``) holds a pretrained base and N models fully fine-tuned from it on
different tasks, each with its own classifier head (heads differ in shape across tasks, so they are private and
never merged). The protocol, per merge:

1. merge every task model's backbone task vector into one backbone (``base + merged ΔW``);
2. for each task model, put **its own head** on the merged backbone and measure held-out **test** accuracy on its
   task (the zoo's evaluator).

Bounds beside the merges: the fine-tuned model itself (upper bound) and the task's head on the **base** backbone
(lower bound: what merging must beat to have transferred anything).

Hyper-parameters are reported twice: at the method's defaults (*untuned*), and *tuned on validation*: each value
of a small grid (λ for ``task_arithmetic``, density for ``ties``, drop rate for ``dare_ties``, k for ``subspace``)
is scored by the mean accuracy on a validation split carved from each task's **training** data, and the test
accuracy is computed only at the selected value. The test set never takes part in a selection. The validation
examples were seen by the fine-tuned models during training, so validation accuracies are optimistic for every
method alike; only the ranking of grid values is used.

Two checks of the paper's claims ride along: ``subspace`` against ``mean``, and the merge that sums the
coefficients of the *centered* task vectors in their PCA basis, which is identically the mean (its coefficients
sum to zero over the models); the measured difference is reported.

The harness reads the zoo (its ``zoo.json`` and evaluator) and calls the merge library
(:func:`~weightspace.merge.merge` without ``out``); nothing in :mod:`weightspace.merge` knows about zoos.
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from weightspace._progress import Progress, report
from weightspace._validation import Interval, validate_params
from weightspace.collection import Collection
from weightspace.errors import InputError, ParameterError, UnsupportedFormatError
from weightspace.io import open_source
from weightspace.merge import MERGE_METHODS, centered_coefficient_sum, merge
from weightspace.zoo import ZooInfo, get_zoo, load_zoo_info

__all__ = [
    "DEFAULT_SWEEPS",
    "ZooLike",
    "benchmark_table",
    "evaluate_merged",
    "load_zoo",
    "merge_benchmark",
]

PathLike = str | os.PathLike[str]

DEFAULT_SWEEPS: dict[str, dict[str, tuple[float | int, ...]]] = {
    # λ = 1/N is the mean; 0.05 keeps that point inside the grid for zoos of up to 20 tasks.
    "task_arithmetic": {"lam": (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)},
    "ties": {"density": (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)},
    # dare_ties is parametrised by the drop probability p; its density (kept fraction) is 1 - p.
    "dare_ties": {"p": (0.95, 0.9, 0.7, 0.5, 0.3, 0.1)},
    "subspace": {"k": (1, 2, 3, 4, 6, 8, 12, 16)},
}
"""Grids searched on validation by :func:`merge_benchmark` (one parameter per method, others at defaults)."""

_VAL_SEED = 0x5EED
_CONSTRAINTS = {"val_fraction": [Interval(float, 0.0, 1.0, closed="neither")]}


class ZooLike(Protocol):
    """The part of :class:`weightspace.zoo.Zoo` the benchmark uses."""

    def load_model(self, source: Any, task: str | None = None) -> torch.nn.Module: ...

    def accuracy(self, source: Any, task: str | None = None) -> float: ...

    def task_data(self, task: str, split: str) -> tuple[Tensor, Tensor]: ...


# ------------------------------------------------------------------------------------------------ zoo access


def load_zoo(zoo_dir: PathLike | ZooInfo) -> ZooInfo:
    """Parse ``zoo_dir/zoo.json`` (raises :class:`InputError` for a directory that is not a built zoo).

    A :class:`~weightspace.zoo.ZooInfo` that is already parsed is returned as is.
    """
    return zoo_dir if isinstance(zoo_dir, ZooInfo) else load_zoo_info(zoo_dir)


class _Bench:
    """A zoo prepared for repeated evaluation: heads, bounds' states, validation splits."""

    def __init__(
        self,
        info: ZooInfo,
        zoo: ZooLike | None,
        val_fraction: float,
        max_val: int,
        keep: Callable[[Any], bool] | None = None,
        none_kept: str = "no model of this zoo was selected",
    ):
        self.info = info
        self.models = [m for m in self.info.models if keep is None or keep(m)]
        if not self.models:
            raise InputError(none_kept, path=self.info.dir)
        self.zoo = zoo if zoo is not None else get_zoo(self.info.zoo)
        if self.info.base_path is None:
            raise InputError(
                f"zoo '{self.info.zoo}' has no base model; merging evaluates task vectors of fine-tune zoos "
                "(mnist1d-cnn, digits-vit)",
                path=self.info.dir,
            )
        if any(Path(m.path).is_dir() for m in self.models):
            raise UnsupportedFormatError(
                "the merge benchmark evaluates full-checkpoint zoos; this zoo holds adapter directories",
                path=self.info.dir,
            )
        head_prefix = self.info.meta.get("head_prefix")
        private = [f"{head_prefix}*"] if isinstance(head_prefix, str) and head_prefix else []
        self.coll = Collection.from_paths(
            [m.path for m in self.models], base=self.info.base_path, private=private, min_models=1
        )
        self.names = [m.name for m in self.models]
        base = self.coll.base
        assert base is not None  # base_path was checked above
        self.base_state = {k: base.read(k) for k in base.entries}
        self.heads: list[dict[str, Tensor]] = []
        self.keys: list[list[str]] = []
        for src in self.coll.sources:
            self.keys.append(list(src.entries))
            self.heads.append({k: src.read(k) for k in self.coll.private if k in src.entries})
        self.val_fraction = val_fraction
        self.max_val = max_val
        self._val: dict[str, tuple[Tensor, Tensor]] = {}

    # -- states ------------------------------------------------------------------------------------------
    def state(self, j: int, backbone: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Model ``j``'s own head on ``backbone`` (every other key of model ``j`` taken from the backbone)."""
        head = self.heads[j]
        out = {}
        for k in self.keys[j]:
            if k in head:
                out[k] = head[k]
            elif k in backbone:
                out[k] = backbone[k]
            else:
                raise InputError(
                    f"the merged model lacks tensor '{k}' of zoo model '{self.names[j]}'", path=self.models[j].path
                )
        return out

    def validation(self, task: str) -> tuple[Tensor, Tensor]:
        """A fixed subset of ``task``'s training split (never the test split)."""
        if task not in self._val:
            x, y = self.zoo.task_data(task, "train")
            n_val = min(self.max_val, max(1, round(self.val_fraction * x.shape[0])))
            g = torch.Generator().manual_seed(_VAL_SEED + zlib.crc32(task.encode()))
            idx = torch.randperm(x.shape[0], generator=g)[:n_val]
            self._val[task] = (x[idx], y[idx])
        return self._val[task]

    # -- accuracies ----------------------------------------------------------------------------------------
    def test(self, backbone: Mapping[str, Tensor]) -> dict[str, float]:
        return {
            m.name: float(self.zoo.accuracy(self.state(j, backbone), task=m.task))
            for j, m in enumerate(self.models)
        }

    @torch.no_grad()
    def val(self, backbone: Mapping[str, Tensor]) -> dict[str, float]:
        out = {}
        # The zoo's evaluator pins its thread count (float reductions depend on how work is split); validation
        # follows the same policy so that a rerun selects the same grid values.
        threads = torch.get_num_threads()
        torch.set_num_threads(int(getattr(self.zoo, "threads", threads)))
        try:
            for j, m in enumerate(self.models):
                model = self.zoo.load_model(self.state(j, backbone), task=m.task).eval()
                x, y = self.validation(m.task)
                correct = 0
                for i in range(0, x.shape[0], 512):
                    correct += int((model(x[i : i + 512]).argmax(-1) == y[i : i + 512]).sum())
                out[m.name] = correct / max(1, x.shape[0])
        finally:
            torch.set_num_threads(threads)
        return out

    def columns(self) -> list[dict[str, str]]:
        return [{"model": m.name, "task": m.task} for m in self.models]


def _avg(acc: Mapping[str, float]) -> float:
    return sum(acc.values()) / max(1, len(acc))


def _row(label: str, kind: str, acc: Mapping[str, float], **extra: Any) -> dict[str, Any]:
    return {"label": label, "kind": kind, **extra, "accuracy": dict(acc), "average": _avg(acc)}


def _bounds(bench: _Bench) -> list[dict[str, Any]]:
    upper = {m.name: float(bench.zoo.accuracy(str(m.path), task=m.task)) for m in bench.models}
    lower = bench.test(bench.base_state)
    return [
        _row("fine-tuned (upper bound)", "upper_bound", upper),
        _row("base backbone + task head (lower bound)", "lower_bound", lower),
    ]


# -------------------------------------------------------------------------------------------------- public API


def evaluate_merged(
    zoo_dir: PathLike | ZooInfo,
    merged: PathLike | Mapping[str, Tensor],
    *,
    models: Sequence[PathLike] | None = None,
    zoo: ZooLike | None = None,
) -> dict[str, Any]:
    """Test accuracy of one merged backbone with each zoo task's own head, beside the two bounds.

    Parameters
    ----------
    zoo_dir : path or ZooInfo
        A built fine-tune zoo (``zoo.json``, ``base.safetensors``, ``models/``), or its parsed
        :class:`~weightspace.zoo.ZooInfo`.
    merged : path or mapping of str to Tensor
        The merged full model (as written by :func:`~weightspace.merge.merge`) or its state dict.
    models : sequence of path, optional
        Only evaluate the zoo models with these checkpoint paths (e.g. the ones that were merged).
    zoo : object, optional
        The zoo's evaluator (default ``weightspace.zoo.get_zoo(name)``); anything with ``load_model``,
        ``accuracy`` and ``task_data``.

    Returns
    -------
    dict
        ``zoo``, ``columns`` (``[{"model", "task"}]``) and ``rows``: the upper bound, the lower bound and the
        merged model, each with per-model ``accuracy`` and their ``average``.
    """
    wanted = None if models is None else {Path(p).resolve() for p in models}

    def keep(m: Any) -> bool:
        return wanted is None or Path(m.path).resolve() in wanted

    bench = _Bench(load_zoo(zoo_dir), zoo, 0.2, 1000, keep, "none of the merged models belongs to this zoo")
    if isinstance(merged, Mapping):
        state = dict(merged)
    else:
        src = open_source(merged)
        if src.format == "peft":
            raise UnsupportedFormatError(
                "a merged adapter cannot be evaluated on this zoo; merge with --format full", path=merged
            )
        state = {k: src.read(k) for k in src.entries}
    rows = [*_bounds(bench), _row("merged", "merged", bench.test(state))]
    return {"zoo": bench.info.zoo, "zoo_dir": str(bench.info.dir), "columns": bench.columns(), "rows": rows}


def merge_benchmark(
    zoo_dir: PathLike | ZooInfo,
    methods: Sequence[str] | None = None,
    *,
    models: Sequence[str] | None = None,
    sweep: bool = True,
    sweeps: Mapping[str, Mapping[str, Sequence[float | int]]] | None = None,
    val_fraction: float = 0.2,
    max_val: int = 1000,
    zoo: ZooLike | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Merge all task models of a fine-tune zoo with every method and measure task accuracy (method × task).

    Parameters
    ----------
    zoo_dir : path or ZooInfo
        A built fine-tune zoo directory, or its parsed :class:`~weightspace.zoo.ZooInfo` (e.g. the return value
        of ``build_zoo("mnist1d-cnn", dir)``).
    methods : sequence of str, optional
        Merge methods to compare (default: every registered one).
    models : sequence of str, optional
        Names of the zoo models to merge (default: all), e.g. the first 8 tasks.
    sweep : bool, default True
        Also report each swept method tuned on validation (see :data:`DEFAULT_SWEEPS`).
    sweeps : mapping, optional
        ``{method: {param: values}}`` grids replacing :data:`DEFAULT_SWEEPS` (one parameter per method).
        ``subspace``'s ``k`` values are capped at the number of models (larger k are the same merge).
    val_fraction : float in (0, 1), default 0.2
        Size of the validation split carved from each task's training data.
    max_val : int, default 1000
        Upper bound on validation examples per task.
    zoo : object, optional
        The zoo's evaluator (default ``weightspace.zoo.get_zoo(name)``).
    progress : callable, optional
        ``progress(stage, done, total)`` after each evaluated configuration.

    Returns
    -------
    dict
        JSON-able. ``columns``: ``[{"model", "task"}]`` (one per zoo model). ``rows``: one per configuration with
        ``label``, ``kind`` (``upper_bound``, ``lower_bound``, ``untuned``, ``tuned``, ``check``), per-model test
        ``accuracy`` and ``average``; merge rows add ``method``, ``params`` and ``rel_diff_from_mean``
        (‖merged ΔW − mean ΔW‖ / ‖mean ΔW‖ over all units); tuned rows add ``tuned_param``, ``selected``,
        ``validation_average`` and the whole ``sweep`` (validation averages per value), and their label says
        "tuned on validation". ``subspace_vs_mean`` and ``centered_coefficients`` (the measured difference between
        the centered-coefficient merge and the mean, in weights and in accuracy) summarise the two checks;
        ``validation`` describes the split; ``best_untuned``/``best_tuned`` name the winners by average.
    """
    t0 = time.perf_counter()
    # By default every method that merges any number of models, less ``linear`` (with no weights it is the mean).
    default = [n for n in MERGE_METHODS.names() if MERGE_METHODS.get(n).n_models is None and n != "linear"]
    names = default if methods is None else list(methods)
    for name in names:
        MERGE_METHODS.get(name)  # unknown names raise, listing the valid ones
    validate_params("merge_benchmark", _CONSTRAINTS, {"val_fraction": val_fraction})
    grids = {m: dict(g) for m, g in (DEFAULT_SWEEPS if sweeps is None else sweeps).items()} if sweep else {}
    for m, grid in grids.items():
        if len(grid) != 1:
            raise ParameterError(
                f"The sweep of {m!r} must name exactly one parameter. Got {sorted(grid)} instead."
            )
        for param, values in grid.items():
            if len(values) == 0:
                raise ParameterError(f"The sweep of {m!r} over {param!r} has no values.")
            for value in values:
                MERGE_METHODS.get(m).resolve_params({param: value})  # out-of-range grid values fail here, early
    grids = {m: g for m, g in grids.items() if m in names}

    info = load_zoo(zoo_dir)
    keep = None
    if models is not None:
        chosen = set(models)
        all_names = [m.name for m in info.models]
        unknown = sorted(chosen - set(all_names))
        if unknown:
            valid = ", ".join(repr(name) for name in all_names)
            raise ParameterError(f"Unknown zoo model {unknown[0]!r}. Valid choices: {valid}.")

        def keep(m: Any) -> bool:
            return m.name in chosen

    bench = _Bench(info, zoo, val_fraction, max_val, keep)
    n = bench.coll.n_models
    for name, grid in grids.items():
        (param, values) = next(iter(grid.items()))
        if name == "subspace" and param == "k" and all(isinstance(v, int) for v in values):
            # k beyond the number of models is capped by the method itself: those grid points are one merge.
            grids[name] = {param: tuple(sorted({min(int(v), n) for v in values}))}
    total = 2 + len(names) + sum(len(next(iter(g.values()))) + 1 for g in grids.values()) + 1
    done = 0

    def tick(stage: str) -> None:
        nonlocal done
        done += 1
        report(progress, stage, done, total)

    rows = _bounds(bench)
    tick("bounds")
    tick("bounds")
    by_method: dict[str, dict[str, Any]] = {}
    for name in names:
        result = merge(bench.coll, method=name)
        state, summary = result.tensors, result.to_dict()
        row = _row(
            name,
            "untuned",
            bench.test(state),
            method=name,
            params=summary["params"],
            rel_diff_from_mean=summary["rel_diff_from_mean"],
        )
        rows.append(row)
        by_method[name] = row
        tick("untuned")

    tuned: dict[str, dict[str, Any]] = {}
    for name, grid in grids.items():
        (param, values) = next(iter(grid.items()))
        trace = []
        for value in values:
            state = merge(bench.coll, method=name, params={param: value}).tensors
            val = bench.val(state)
            trace.append({"value": value, "validation_average": _avg(val), "validation": val})
            tick("sweep")
        best = max(trace, key=lambda t: t["validation_average"])  # first of equals: grid order decides ties
        result = merge(bench.coll, method=name, params={param: best["value"]})
        state, summary = result.tensors, result.to_dict()
        row = _row(
            f"{name} [{param}={best['value']}, tuned on validation]",
            "tuned",
            bench.test(state),
            method=name,
            params=summary["params"],
            rel_diff_from_mean=summary["rel_diff_from_mean"],
            tuned_param=param,
            selected=best["value"],
            validation_average=best["validation_average"],
            sweep=[{k: t[k] for k in ("value", "validation_average")} for t in trace],
        )
        rows.append(row)
        tuned[name] = row
        tick("tuned")

    result = merge(bench.coll, method=centered_coefficient_sum)
    state, summary = result.tensors, result.to_dict()
    centered_acc = bench.test(state)
    worst_unit = max(
        (u for u in summary["units"] if u["rel_diff_from_mean"] is not None),
        key=lambda u: u["rel_diff_from_mean"],
        default=None,
    )
    rows.append(
        _row(
            "centered coefficients, summed (= mean)",
            "check",
            centered_acc,
            method="centered_coefficient_sum",
            params={},
            rel_diff_from_mean=summary["rel_diff_from_mean"],
        )
    )
    tick("check")
    centered: dict[str, Any] = {
        "description": "mu + (sum_i c_i) V, c_i: coefficients of the centered task vectors in their PCA basis",
        "max_unit_rel_diff_from_mean": None if worst_unit is None else worst_unit["rel_diff_from_mean"],
        "worst_unit": None if worst_unit is None else worst_unit["name"],
        "rel_diff_from_mean": summary["rel_diff_from_mean"],
    }
    if "mean" in by_method:
        mean_acc = by_method["mean"]["accuracy"]
        centered["accuracy_difference_from_mean"] = _avg(centered_acc) - by_method["mean"]["average"]
        centered["max_abs_task_accuracy_difference"] = max(abs(centered_acc[k] - mean_acc[k]) for k in mean_acc)

    subspace_vs_mean: dict[str, Any] | None = None
    if "subspace" in by_method and "mean" in by_method:
        sub, mean = by_method["subspace"], by_method["mean"]
        subspace_vs_mean = {
            "subspace_average": sub["average"],
            "mean_average": mean["average"],
            "accuracy_difference": sub["average"] - mean["average"],
            "rel_diff_from_mean": sub["rel_diff_from_mean"],
            "subspace_wins_tasks": sum(sub["accuracy"][k] > mean["accuracy"][k] for k in mean["accuracy"]),
            "mean_wins_tasks": sum(sub["accuracy"][k] < mean["accuracy"][k] for k in mean["accuracy"]),
        }
        if "subspace" in tuned:
            subspace_vs_mean["subspace_tuned_average"] = tuned["subspace"]["average"]

    merges = [r for r in rows if r["kind"] in ("untuned", "tuned")]
    best_untuned = max((r for r in merges if r["kind"] == "untuned"), key=lambda r: r["average"], default=None)
    best_tuned = max((r for r in merges if r["kind"] == "tuned"), key=lambda r: r["average"], default=None)
    return {
        "zoo": bench.info.zoo,
        "zoo_dir": str(bench.info.dir),
        "n_models": n,
        "columns": bench.columns(),
        "rows": rows,
        "methods": names,
        "validation": {
            "source": "a fixed random subset of each task's training split (never the test split)",
            "fraction": val_fraction,
            "max_examples": max_val,
            "n_examples": {
                t: int(bench.validation(t)[0].shape[0]) for t in dict.fromkeys(m.task for m in bench.models)
            }
            if grids
            else {},
            "note": "the fine-tuned models trained on these examples; only the ranking of grid values is used",
        },
        "sweeps": {m: {p: list(v) for p, v in g.items()} for m, g in grids.items()},
        "subspace_vs_mean": subspace_vs_mean,
        "centered_coefficients": centered,
        "not_merged": summary["not_merged"],
        "best_untuned": None if best_untuned is None else best_untuned["label"],
        "best_tuned": None if best_tuned is None else best_tuned["label"],
        "wall_s": time.perf_counter() - t0,
    }


def benchmark_table(result: Mapping[str, Any], *, digits: int = 3) -> str:
    """The method × task accuracy table of :func:`merge_benchmark` (or :func:`evaluate_merged`) as Markdown.

    Parameters
    ----------
    result : mapping
        A result dict with ``columns`` and ``rows``.
    digits : int, default 3
        Decimals of the accuracies.

    Returns
    -------
    str
        One header line, a separator and one line per row; tuned rows carry "tuned on validation" in the label.

    Examples
    --------
    >>> r = {"columns": [{"model": "m0", "task": "a"}], "rows": [{"label": "mean", "accuracy": {"m0": 0.5},
    ...      "average": 0.5}]}
    >>> print(benchmark_table(r))
    | method | a | average |
    |---|---|---|
    | mean | 0.500 | 0.500 |
    """
    cols = result["columns"]
    header = "| method | " + " | ".join(c["task"] for c in cols) + " | average |"
    lines = [header, "|" + "---|" * (len(cols) + 2)]
    for row in result["rows"]:
        cells = [f"{row['accuracy'][c['model']]:.{digits}f}" for c in cols]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + f" | {row['average']:.{digits}f} |")
    return "\n".join(lines)
