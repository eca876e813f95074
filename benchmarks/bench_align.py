"""Time to align a collection of MLPs, and alignment's share of an ``analyze --align`` run, side by side.

Workload: N independently initialised ReLU MLPs ``64 → W → W → 10`` (PyTorch default init, one seed each) as
safetensors files: the hardest case for weight matching (no learned structure to lock onto). Measured in one run,
each step on the same collection:

* ``align`` to the medoid (weight matching of every model to it), and ``align --to mean``;
* ``analyze`` without alignment;
* ``analyze --align``, and its two alignment parts timed on their own: aligning the collection, and aligning the
  null (``n_null`` Gaussian collections of the same shape, aligned by the same procedure) — their share of the
  ``analyze --align`` wall time is printed.

Usage::

    python benchmarks/bench_align.py            # 64 MLPs of width 1024 (the issue's workload; minutes)
    python benchmarks/bench_align.py --quick    # 16 MLPs of width 256
    python benchmarks/bench_align.py --models 32 --width 512 --null-draws 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path


def make_collection(root: Path, n_models: int, width: int) -> None:
    import torch
    from torch import nn

    from weightspace.io import save_safetensors

    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_models):
        torch.manual_seed(1000 + i)
        net = nn.Sequential(
            nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10)
        )
        save_safetensors(root / f"mlp{i:03d}.safetensors", {k: v.detach() for k, v in net.state_dict().items()})


def _timed(fn):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="16 MLPs of width 256")
    ap.add_argument("--models", type=int, default=None)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--null-draws", type=int, default=5, help="analyze's null draws (default 5, as the CLI)")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", action="store_true", help="print the measurements as one JSON object")
    args = ap.parse_args()
    n = args.models or (16 if args.quick else 64)
    width = args.width or (256 if args.quick else 1024)

    import torch

    from weightspace.align import AlignOptions, align_collection, aligned_null_grams
    from weightspace.analyze import analyze
    from weightspace.collection import Collection

    work = args.workdir or Path(tempfile.mkdtemp(prefix="ws-bench-align-"))
    try:
        t0 = time.perf_counter()
        make_collection(work / "models", n, width)
        coll = Collection.from_paths([work / "models"])
        params = sum(u.numel for u in coll.units)
        print(
            f"workload: {n} MLPs 64→{width}→{width}→10 ({params:,} parameters each), independent inits; "
            f"torch threads {torch.get_num_threads()}; built in {time.perf_counter() - t0:.1f}s"
        )
        opts = AlignOptions()
        (_, res), t_ref = _timed(lambda: align_collection(coll, opts))
        sweeps = [m.sweeps for m in res.models if m.name != res.reference]
        print(
            f"align to the medoid ({res.reference}):   {t_ref:8.2f} s  "
            f"({t_ref / n * 1e3:.0f} ms per model; sweeps per model "
            f"{min(sweeps)}–{max(sweeps)}; "
            f"mean distance {res.mean_distance_before:.2f} → {res.mean_distance_after:.2f})"
        )
        mean_opts = AlignOptions(to="mean")
        (_, res_mean), t_mean = _timed(lambda: align_collection(coll, mean_opts))
        print(
            f"align --to mean ({res_mean.rounds} rounds):       {t_mean:8.2f} s  "
            f"(mean distance {res_mean.mean_distance_before:.2f} → {res_mean.mean_distance_after:.2f})"
        )
        _, t_null = _timed(lambda: aligned_null_grams(coll, res, opts, n_null=args.null_draws, seed=0))
        print(f"align the null ({args.null_draws} draws):        {t_null:8.2f} s")
        _, t_plain = _timed(lambda: analyze(coll, n_null=args.null_draws))
        print(f"analyze (no alignment):            {t_plain:8.2f} s")
        rep, t_full = _timed(lambda: analyze(coll, n_null=args.null_draws, align=opts))
        share = (t_ref + t_null) / t_full
        print(f"analyze --align:                   {t_full:8.2f} s")
        print(
            f"alignment's share of analyze --align: {share:.0%} (collection {t_ref / t_full:.0%}, null "
            f"{t_null / t_full:.0%}); analyze --align / analyze = {t_full / t_plain:.1f}×"
        )
        counts = rep.summary["verdict_counts"]
        print(f"verdicts after alignment (vs the aligned null): {counts}")
        if args.json:
            print(
                json.dumps(
                    {
                        "n_models": n,
                        "width": width,
                        "null_draws": args.null_draws,
                        "align_reference_s": t_ref,
                        "align_mean_s": t_mean,
                        "align_null_s": t_null,
                        "analyze_s": t_plain,
                        "analyze_align_s": t_full,
                        "align_share": share,
                        "verdict_counts": counts,
                    }
                )
            )
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
