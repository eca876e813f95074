"""``weightspace demo``: the paper's claims on real zoos, each beside the control that could explain it.

Per zoo: build (or reuse) it; analyze (spectra vs null, verdicts); compress at the k holding 90 % of the variance,
at a fixed k and at full rank, measuring bytes on disk; evaluate every model's task accuracy as trained,
rebuilt from each archive (in-sample), rebuilt from the mean alone, and held out (the subspace fitted without it,
then the model projected: mean-only, basis-only, mean+basis). Then a merge benchmark and an adaptation benchmark
on a fine-tune zoo. Every number in demo.html is read from demo.json, and every number in demo.json is measured.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from weightspace._atomic import atomic_write_bytes, atomic_write_text
from weightspace._version import __version__
from weightspace.collection import Collection
from weightspace.compress import compress
from weightspace.decompose import SharedSubspace
from weightspace.demo._align import ALIGN_KINDS, alignment_section
from weightspace.demo._claims import (
    ACC_TOL,
    MIN_RATIO,
    RULES,
    adapt_claim,
    compression_claim,
    heldout_claim,
    merge_claim,
    spectrum_claim,
)
from weightspace.demo._heldout import VARIANTS, heldout_states, member_matrix, state_from_members
from weightspace.errors import ParameterError

__all__ = ["FULL_ZOOS", "QUICK_ZOOS", "run_demo"]

FULL_ZOOS = ("digits-mlp", "digits-mlp-init", "mnist1d-cnn", "digits-vit", "minilm-lora")
QUICK_ZOOS = ("digits-mlp", "digits-mlp-init", "mnist1d-cnn")
BENCH_ZOO = "mnist1d-cnn"  # the merge and adaptation sections run on this fine-tune zoo
# An input transform: the backbone has to change. A label permutation would be solved by retraining the head
# alone, so it could not tell coefficient-only training from doing nothing to the backbone.
ADAPT_TASK = "reverse"
FIXED_K = 16

Say = Callable[[str], None]
Progress = Callable[[str, int, int], None]


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else float("nan")


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _base_state(zoo: Any, info: Any, coll: Collection) -> dict[str, torch.Tensor] | None:
    """``W0`` per unit key: the zoo base checkpoint, or the base model under the adapters."""
    if coll.is_peft:
        model = zoo.make_model(info.models[0].task, seed=0)
        sd = model.state_dict()
        return {u.name: sd[u.name].detach().clone() for u in coll.units}
    if coll.base is None:
        return None
    return {u.name: coll.base.read(u.name) for u in coll.units}


def _spectrum_summary(report: dict[str, Any]) -> dict[str, Any]:
    """Parameter-weighted EVR at each matrix unit's reference k, against the null's mean and highest draw."""
    units = [u for u in report["units"] if u["kind"] == "matrix"] or report["units"]
    weights = [float(u["n_features"]) for u in units]
    total = sum(weights)

    def wmean(key: str) -> float:
        return sum(w * float(u["at_k_ref"][key]) for w, u in zip(weights, units, strict=True)) / total

    ks = sorted({int(u["at_k_ref"]["k"]) for u in units})
    return {
        "k": ks[0] if len(ks) == 1 else ks,
        "evr": wmean("evr"),
        "null_evr": wmean("null_evr"),
        "null_evr_hi": wmean("null_evr_hi"),
        "heldout_evr": wmean("heldout_evr"),
        "null_heldout_evr_hi": wmean("null_heldout_evr_hi"),
        "mean_energy_fraction": sum(
            w * float(u["mean_energy_fraction"]) for w, u in zip(weights, units, strict=True)
        )
        / total,
        "k90": _mean([float(u["k90"]) for u in units]),
        "null_k90": _mean([float(u["null_k90"]) for u in units]),
        "headline": report["summary"]["headline"],
        "verdict_counts": report["summary"]["verdict_counts"],
        "n_units": len(report["units"]),
    }


def run_zoo(
    name: str, out: Path, *, quick: bool, seed: int, say: Say, progress: Progress | None
) -> dict[str, Any]:
    """Build, analyze, compress and evaluate one zoo; returns its demo.json record."""
    from weightspace.analyze import analyze
    from weightspace.zoo import build_zoo, get_zoo

    t0 = time.perf_counter()
    timing: dict[str, float] = {}
    zoo = get_zoo(name)
    say(f"[{name}] building zoo (reused when already built)")
    info = build_zoo(
        name,
        out / "zoos" / name,
        seed=seed,
        quick=quick,
        progress=(lambda d, t, m: progress(f"{name}: train", d, t)) if progress else None,
    )
    timing["build_s"] = time.perf_counter() - t0
    paths = [m.path for m in info.models]
    base = info.base_path if zoo.kind == "finetune" else None
    coll = Collection.from_paths([str(p) for p in paths], base=base)
    n = coll.n_models

    t = time.perf_counter()
    say(f"[{name}] analyzing {n} models × {len(coll.units)} units against nulls")
    report = analyze(coll, seed=seed, progress=progress)
    report.save(out / name / "analysis")
    rep = report.to_dict()
    spectrum = _spectrum_summary(rep)
    timing["analyze_s"] = time.perf_counter() - t

    t = time.perf_counter()
    say(f"[{name}] compressing")
    models_bytes = sum(coll.sources[i].nbytes_on_disk() for i in range(n))
    base_bytes = coll.base.nbytes_on_disk() if coll.base is not None else 0
    settings: dict[str, int | float] = {"k90": 0.9}
    fixed = min(FIXED_K, n - 1)
    if fixed < n - 1:
        settings[f"k{fixed}"] = fixed
    # Full rank: N − 1 model-axis components, or for LoRA units stored factored the whole span of their factors.
    settings["full"] = max([n - 1, *(u.rows for u in coll.units if u.lora)])
    archives: dict[str, dict[str, Any]] = {}
    for label, n_comp in settings.items():
        path = out / name / "archives" / f"{label}.wsz"
        # The demo measures every setting, full rank included, and reports the measured ratio in words.
        summary = compress(coll, path, n_components=n_comp, allow_larger=True)
        ks = [u.k for u in summary.units if isinstance(u.k, int)]
        archives[label] = {
            "path": str(path),
            "n_components": n_comp,
            "k_mean": _mean(ks),
            "k_max": max(ks),
            "archive_bytes": _dir_bytes(path),
            "models_bytes": models_bytes,
            "base_bytes": base_bytes,
            "ratio": models_bytes / _dir_bytes(path),
            "ratio_words": summary.ratio_words,
        }
    timing["compress_s"] = time.perf_counter() - t

    t = time.perf_counter()
    say(f"[{name}] evaluating task accuracy (original, rebuilt, held out)")
    base_state = _base_state(zoo, info, coll)
    rows: list[dict[str, Any]] = [{"name": m.name, "task": m.task} for m in info.models]
    total_evals = n * (2 + int(coll.is_delta) + len(archives) + len(VARIANTS))
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress:
            progress(f"{name}: evaluate", done, total_evals)

    for row, m in zip(rows, info.models, strict=True):
        row["original"] = zoo.accuracy(m.path)
        tick()
    for label, rec in archives.items():
        arc = SharedSubspace.load(rec["path"])
        for i, row in enumerate(rows):
            members = {u.name: arc.units_[u.name].member(i) for u in coll.units}
            row[f"rebuilt_{label}"] = zoo.accuracy(
                state_from_members(coll, i, members, base_state), task=row["task"]
            )
            tick()
        if label == "full":
            for i, row in enumerate(rows):
                members = {u.name: arc.units_[u.name].mean() for u in coll.units}
                row["mean_in_sample"] = zoo.accuracy(
                    state_from_members(coll, i, members, base_state), task=row["task"]
                )
                tick()
    if coll.is_delta and base_state is not None:
        # Control: the base with each model's own private tensors (its task head) and no task vector at all.
        zeros = {u.name: torch.zeros(u.rows, u.cols, dtype=torch.float64) for u in coll.units}
        for i, row in enumerate(rows):
            row["base_own_head"] = zoo.accuracy(state_from_members(coll, i, zeros, base_state), task=row["task"])
            tick()
    stacks = {u.name: member_matrix(coll, u.name) for u in coll.units}
    k_loo = min(FIXED_K, n - 2)
    for h, row in enumerate(rows):
        states = heldout_states(coll, stacks, h, k_loo, base_state)
        for variant in VARIANTS:
            row[f"heldout_{variant}"] = zoo.accuracy(states[variant], task=row["task"])
            tick()
    timing["evaluate_s"] = time.perf_counter() - t
    columns = [c for c in rows[0] if c not in ("name", "task")]
    means: dict[str, float | None] = {c: _mean([r[c] for r in rows]) for c in columns}
    means.setdefault("base_own_head", None)  # raw-weight zoos have no base to fall back to
    chance = _mean([1.0 / zoo.num_classes(r["task"]) for r in rows])

    claims = [
        spectrum_claim(spectrum["headline"], spectrum["evr"], spectrum["null_evr"], _k_label(spectrum["k"])),
        compression_claim(
            archives["k90"]["ratio"],
            means["original"],
            means["rebuilt_k90"],
            means["mean_in_sample"],
            spectrum["headline"]["verdict"],
            chance,
            means["base_own_head"],
        ),
        heldout_claim(
            means["original"],
            means["heldout_mean_only"],
            means["heldout_mean_plus_basis"],
            spectrum["headline"]["verdict"],
            chance,
            means["base_own_head"],
        ),
    ]
    alignment = None
    if zoo.kind in ALIGN_KINDS:
        t = time.perf_counter()
        alignment = alignment_section(
            zoo, info, coll, seed=seed, originals=means["original"], chance=chance, say=say, progress=progress
        )
        claims.append(alignment["claim"])
        timing["align_s"] = time.perf_counter() - t
    timing["total_s"] = time.perf_counter() - t0
    return {
        "zoo": name,
        "kind": zoo.kind,
        "n_models": n,
        "n_units": len(coll.units),
        "n_private": len(coll.private),
        "private": sorted(coll.private),
        "delta": coll.is_delta,
        "dir": str(info.dir),
        "analysis_report": str(Path(name) / "analysis" / "report.html"),
        "spectrum": spectrum,
        "archives": archives,
        "accuracy": {"k_heldout": k_loo, "chance": chance, "mean": means, "models": rows},
        "claims": claims,
        "alignment": alignment,
        "timing": timing,
    }


def _k_label(k: int | list[int]) -> int:
    return k if isinstance(k, int) else max(k)


def _merge_section(zoo_dir: Path, progress: Progress | None) -> dict[str, Any]:
    from weightspace.bench import merge_benchmark

    result = merge_benchmark(zoo_dir, sweep=True, progress=progress)
    result["zoo"] = BENCH_ZOO
    untuned = {r["method"]: r["average"] for r in result["rows"] if r["kind"] == "untuned"}
    others = {m: a for m, a in untuned.items() if m not in ("subspace", "mean")}
    best_other = max(others, key=lambda m: others[m])
    result["claim"] = merge_claim(untuned["subspace"], untuned["mean"], others[best_other], best_other)
    return result


def _adapt_section(zoo_dir: Path, seed: int, progress: Progress | None) -> dict[str, Any]:
    from weightspace.bench import adaptation_benchmark

    result = adaptation_benchmark(zoo_dir, task=ADAPT_TASK, ks=(1, 4, 16), seed=seed, progress=progress)
    result["zoo"] = BENCH_ZOO
    result["task_choice"] = (
        f"held-out task {ADAPT_TASK!r} is an input transform, so the backbone must change; a label permutation "
        "is solved by the head alone and could not test the claim"
    )
    s = result["summary"]
    rows = {r["name"]: r for r in result["rows"]}
    result["claim"] = adapt_claim(
        s["best_coef_test_accuracy"],
        s["lora_test_accuracy"],
        s["full_test_accuracy"],
        s["head_only_test_accuracy"],
        s["mean_only_test_accuracy"],
        rows[s["best_coef"]]["trainable_adapter"],
        next(r["trainable_adapter"] for r in result["rows"] if r["family"] == "lora"),
    )
    return result


def run_demo(
    out_dir: str | os.PathLike[str],
    *,
    quick: bool = False,
    zoos: Sequence[str] | None = None,
    seed: int = 0,
    merge: bool = True,
    adapt: bool = True,
    say: Say | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run the demo into ``out_dir`` and write ``demo.json`` and ``demo.html`` there.

    Parameters
    ----------
    out_dir : path
        Output folder; zoos are built under ``out_dir/zoos`` and reused by later runs.
    quick : bool
        Smaller zoos, fewer models and steps (about 3 minutes on 2 CPU cores instead of 15).
    zoos : sequence of str, optional
        Zoos to run (default: all five, or three with ``quick``).
    merge, adapt : bool
        Include the merge / adaptation benchmarks (on ``mnist1d-cnn`` when it is among the zoos).

    Returns
    -------
    dict
        The content of demo.json.
    """
    from weightspace.zoo import zoo_names

    t0 = time.perf_counter()
    say = say or (lambda _msg: None)
    names = list(zoos) if zoos else list(QUICK_ZOOS if quick else FULL_ZOOS)
    for nm in names:
        if nm not in zoo_names():
            raise ParameterError(f"Unknown zoo '{nm}'. Valid choices: {', '.join(repr(z) for z in zoo_names())}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    result: dict[str, Any] = {
        "version": 1,
        "created_by": f"weightspace {__version__}",
        "quick": quick,
        "seed": seed,
        "torch_threads": threads,
        "thresholds": {"accuracy_tolerance": ACC_TOL, "min_compression_ratio": MIN_RATIO, "fixed_k": FIXED_K},
        "rules": RULES,
        "zoos": [],
        "merge": None,
        "adapt": None,
    }
    for nm in names:
        result["zoos"].append(run_zoo(nm, out, quick=quick, seed=seed, say=say, progress=progress))
    bench_dir = out / "zoos" / BENCH_ZOO
    if merge and BENCH_ZOO in names:
        say(f"[merge] merging the {BENCH_ZOO} task models with every method")
        t = time.perf_counter()
        result["merge"] = _merge_section(bench_dir, progress)
        result["merge"]["wall_s"] = time.perf_counter() - t
    if adapt and BENCH_ZOO in names:
        say(f"[adapt] coefficient-only vs LoRA vs full fine-tuning on a held-out {BENCH_ZOO} task")
        t = time.perf_counter()
        result["adapt"] = _adapt_section(bench_dir, seed, progress)
        result["adapt"]["demo_wall_s"] = time.perf_counter() - t
    result["wall_s"] = time.perf_counter() - t0
    write_demo(out, result)
    return result


def write_demo(out: Path, result: dict[str, Any]) -> None:
    """Write demo.json, the plots and demo.html (rendered from the JSON alone), each atomically."""
    from weightspace.demo._html import render_html, render_plots

    text = json.dumps(result, indent=1, allow_nan=False, default=str)
    atomic_write_text(out / "demo.json", text)
    data = json.loads(text)  # the page is rendered from exactly what demo.json holds
    plots = render_plots(data)
    for fname, png in plots.items():
        atomic_write_bytes(out / fname, png)
    atomic_write_text(out / "demo.html", render_html(data, plots))
