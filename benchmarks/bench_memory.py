"""Peak RSS and wall time of streaming `compress` (and `analyze`) vs a naive in-memory SVD, side by side.

The bound: with one unit in flight and no read cache, peak RSS of `compress` on 64 models × 8 units × 512×512 fp32
stays under 1.5 × (one unit across all models) + 300 MB. The defaults trade memory for speed within a budget: every
core runs a unit (the streaming bound per unit in flight) and a unit whose float64 copy fits the read cache (1 GiB in
all) is read once instead of twice, so their bound is ``threads × 1.5 × unit + min(1 GiB, threads × unit in float64)
+ 300 MB``. Every figure below is measured in this run, each command in a fresh process (peak RSS from ``VmHWM``).

Usage::

    python benchmarks/bench_memory.py [--models 64] [--units 8] [--size 512] [--workdir DIR] [--skip-analyze]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

MB = 1e6

_CHILD = textwrap.dedent(
    """
    import atexit, json, sys, time
    t0 = time.perf_counter()
    def _peak_rss():
        # VmHWM: this process's own high-water mark (ru_maxrss keeps the parent's across fork + exec)
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmHWM:"))
    def _report():
        print(json.dumps({"peak_rss": _peak_rss(), "wall_s": time.perf_counter() - t0}), file=sys.__stderr__)
    atexit.register(_report)
    {body}
    """
)


def _run(body: str) -> dict:
    code = _CHILD.replace("{body}", textwrap.dedent(body).strip().replace("\n", "\n"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith('{"peak_rss"')]
    if proc.returncode not in (0, None) and not lines:
        raise RuntimeError(f"benchmark child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def make_collection(root: Path, n_models: int, n_units: int, size: int) -> None:
    import torch
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    shared = [torch.randn(size, size, generator=g) for _ in range(n_units)]
    for i in range(n_models):
        sd = {f"layer.{j}.weight": shared[j] + 0.1 * torch.randn(size, size, generator=g) for j in range(n_units)}
        save_file(sd, root / f"model{i:03d}.safetensors")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=64)
    ap.add_argument("--units", type=int, default=8)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--skip-analyze", action="store_true")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ws-bench-"))
    models = work / "models"
    try:
        t0 = time.perf_counter()
        make_collection(models, args.models, args.units, args.size)
        unit_bytes = args.models * args.size * args.size * 4
        bound = 1.5 * unit_bytes + 300 * MB
        threads = os.cpu_count() or 1
        bound_default = threads * 1.5 * unit_bytes + min(1 << 30, threads * 2 * unit_bytes) + 300 * MB
        print(
            f"workload: {args.models} models × {args.units} units × {args.size}×{args.size} fp32 "
            f"(one unit across all models = {unit_bytes / MB:.1f} MB, collection = {args.units * unit_bytes / MB:.1f} MB;"
            f" built in {time.perf_counter() - t0:.1f}s)"
        )
        rows = []
        rows.append(("interpreter + torch + weightspace", _run("import torch, weightspace.cli")))
        rows.append(
            (
                f"compress --rank {args.rank}, 1 unit in flight, no cache",
                _run(
                    f"""
                    from weightspace import SharedSubspace, Collection
                    from weightspace.backends import RunOptions
                    coll = Collection.from_paths([{str(models)!r}])
                    SharedSubspace(n_components={args.rank}).fit(
                        coll, out={str(work / "s.wsz")!r}, run=RunOptions(threads=1, cache_bytes=0)
                    )
                    """
                ),
            )
        )
        rows.append(
            (
                f"compress --rank {args.rank} (defaults: {threads} threads, cache)",
                _run(
                    f"""
                    from weightspace.cli import main
                    main(['compress', {str(models)!r}, '-o', {str(work / "a.wsz")!r}, '--rank', '{args.rank}'])
                    """
                ),
            )
        )
        if not args.skip_analyze:
            try:
                import weightspace.cli._analyze_cmd  # noqa: F401

                rows.append(
                    (
                        "analyze (defaults)",
                        _run(
                            f"""
                            from weightspace.cli import main
                            main(['analyze', {str(models)!r}, '-o', {str(work / "report")!r}])
                            """
                        ),
                    )
                )
            except ImportError:
                print("(analyze not available in this checkout; skipped)")
        rows.append(
            (
                "naive: load unit stack in memory + SVD",
                _run(
                    f"""
                    import torch
                    from pathlib import Path
                    from safetensors.torch import load_file
                    files = sorted(Path({str(models)!r}).glob('*.safetensors'))
                    for j in range({args.units}):
                        x = torch.stack([load_file(f)[f'layer.{{j}}.weight'].reshape(-1) for f in files]).double()
                        x -= x.mean(0)
                        torch.linalg.svd(x, full_matrices=False)
                    """
                ),
            )
        )
        print(f"{'what':48s} {'peak RSS':>12s} {'wall':>9s}")
        for name, r in rows:
            print(f"{name:48s} {r['peak_rss'] / MB:9.1f} MB {r['wall_s']:8.1f}s")
        stream, comp = rows[1][1], rows[2][1]
        naive = rows[-1][1]

        def check(name: str, peak: float, limit: float, formula: str) -> None:
            ok = "PASS" if peak < limit else "FAIL"
            print(f"{name}: peak {peak / MB:.1f} MB vs bound {formula} = {limit / MB:.1f} MB: {ok}")

        check("compress, 1 unit in flight", stream["peak_rss"], bound, f"1.5 × {unit_bytes / MB:.1f} MB + 300 MB")
        per_unit = f"{threads} × 1.5 × {unit_bytes / MB:.1f} MB"
        formula = f"{per_unit} + min(1 GiB, {threads} × {2 * unit_bytes / MB:.1f} MB) + 300 MB"
        check("compress, defaults", comp["peak_rss"], bound_default, formula)
        if not args.skip_analyze and len(rows) > 4:
            check("analyze, defaults", rows[3][1]["peak_rss"], bound_default, formula)
        print(
            f"ratios (naive / streaming, 1 unit in flight): peak RSS {naive['peak_rss'] / stream['peak_rss']:.2f}×, "
            f"wall {naive['wall_s'] / stream['wall_s']:.2f}×"
        )
        arc = work / "a.wsz"
        size = sum(p.stat().st_size for p in arc.rglob("*") if p.is_file())
        print(f"archive {size / MB:.1f} MB vs collection {args.units * unit_bytes / MB:.1f} MB on disk")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
