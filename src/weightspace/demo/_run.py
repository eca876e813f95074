"""``weightspace demo``: the paper's claims on real zoos, each beside the control that could explain it.

Per zoo: build it (or reuse it from the content-addressed zoo cache); analyze (spectra vs null, intervals,
verdicts); compress at the k holding 90 % of the variance, at the paper's k = 16 and at full rank, measuring bytes
on disk; evaluate task accuracy per model as trained, rebuilt from each archive (in-sample), rebuilt from the mean
alone, and held out (the subspace fitted without the model, then the model projected: mean-only, basis-only,
mean+basis). Then a merge benchmark and an adaptation benchmark on a fine-tune zoo, and the paper's and the public
replication's numbers beside ours. Every number in demo.html is read from demo.json, every number in demo.json is
measured (the cited constants are marked as such, with their source).
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from weightspace._atomic import atomic_write_bytes, atomic_write_text
from weightspace._json import json_safe
from weightspace._version import __version__
from weightspace.collection import Collection
from weightspace.compress import CompressResult, compress
from weightspace.decompose import SharedSubspace
from weightspace.demo._align import ALIGN_KINDS, alignment_section
from weightspace.demo._claims import (
    ACC_TOL,
    K_CLAIM,
    MIN_MODELS_PER_K,
    MIN_RATIO,
    RULES,
    adapt_claim,
    compression_claim,
    heldout_claim,
    merge_claim,
    ratio_words,
    spectrum_claim,
)
from weightspace.demo._heldout import VARIANTS, heldout_states, state_from_members
from weightspace.demo._paper import paper_table
from weightspace.demo._scales import SCALES, Scale
from weightspace.demo._stats import paired_interval
from weightspace.errors import ParameterError

__all__ = ["FULL_ZOOS", "QUICK_ZOOS", "run_demo", "write_demo"]

FULL_ZOOS = SCALES["default"].zoos
QUICK_ZOOS = SCALES["quick"].zoos
BENCH_ZOO = "mnist1d-cnn"  # the merge and adaptation sections run on this fine-tune zoo
# An input transform: the backbone has to change. A label permutation would be solved by retraining the head
# alone, so it could not tell coefficient-only training from doing nothing to the backbone.
ADAPT_TASK = "reverse"
FIXED_K = K_CLAIM

Say = Callable[[str], None]
Progress = Callable[[str, int, int], None]


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else float("nan")


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


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
    """Parameter-weighted EVR at each matrix unit's tested k, against the null, and the aggregate intervals."""
    units = [u for u in report["units"] if u["kind"] == "matrix"] or report["units"]
    weights = [float(u["n_features"]) for u in units]
    total = sum(weights)

    def wmean(key: str) -> float:
        vals = [(w, u["at_k_ref"][key]) for w, u in zip(weights, units, strict=True)]
        ok = [(w, float(v)) for w, v in vals if v is not None]
        return sum(w * v for w, v in ok) / sum(w for w, _ in ok) if ok else float("nan")

    ks = sorted({int(u["at_k_ref"]["k"]) for u in units})
    return {
        "k": ks[0] if len(ks) == 1 else ks,
        "evr": wmean("evr"),
        "null_evr": wmean("null_evr"),
        "null_evr_hi": wmean("null_evr_hi"),
        "null_evr_p95": wmean("null_evr_p95"),
        "heldout_evr": wmean("heldout_evr"),
        "null_heldout_evr_hi": wmean("null_heldout_evr_hi"),
        "mean_energy_fraction": sum(
            w * float(u["mean_energy_fraction"]) for w, u in zip(weights, units, strict=True)
        )
        / total,
        "k90": _mean([float(u["k90"]) for u in units]),
        "null_k90": _mean([float(u["null_k90"]) for u in units if u["null_k90"] is not None]),
        "headline": report["summary"]["headline"],
        "aggregate": report["summary"]["aggregate"],
        "verdict_counts": report["summary"]["verdict_counts"],
        "n_units": len(report["units"]),
    }


def _accuracy_subset(n: int, m: int | None, seed: int) -> list[int]:
    if m is None or m >= n:
        return list(range(n))
    g = torch.Generator().manual_seed(seed + 0x5EED)
    return sorted(torch.randperm(n, generator=g)[:m].tolist())


def unit_ks(summary: CompressResult) -> list[int]:
    """Components kept per unit of a compress result: ``k``, or for a factored unit the larger of ``(k1, k2)``."""
    return [max(u.k) if isinstance(u.k, list | tuple) else int(u.k) for u in summary.units]


def run_zoo(
    name: str,
    out: Path,
    *,
    scale: Scale,
    seed: int,
    say: Say,
    progress: Progress | None,
    cache: Path | None = None,
    tag: str | None = None,
) -> dict[str, Any]:
    """Build (or reuse), analyze, compress and evaluate one zoo; returns its demo.json record."""
    from weightspace.analyze import analyze
    from weightspace.report import spectrum_figure
    from weightspace.zoo import cached_zoo, get_zoo

    tag = tag or name
    t0, c0 = time.perf_counter(), _cpu_s()
    timing: dict[str, float] = {}
    zoo = get_zoo(name)
    n_req = scale.n[name]
    say(f"[{tag}] building {n_req} models (reused from the zoo cache when already built)")
    info = cached_zoo(
        name,
        n=n_req,
        seed=seed,
        quick=scale.quick,
        cache=cache,
        progress=(lambda d, t, m: progress(f"{name}: train", d, t)) if progress else None,
    )
    timing["build_s"] = time.perf_counter() - t0
    paths = [m.path for m in info.models]
    base = info.base_path if zoo.kind == "finetune" else None
    coll = Collection.from_paths([str(p) for p in paths], base=base)
    n = coll.n_models

    t = time.perf_counter()
    say(f"[{tag}] analyzing {n} models × {len(coll.units)} units against nulls, with bootstrap intervals")
    report = analyze(coll, seed=seed, progress=progress)
    report.save(out / tag / "analysis", plots=scale.report_plots)
    rep = report.to_dict()
    spectrum = _spectrum_summary(rep)
    plot_name = f"spectrum-{tag}.png"
    atomic_write_bytes(
        out / plot_name,
        spectrum_figure(rep, title=f"{tag}: cumulative EVR vs k against the null's 5–95 % band (N = {n})"),
    )
    timing["analyze_s"] = time.perf_counter() - t

    t = time.perf_counter()
    say(f"[{tag}] compressing")
    models_bytes = sum(coll.sources[i].nbytes_on_disk() for i in range(n))
    base_bytes = coll.base.nbytes_on_disk() if coll.base is not None else 0
    fixed = min(FIXED_K, n - 1)
    # Full rank: N − 1 model-axis components, or for LoRA units stored factored the whole span of their factors.
    full = max([n - 1, *(u.rows for u in coll.units if u.lora)])
    settings: dict[str, int | float] = {"k90": 0.9, f"k{fixed}": fixed, "full": full}
    archives: dict[str, dict[str, Any]] = {}
    for label, n_comp in settings.items():
        path = out / tag / "archives" / f"{label}.wsz"
        # The demo measures every setting, full rank included, and reports the measured ratio in words.
        summary = compress(coll, path, n_components=n_comp, allow_larger=True)
        ks = unit_ks(summary)
        size = _dir_bytes(path)
        archives[label] = {
            "path": str(path),
            "n_components": n_comp,
            "k_mean": _mean(ks),
            "k_max": max(ks),
            "archive_bytes": size,
            "models_bytes": models_bytes,
            "base_bytes": base_bytes,
            "ratio": models_bytes / size,
            "ratio_words": ratio_words(models_bytes, size),
        }
    timing["compress_s"] = time.perf_counter() - t

    t = time.perf_counter()
    chosen = _accuracy_subset(n, scale.accuracy_models.get(name), seed)
    say(f"[{tag}] evaluating task accuracy of {len(chosen)} models (original, rebuilt, held out)")
    base_state = _base_state(zoo, info, coll)
    rows: list[dict[str, Any]] = [{"name": info.models[i].name, "task": info.models[i].task} for i in chosen]
    total_evals = len(chosen) * (2 + int(coll.is_delta) + len(archives) + len(VARIANTS))
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress:
            progress(f"{name}: evaluate", done, total_evals)

    for row, i in zip(rows, chosen, strict=True):
        row["original"] = zoo.accuracy(info.models[i].path)
        tick()
    for label, rec in archives.items():
        arc = SharedSubspace.load(rec["path"])
        for row, i in zip(rows, chosen, strict=True):
            members = {u.name: arc.units_[u.name].member(i) for u in coll.units}
            row[f"rebuilt_{label}"] = zoo.accuracy(
                state_from_members(coll, i, members, base_state), task=row["task"]
            )
            tick()
        if label == "full":
            members = {u.name: arc.units_[u.name].mean() for u in coll.units}
            for row, i in zip(rows, chosen, strict=True):
                row["mean_in_sample"] = zoo.accuracy(
                    state_from_members(coll, i, members, base_state), task=row["task"]
                )
                tick()
    if coll.is_delta and base_state is not None:
        # Control: the base with each model's own private tensors (its task head) and no task vector at all.
        zeros = {u.name: torch.zeros(u.rows, u.cols, dtype=torch.float64) for u in coll.units}
        for row, i in zip(rows, chosen, strict=True):
            row["base_own_head"] = zoo.accuracy(state_from_members(coll, i, zeros, base_state), task=row["task"])
            tick()
    testable = n >= MIN_MODELS_PER_K * K_CLAIM
    # Held-out fits use the paper's k when N allows it, else the k the analysis could test.
    k_loo = min(FIXED_K, n - 2) if testable else max(1, min(n // MIN_MODELS_PER_K, n - 2))
    states = heldout_states(coll, chosen, k_loo, base_state)
    for row, h in zip(rows, chosen, strict=True):
        for variant in VARIANTS:
            row[f"heldout_{variant}"] = zoo.accuracy(states[h][variant], task=row["task"])
            tick()
    del states
    timing["evaluate_s"] = time.perf_counter() - t
    columns = [c for c in rows[0] if c not in ("name", "task")]
    means: dict[str, float | None] = {c: _mean([r[c] for r in rows]) for c in columns}
    means.setdefault("base_own_head", None)  # raw-weight zoos have no base to fall back to
    chance_rows = [1.0 / zoo.num_classes(r["task"]) for r in rows]
    for r, c in zip(rows, chance_rows, strict=True):
        r["_chance"] = c
    chance = _mean(chance_rows)

    def diff(a: str, b: str, salt: int) -> dict[str, Any]:
        return paired_interval(rows, a, b, seed + salt)

    above_chance = diff("original", "_chance", 1)
    d_head = diff("base_own_head", "original", 2) if means["base_own_head"] is not None else None
    claims = [
        spectrum_claim(spectrum["aggregate"], spectrum["headline"], n),
        compression_claim(
            n,
            archives[f"k{fixed}"]["ratio"],
            diff(f"rebuilt_k{fixed}", "original", 3),
            diff("mean_in_sample", "original", 4),
            above_chance,
            d_head,
        ),
        heldout_claim(
            n,
            diff("heldout_mean_plus_basis", "original", 5),
            diff("heldout_mean_only", "original", 6),
            diff("heldout_mean_plus_basis", "heldout_mean_only", 7),
            above_chance,
            d_head,
            k_used=k_loo,
        ),
    ]
    for r in rows:
        r.pop("_chance")
    alignment = None
    if zoo.kind in ALIGN_KINDS:
        t = time.perf_counter()
        alignment = alignment_section(
            zoo, info, coll, seed=seed, originals=means["original"], chance=chance, say=say, progress=progress
        )
        claims.append(alignment["claim"])
        timing["align_s"] = time.perf_counter() - t
    timing["total_s"] = time.perf_counter() - t0
    timing["cpu_s"] = _cpu_s() - c0
    return {
        "zoo": name,
        "tag": tag,
        "seed": seed,
        "kind": zoo.kind,
        "n_models": n,
        "testable_k16": testable,
        "n_units": len(coll.units),
        "n_private": len(coll.private),
        "private": sorted(coll.private),
        "delta": coll.is_delta,
        "dir": str(info.dir),
        "build_key": info.meta.get("build_key"),
        "tasks": len(info.tasks) - (1 if info.meta.get("base_task") else 0),
        "analysis_report": str(Path(tag) / "analysis" / "report.html"),
        "spectrum_plot": plot_name,
        "spectrum": spectrum,
        "archives": archives,
        "accuracy": {
            "k_heldout": k_loo,
            "chance": chance,
            "models_evaluated": len(chosen),
            "mean": means,
            "models": rows,
        },
        "claims": claims,
        "alignment": alignment,
        "timing": timing,
    }


def _merge_section(zoo_dir: Path, scale: Scale, seed: int, progress: Progress | None) -> dict[str, Any]:
    from weightspace.bench import merge_benchmark
    from weightspace.zoo import load_zoo_info

    info = load_zoo_info(zoo_dir)
    names = [m.name for m in info.models[: scale.merge_models]]
    result = merge_benchmark(zoo_dir, models=names, sweep=True, progress=progress)
    result["zoo"] = BENCH_ZOO
    untuned = {r["method"]: r for r in result["rows"] if r["kind"] == "untuned"}
    others = {m: r for m, r in untuned.items() if m not in ("subspace", "mean")}
    best_other = max(others, key=lambda m: others[m]["average"])
    tasks = [c["model"] for c in result["columns"]]

    def over_tasks(a: str, b: str, salt: int) -> dict[str, Any]:
        rows = [{"a": untuned[a]["accuracy"][t], "b": untuned[b]["accuracy"][t]} for t in tasks]
        return paired_interval(rows, "a", "b", seed + salt)

    averages = {m: r["average"] for m, r in untuned.items()}
    result["claim"] = merge_claim(
        over_tasks("subspace", "mean", 11),
        over_tasks("subspace", best_other, 12),
        best_other,
        averages,
        len(tasks),
    )
    return result


def _adapt_section(zoo_dir: Path, scale: Scale, seed: int, progress: Progress | None) -> dict[str, Any]:
    from weightspace.bench import adaptation_benchmark
    from weightspace.zoo import get_zoo

    result = adaptation_benchmark(
        zoo_dir, task=ADAPT_TASK, ks=(1, 4, 16), seed=seed, steps=scale.adapt_steps, progress=progress
    )
    result["zoo"] = BENCH_ZOO
    result["task_choice"] = (
        f"held-out task {ADAPT_TASK!r} is an input transform, so the backbone must change; a label permutation "
        "is solved by the head alone and could not test the claim"
    )
    s = result["summary"]
    rows = {r["name"]: r for r in result["rows"]}
    n_test = len(get_zoo(BENCH_ZOO).task_data(ADAPT_TASK, "test")[1])
    result["claim"] = adapt_claim(
        s["best_coef_test_accuracy"],
        s["lora_test_accuracy"],
        s["full_test_accuracy"],
        s["head_only_test_accuracy"],
        s["mean_only_test_accuracy"],
        rows[s["best_coef"]]["trainable_adapter"],
        next(r["trainable_adapter"] for r in result["rows"] if r["family"] == "lora"),
        n_test,
    )
    return result


def _seed_table(runs: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
    """Claim verdicts per zoo and claim for every seed, side by side."""
    seeds = sorted(runs)
    table: dict[str, dict[str, list[str]]] = {}
    for s in seeds:
        for z in runs[s]:
            for c in z["claims"]:
                table.setdefault(z["zoo"], {}).setdefault(c["key"], []).append(c["verdict"])
    agree = sum(len(set(v)) == 1 for per in table.values() for v in per.values())
    total = sum(len(per) for per in table.values())
    return {"seeds": seeds, "verdicts": table, "agreeing_claims": agree, "claims": total}


def run_demo(
    out_dir: str | os.PathLike[str],
    *,
    quick: bool = False,
    scale: str | None = None,
    zoos: Sequence[str] | None = None,
    seed: int = 0,
    merge: bool = True,
    adapt: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    say: Say | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run the demo into ``out_dir`` and write ``demo.json``, ``demo.html`` and the plots there.

    Parameters
    ----------
    out_dir : path
        Output folder.
    quick : bool
        Same as ``scale="quick"``: three small zoos, for CI (about a minute on 2 cores).
    scale : {"quick", "default", "paper"}, optional
        Zoo sizes (see :data:`~weightspace.demo._scales.SCALES`): ``default`` builds 96 models per small zoo (the
        k = 16 claims are testable), ``paper`` 480 (and 96 LoRA adapters) with a second seed beside the first.
    zoos : sequence of str, optional
        Zoos to run (default: the scale's).
    seed : int
        Zoo seed (and of nulls, splits and bootstraps); ``paper`` also runs ``seed + 1``.
    merge, adapt : bool
        Include the merge / adaptation benchmarks (on ``mnist1d-cnn`` when it is among the zoos).
    cache_dir : path, optional
        Root of the zoo cache (default ``$WEIGHTSPACE_ZOO_CACHE`` or ``~/.cache/weightspace/zoos``); a second run
        with the same parameters reuses every zoo.

    Returns
    -------
    dict
        The content of demo.json.
    """
    from weightspace.zoo import pinned_threads, zoo_names

    t0, c0 = time.perf_counter(), _cpu_s()
    say = say or (lambda _msg: None)
    scale_name = scale or ("quick" if quick else "default")
    if scale_name not in SCALES:
        raise ParameterError(
            f"The 'scale' parameter of run_demo must be one of {', '.join(map(repr, SCALES))}. Got {scale!r}."
        )
    sc = SCALES[scale_name]
    names = list(zoos) if zoos else list(sc.zoos)
    for nm in names:
        if nm not in zoo_names():
            raise ParameterError(f"Unknown zoo '{nm}'. Valid choices: {', '.join(repr(z) for z in zoo_names())}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir is not None else None
    with pinned_threads(_demo_threads()):
        result = _run(out, sc, names, seed, merge, adapt, cache, say, progress)
    result["wall_s"] = time.perf_counter() - t0
    result["cpu_s"] = _cpu_s() - c0
    write_demo(out, result)
    return result


def _demo_threads() -> int:
    """Torch threads of the demo: ``WEIGHTSPACE_DEMO_THREADS``, default 1.

    Almost all of the demo is many small operations (N × N algebra, small models, one unit at a time), where a
    second OpenMP thread only spins at every fork/join; on a busy machine that spinning costs several times the
    work itself. Steps with large operations pin their own count (the MiniLM zoo uses 2).
    """
    raw = os.environ.get("WEIGHTSPACE_DEMO_THREADS", "")
    try:
        value = int(raw) if raw else 1
    except ValueError:
        value = 0
    if value < 1:
        raise ParameterError(f"WEIGHTSPACE_DEMO_THREADS must be a positive integer, got {raw!r}")
    return value


def _run(
    out: Path,
    sc: Scale,
    names: list[str],
    seed: int,
    merge: bool,
    adapt: bool,
    cache: Path | None,
    say: Say,
    progress: Progress | None,
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "version": 2,
        "created_by": f"weightspace {__version__}",
        "quick": sc.quick,
        "scale": sc.name,
        "seed": seed,
        "seeds": [seed + i for i in range(sc.seeds)],
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "thresholds": {
            "accuracy_tolerance": ACC_TOL,
            "min_compression_ratio": MIN_RATIO,
            "fixed_k": FIXED_K,
            "k_claim": K_CLAIM,
            "min_models_per_k": MIN_MODELS_PER_K,
            "interval_level": 0.90,
        },
        "rules": RULES,
        "zoos": [],
        "merge": None,
        "adapt": None,
    }
    for nm in names:
        result["zoos"].append(run_zoo(nm, out, scale=sc, seed=seed, say=say, progress=progress, cache=cache))
    bench = next((z for z in result["zoos"] if z["zoo"] == BENCH_ZOO), None)
    if merge and bench is not None:
        say(f"[merge] merging the first {sc.merge_models} {BENCH_ZOO} task models with every method")
        t = time.perf_counter()
        result["merge"] = _merge_section(Path(bench["dir"]), sc, seed, progress)
        result["merge"]["wall_s"] = time.perf_counter() - t
    if adapt and bench is not None:
        say(f"[adapt] coefficient-only vs LoRA vs full fine-tuning on a held-out {BENCH_ZOO} task")
        t = time.perf_counter()
        result["adapt"] = _adapt_section(Path(bench["dir"]), sc, seed, progress)
        result["adapt"]["demo_wall_s"] = time.perf_counter() - t
    if sc.seeds > 1:
        runs = {seed: result["zoos"]}
        for extra in result["seeds"][1:]:
            say(f"[seed {extra}] rebuilding every zoo with seed {extra} and testing the claims again")
            runs[extra] = [
                run_zoo(
                    nm, out, scale=sc, seed=extra, say=say, progress=progress, cache=cache, tag=f"{nm}-seed{extra}"
                )
                for nm in names
            ]
        result["seed_runs"] = {str(s): zs for s, zs in runs.items() if s != seed}
        result["seed_verdicts"] = _seed_table(runs)
    result["paper_table"] = paper_table(result)
    return result


def write_demo(out: Path, result: dict[str, Any]) -> None:
    """Write demo.json, the plots and demo.html (rendered from the JSON alone), each atomically."""
    from weightspace.demo._html import render_html, render_plots

    text = json.dumps(json_safe(result, inf_as_null=True), indent=1, allow_nan=False, default=_json_default)
    atomic_write_text(out / "demo.json", text)
    data = json.loads(text)  # the page is rendered from exactly what demo.json holds
    plots = render_plots(data)
    for fname, png in plots.items():
        atomic_write_bytes(out / fname, png)
    for z in [*data["zoos"], *[z for zs in (data.get("seed_runs") or {}).values() for z in zs]]:
        path = out / z["spectrum_plot"]
        if path.is_file():
            plots[z["spectrum_plot"]] = path.read_bytes()
    atomic_write_text(out / "demo.html", render_html(data, plots))


def _json_default(obj: Any) -> Any:
    return str(obj)
