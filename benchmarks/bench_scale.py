"""Scale benchmark: weightspace against the read pass, against itself in N, threads and Dask workers, side by side.

Every figure is measured in this run, each job in a fresh process (wall time of the library call itself, peak RSS
of that process from ``getrusage``), and the 1-minute load average is printed beside every row: on a shared
machine a ratio is only as good as the load it was measured under. Sections (``--sections``, default all):

* ``read``    — full-weight collection (64 models × 8 units × 1024² fp32; quick 32 × 8 × 512²): ``compress --rank 8``
  and ``analyze`` wall ÷ a bare read of the same bytes (``cat`` and a safetensors loop; warm page cache, best of
  2); ``reconstruct`` ÷ a bare read + write + fsync of as many bytes; ``project`` of 8 models ÷ ``cat`` of them.
  Targets: ≤ 1.5× the read pass.
* ``threads`` — compress and analyze with 1 thread vs every core (target ≥ 1.7× on 2 cores).
* ``dask``    — compress on a LocalCluster of 1 vs 2 workers (cluster started and warmed before the clock),
  beside 2 threads (target: 2 workers within 15 % of 2 threads).
* ``nscale``  — N = 16 … 256 models × 4 × 256² (quick 16 … 64 × 4 × 128²): wall, wall per model, peak RSS (time
  ~linear, RSS flat).
* ``tiny``    — N = 1000 … 10 000 tiny models (quick 1000, 2000; 4 units, 800 parameters): compress wall and RSS
  (10 000 < 2 min).
* ``hosvd``   — HOSVD analyze on 64 × 8 × 512² (quick 16 × 4 × 256²; target < 60 s).
* ``tv``      — 12 layers × 4096² task vectors of 4 models (quick 4 × 1024²; ``--tv-layers/--tv-dim/--tv-models``):
  HOSVD analyze, merge ties / knots / tsv. Long: HOSVD analysis of a 4096² unit with 4 models is ~24 float64
  eigendecompositions of 4096 × 4096 (stability halves, leave-one-out folds, nulls), hours on 2 cores for the
  default shape; ``--device auto`` runs them on a GPU, ``--tv-dim 2048`` is 8× cheaper.

The LoRA comparison with vlora-dev is ``benchmarks/bench_lora.py`` (its own workload; it takes ``--threads``).

Usage::

    python benchmarks/bench_scale.py [--quick] [--sections read,threads,...] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

SECTIONS = ("read", "threads", "dask", "nscale", "tiny", "hosvd", "tv")
MB = 1e6


# ------------------------------------------------------------------------------------------------- workloads
def _write_collection(root: Path, n: int, units: int, rows: int, cols: int, *, base: bool = False) -> Path:
    """``n`` fp32 models (``units`` matrices of rows × cols) around a shared mean and a 4-D shared subspace; with
    ``base`` also ``base.safetensors`` (the models are then base + a task vector)."""
    import torch
    from safetensors.torch import save_file

    marker = root / "workload.json"
    spec = {"n": n, "units": units, "rows": rows, "cols": cols, "base": base}
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return root
    shutil.rmtree(root, ignore_errors=True)
    (root / "models").mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    mean = [torch.randn(rows, cols, generator=g) for _ in range(units)]
    dirs = [torch.randn(4, rows, cols, generator=g) * 0.1 for _ in range(units)]
    if base:
        save_file({f"layer.{j}.weight": mean[j] for j in range(units)}, root / "base.safetensors")
    for i in range(n):
        sd = {}
        for j in range(units):
            c = torch.randn(4, 1, 1, generator=g)
            sd[f"layer.{j}.weight"] = mean[j] + (c * dirs[j]).sum(0) + 0.01 * torch.randn(rows, cols, generator=g)
        save_file(sd, root / "models" / f"model{i:05d}.safetensors")
    marker.write_text(json.dumps(spec))
    return root


def _write_tiny(root: Path, n: int) -> Path:
    """``n`` tiny models: fc1 32×16 + bias, fc2 8×32 + bias (800 parameters, 4 units)."""
    import torch
    from safetensors.torch import save_file

    marker = root / "workload.json"
    if marker.exists() and json.loads(marker.read_text()) == {"tiny": n}:
        return root
    shutil.rmtree(root, ignore_errors=True)
    (root / "models").mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    shared = {
        "fc1.weight": torch.randn(32, 16, generator=g),
        "fc1.bias": torch.randn(32, generator=g),
        "fc2.weight": torch.randn(8, 32, generator=g),
        "fc2.bias": torch.randn(8, generator=g),
    }
    for i in range(n):
        sd = {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in shared.items()}
        save_file(sd, root / "models" / f"m{i:05d}.safetensors")
    marker.write_text(json.dumps({"tiny": n}))
    return root


# ------------------------------------------------------------------------------------------------- child jobs
def _files(models: str) -> list[str]:
    return sorted(str(p) for p in Path(models).glob("*.safetensors"))


def job_st_loop(a: dict[str, Any]) -> dict[str, Any]:
    """Every tensor of every file copied into one reused buffer (``get_tensor`` alone maps without reading)."""
    import torch
    from safetensors import safe_open

    buf = torch.empty(0, dtype=torch.uint8)
    n = 0
    for f in _files(a["models"]):
        with safe_open(f, "pt") as h:
            for k in h.keys():  # noqa: SIM118 (safe_open handles are not iterable)
                t = h.get_tensor(k).reshape(-1).view(torch.uint8)
                if buf.numel() < t.numel():
                    buf = torch.empty(t.numel(), dtype=torch.uint8)
                buf[: t.numel()].copy_(t)
                n += t.numel()
    return {"bytes": n}


def job_copy_fsync(a: dict[str, Any]) -> dict[str, Any]:
    """The bare read + write of a model directory, each file fsynced as weightspace's atomic writers do."""
    out = Path(a["out"])
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    total = 0
    for f in _files(a["models"]):
        data = Path(f).read_bytes()
        with open(out / Path(f).name, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        total += len(data)
    shutil.rmtree(out, ignore_errors=True)
    return {"bytes": total}


def job_compress(a: dict[str, Any]) -> dict[str, Any]:
    from weightspace.compress import compress

    r = compress(
        [a["models"]],
        a["out"],
        n_components=a.get("rank", 8),
        method=a.get("method", "pca"),
        threads=a.get("threads"),
    )
    return {"archive_bytes": r.archive_bytes}


def job_compress_dask(a: dict[str, Any]) -> dict[str, Any]:
    import distributed

    from weightspace.compress import compress

    t = time.perf_counter()
    cluster = distributed.LocalCluster(n_workers=a["workers"], threads_per_worker=1, dashboard_address=None)
    client = distributed.Client(cluster)
    client.run(lambda: __import__("weightspace.compress"))  # import torch and weightspace before the clock
    startup = time.perf_counter() - t
    t = time.perf_counter()
    compress([a["models"]], a["out"], n_components=a.get("rank", 8), client=client)
    wall = time.perf_counter() - t
    client.close()
    cluster.close()
    return {"wall_s": wall, "startup_s": startup}


def job_analyze(a: dict[str, Any]) -> dict[str, Any]:
    from weightspace.analyze import analyze

    rep = analyze(
        [a["models"]], method=a.get("method", "pca"), threads=a.get("threads"), n_null=a.get("n_null", 5)
    )
    return {"verdicts": rep.summary["verdict_counts"]}


def job_reconstruct(a: dict[str, Any]) -> dict[str, Any]:
    from weightspace.compress import reconstruct

    out = reconstruct(a["archive"], a["out"])
    return {"models": len(out)}


def job_project(a: dict[str, Any]) -> dict[str, Any]:
    from weightspace.compress import project

    r = project(a["archive"], _files(a["models"])[: a["n"]], threads=a.get("threads"))
    return {"models": len(r.models)}


def job_merge(a: dict[str, Any]) -> dict[str, Any]:
    from weightspace.merge import merge

    r = merge(
        [a["models"]],
        base=a["base"],
        method=a["method"],
        out=a["out"],
        threads=a.get("threads"),
        device=DEVICE.get("device"),
    )
    return {"units": r.n_units}


#: ``--device`` for the compress, analyze and merge jobs (set in the child from its job spec).
DEVICE: dict[str, str] = {}

JOBS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    name[4:]: fn for name, fn in globals().items() if name.startswith("job_")
}


def _peak_rss() -> int:
    """This process's peak RSS in bytes. Linux's ``ru_maxrss`` starts from the parent's RSS at ``fork`` (it
    survives ``exec``), so a child of a large parent would report the parent; ``VmHWM`` belongs to this image."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _child(spec: str) -> None:
    job = json.loads(spec)
    fn = JOBS[job["job"]]
    if job.get("device"):
        DEVICE["device"] = job["device"]
    # Imported before the clock starts: the figures are the calls, not the interpreter's start-up.
    import torch  # noqa: F401

    import weightspace.analyze
    import weightspace.compress
    import weightspace.merge  # noqa: F401

    t = time.perf_counter()
    extra = fn(job)
    wall = time.perf_counter() - t
    out = {"wall_s": wall, "peak_rss": _peak_rss(), **extra}
    print("BENCH " + json.dumps(out), flush=True)


def run_job(job: str, **args: Any) -> dict[str, Any]:
    """Run one job in a fresh process; its wall (of the call), peak RSS and the load average around it."""
    load0 = os.getloadavg()[0]
    if DEVICE.get("device"):
        args = {"device": DEVICE["device"], **args}
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps({"job": job, **args}, default=str)],
        capture_output=True,
        text=True,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark job {job} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    out = json.loads(lines[-1][6:])
    out["load"] = (load0 + os.getloadavg()[0]) / 2
    return out


def timed_shell(cmd: str, repeats: int = 2) -> dict[str, Any]:
    """Best wall of ``repeats`` runs of a shell command (the first also warms the page cache)."""
    load0 = os.getloadavg()[0]
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run(cmd, shell=True, check=True)
        best = min(best, time.perf_counter() - t)
    return {"wall_s": best, "peak_rss": 0, "load": (load0 + os.getloadavg()[0]) / 2}


# ------------------------------------------------------------------------------------------------- table
class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, ...]] = []

    def add(
        self,
        section: str,
        what: str,
        m: dict[str, Any],
        ref: dict[str, Any] | None = None,
        target: str = "",
        *,
        speedup: bool = False,
    ) -> None:
        """One row; ``ratio`` is wall ÷ ref wall, or ref wall ÷ wall with ``speedup``."""
        ratio = ""
        if ref and ref.get("wall_s") and m["wall_s"] > 0:
            ratio = (
                f"{ref['wall_s'] / m['wall_s']:.2f}× faster" if speedup else f"{m['wall_s'] / ref['wall_s']:.2f}×"
            )
        rss = f"{m['peak_rss'] / MB:,.0f}" if m.get("peak_rss") else ""
        row = (section, what, f"{m['wall_s']:.2f}", rss, ratio, target, f"{m['load']:.2f}")
        self.rows.append(row)
        print("  " + " | ".join(row), flush=True)

    def print(self) -> None:
        head = ("section", "workload / measure", "wall s", "peak RSS MB", "ratio", "target", "load avg")
        widths = [max(len(r[i]) for r in [head, *self.rows]) for i in range(len(head))]
        line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
        print()
        print(line(head))
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for r in self.rows:
            print(line(r))


# ------------------------------------------------------------------------------------------------- sections
def section_read(t: Table, work: Path, q: bool, threads: int | None) -> None:
    n, units, d = (32, 8, 512) if q else (64, 8, 1024)
    root = _write_collection(work / f"read-{n}x{units}x{d}", n, units, d, d)
    models = root / "models"
    label = f"{n}×{units}×{d}² fp32 ({n * units * d * d * 4 / MB:,.0f} MB)"
    cat = timed_shell(f"cat {models}/*.safetensors > /dev/null")
    loop = min((run_job("st_loop", models=models) for _ in range(2)), key=lambda m: m["wall_s"])
    t.add("read", f"{label}: cat", cat)
    t.add("read", f"{label}: safetensors loop", loop)
    ref = min(cat, loop, key=lambda m: m["wall_s"])
    comp = run_job("compress", models=models, out=work / "read.wsz", rank=8, threads=threads)
    t.add("read", "compress --rank 8 ÷ best bare read", comp, ref, "≤ 1.5×")
    t.add("read", "compress --rank 8 ÷ safetensors loop", comp, loop, "≤ 1.5×")
    ana = run_job("analyze", models=models, threads=threads)
    t.add("read", "analyze (pca) ÷ best bare read", ana, ref, "≤ 1.5×")
    out = work / "read-rec"
    shutil.rmtree(out, ignore_errors=True)
    copy = run_job("copy_fsync", models=models, out=work / "read-cp")
    rec = run_job("reconstruct", archive=work / "read.wsz", out=out)
    t.add("read", "bare read + write + fsync of the models", copy)
    t.add("read", "reconstruct all ÷ bare read + write", rec, copy, "≤ 1.5×")
    shutil.rmtree(out, ignore_errors=True)
    first = " ".join(_files(str(models))[:8])
    cat8 = timed_shell(f"cat {first} > /dev/null")
    proj = run_job("project", archive=work / "read.wsz", models=models, n=8, threads=threads)
    t.add("read", "project 8 models ÷ cat of them", proj, cat8, "")


def section_threads(t: Table, work: Path, q: bool, threads: int | None) -> None:
    from weightspace.backends import available_cores

    n, units, d = (32, 8, 512) if q else (64, 8, 1024)
    models = _write_collection(work / f"read-{n}x{units}x{d}", n, units, d, d) / "models"
    every = threads or available_cores()
    for job, label in (("compress", "compress --rank 8"), ("analyze", "analyze (pca)")):
        kw = {"models": models, "out": work / "thr.wsz", "rank": 8} if job == "compress" else {"models": models}
        one = run_job(job, threads=1, **kw)
        many = run_job(job, threads=every, **kw)
        t.add("threads", f"{label}, 1 thread", one)
        t.add("threads", f"{label}, {every} threads vs 1", many, one, "≥ 1.7× (2 cores)", speedup=True)


def section_dask(t: Table, work: Path, q: bool, threads: int | None) -> None:
    n, units, d = (32, 8, 512) if q else (64, 8, 1024)
    models = _write_collection(work / f"read-{n}x{units}x{d}", n, units, d, d) / "models"
    two = run_job("compress", models=models, out=work / "dask.wsz", rank=8, threads=2)
    w1 = run_job("compress_dask", models=models, out=work / "dask.wsz", workers=1)
    w2 = run_job("compress_dask", models=models, out=work / "dask.wsz", workers=2)
    t.add("dask", "compress, 2 threads", two)
    t.add("dask", f"compress, LocalCluster 1 worker (startup {w1['startup_s']:.1f} s not counted)", w1)
    t.add("dask", f"compress, LocalCluster 2 workers (startup {w2['startup_s']:.1f} s) ÷ 1 worker", w2, w1)
    t.add("dask", "compress, LocalCluster 2 workers ÷ 2 threads", w2, two, "≤ 1.15×")


def section_nscale(t: Table, work: Path, q: bool, threads: int | None) -> None:
    units, d = (4, 128) if q else (4, 256)
    ns = (16, 32, 64) if q else (16, 32, 64, 128, 256)
    first = None
    for n in ns:
        models = _write_collection(work / f"n-{n}x{units}x{d}", n, units, d, d) / "models"
        m = run_job("compress", models=models, out=work / "n.wsz", rank=8, threads=threads)
        first = first or m
        t.add(
            "nscale",
            f"compress N={n} × {units}×{d}², {1e3 * m['wall_s'] / n:.1f} ms/model (÷ N={ns[0]})",
            m,
            first,
            f"~{n // ns[0]}× (linear)",
        )


def section_tiny(t: Table, work: Path, q: bool, threads: int | None) -> None:
    ns = (1000, 2000) if q else (1000, 2000, 5000, 10000)
    for n in ns:
        models = _write_tiny(work / f"tiny-{n}", n) / "models"
        m = run_job("compress", models=models, out=work / "tiny.wsz", rank=8, threads=threads)
        t.add("tiny", f"compress {n} tiny models (4 units, 800 params)", m, None, "< 120 s" if n == 10000 else "")


def section_hosvd(t: Table, work: Path, q: bool, threads: int | None) -> None:
    n, units, d = (16, 4, 256) if q else (64, 8, 512)
    models = _write_collection(work / f"h-{n}x{units}x{d}", n, units, d, d) / "models"
    m = run_job("analyze", models=models, method="hosvd", threads=threads)
    t.add("hosvd", f"HOSVD analyze {n}×{units}×{d}²", m, None, "< 60 s" if not q else "")


TV_SHAPE: dict[str, int] = {}


def section_tv(t: Table, work: Path, q: bool, threads: int | None) -> None:
    n, units, d = (4, 4, 1024) if q else (4, 12, 4096)
    n, units, d = TV_SHAPE.get("models", n), TV_SHAPE.get("layers", units), TV_SHAPE.get("dim", d)
    root = _write_collection(work / f"tv-{n}x{units}x{d}", n, units, d, d, base=True)
    label = f"{units} layers × {d}², {n} task vectors"
    m = run_job("analyze", models=root / "models", method="hosvd", threads=threads)
    t.add("tv", f"{label}: HOSVD analyze", m)
    for method in ("ties", "knots", "tsv"):
        m = run_job(
            "merge",
            models=root / "models",
            base=root / "base.safetensors",
            method=method,
            out=work / "tv-merged.safetensors",
            threads=threads,
        )
        t.add("tv", f"{label}: merge {method}", m)


RUNNERS = {
    "read": section_read,
    "threads": section_threads,
    "dask": section_dask,
    "nscale": section_nscale,
    "tiny": section_tiny,
    "hosvd": section_hosvd,
    "tv": section_tv,
}


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small workloads (minutes, not an hour)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    ap.add_argument("--threads", type=int, default=None, help="threads for the non-thread sections (default: all)")
    ap.add_argument("--workdir", type=Path, default=None, help="keep workloads here (reused when they match)")
    ap.add_argument("--keep", action="store_true", help="do not delete a temporary workdir")
    ap.add_argument("--device", default=None, help="cpu, cuda or auto for compress/analyze/merge (default cpu)")
    ap.add_argument("--tv-layers", type=int, help="tv section: layers (default 12; quick 4)")
    ap.add_argument(
        "--tv-dim", type=int, help="tv section: d of the d × d task vectors (default 4096; quick 1024)"
    )
    ap.add_argument("--tv-models", type=int, help="tv section: task vectors (default 4)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child)
        return
    if args.device:
        DEVICE["device"] = args.device
    for key, value in (("layers", args.tv_layers), ("dim", args.tv_dim), ("models", args.tv_models)):
        if value is not None:
            TV_SHAPE[key] = value
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        ap.error(f"unknown sections {unknown}; choose from {SECTIONS}")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ws-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    from weightspace.backends import available_cores

    print(
        f"weightspace scale benchmark ({'quick' if args.quick else 'full'}), {available_cores()} cores, "
        f"load average at start {os.getloadavg()}, workdir {work}",
        flush=True,
    )
    t0 = time.perf_counter()
    table = Table()
    try:
        for s in sections:
            print(f"[{s}]", flush=True)
            RUNNERS[s](table, work, args.quick, args.threads)
    finally:
        table.print()
        print(
            f"\ntotal {time.perf_counter() - t0:.0f} s; load average at end {os.getloadavg()} "
            "(1, 5, 15 min); each row shows the mean of the 1-minute load before and after it"
        )
        if args.workdir is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
