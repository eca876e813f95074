"""LoRA collections side by side: weightspace (factored default, and pca) vs vlora-dev 1.0.0 and lorashare 0.1.3.

Three sections, every number measured in this run, each compress in a fresh process (wall time from process start,
imports included; peak RSS from ``getrusage(RUSAGE_SELF)`` of that process, taken when the archive is written):

1. **planted** — N adapters × L layers × {q_proj, v_proj}, rank r, d_out = d_in = d, whose updates share a planted
   span per module plus noise on both factors; the same adapters again with every factor pair rotated
   (``B R``, ``Rᵀ A``: identical ΔW). Per method: wall, peak RSS, archive bytes ÷ adapter bytes, pooled relative ΔW
   error ``sqrt(Σ‖ΔW − ΔŴ‖² / Σ‖ΔW‖²)`` in-sample and on held-out adapters (projected, never refitted), plain
   and rotated; weightspace also at the rank whose archive matches each peer's bytes (equal-bytes comparison).
2. **zoo** — the ``minilm-lora`` zoo (real PEFT adapters on all-MiniLM-L6-v2): archive ratio, ΔW errors and task
   accuracy of the originals, the rebuilt adapters and the held-out ones (leave-one-out: fit on N − 1, project
   the last one, rebuild it), each adapter evaluated with its own head.
3. **serving** — N adapters on MiniLM served from one archive (:func:`weightspace.serve.serve`) vs a
   ``peft.PeftModel`` with the same N adapters loaded: adapter memory, RSS added, switch time, tokens/s with one
   adapter per batch and with a mixed batch (one adapter per row).

The peers run in their own venv (``--peers-python``, default ``$WEIGHTSPACE_PEERS_PYTHON`` or ``.venv-peers/bin/python``;
created with ``python3 -m venv .venv-peers``, ``pip install torch==2.13.0`` first, then
``pip install vlora-dev==1.0.0 lorashare==0.1.3``) through ``benchmarks/_lora_peers.py``; a peer that is missing
is skipped with a message.

Usage::

    python benchmarks/bench_lora.py --quick                      # small version of every section (minutes)
    python benchmarks/bench_lora.py                              # d = 1024 and 4096, the zoo, serving 64
    python benchmarks/bench_lora.py --sizes 1024 --sections planted
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # measure this checkout's weightspace, here and in every child
PEERS_SCRIPT = Path(__file__).resolve().parent / "_lora_peers.py"
DEFAULT_PEERS = os.environ.get("WEIGHTSPACE_PEERS_PYTHON", str(REPO / ".venv-peers" / "bin" / "python"))
MB = 1e6
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}

# ------------------------------------------------------------------------------------------------ children
# Peak RSS is VmHWM of the child's own address space: getrusage's ru_maxrss survives fork + exec on Linux, so a
# child would report at least the parent's RSS at the time it was started.
_PRELUDE = """
import time
T0 = time.perf_counter()
import atexit, json, sys
def _hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
def _report():
    print("RUSAGE " + json.dumps({"wall_s": time.perf_counter() - T0, "peak_rss": _hwm()}), file=sys.__stderr__,
          flush=True)
atexit.register(_report)
ARGS = json.loads(sys.argv[1])
"""

_OURS_COMPRESS = """
from weightspace.cli import main
main(ARGS["argv"])
"""


def _child(python: str, code: str, args: dict[str, Any], *, script: Path | None = None) -> dict[str, Any]:
    """Run ``code`` (or ``script``) in a fresh ``python``; returns its RESULT/CLI JSON, RUSAGE and exit code."""
    cmd = [python, str(script)] if script else [python, "-c", _PRELUDE + textwrap.dedent(code)]
    proc = subprocess.run([*cmd, json.dumps(args)], capture_output=True, text=True, env=ENV)
    out: dict[str, Any] = {"returncode": proc.returncode, "stderr": proc.stderr[-4000:]}
    for line in proc.stderr.splitlines():
        if line.startswith("RUSAGE "):
            out.update(json.loads(line[7:]))
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            out.update(json.loads(line[7:]))
    if proc.stdout.lstrip().startswith("{"):
        out["json"] = json.loads(proc.stdout)  # a CLI's --json output
    return out


def _peers_ok(python: str) -> dict[str, str | None]:
    """Which peers import in ``python`` (None) and why the others cannot (a message)."""
    status: dict[str, str | None] = {}
    for name, module in (("vlora", "vlora"), ("lorashare", "lorashare")):
        if not Path(python).exists():
            status[name] = f"skipped: no peer venv at {python} (see the module docstring to create it)"
            continue
        proc = subprocess.run([python, "-c", f"import {module}"], capture_output=True, text=True)
        status[name] = None if proc.returncode == 0 else f"skipped: import {module} failed ({proc.stderr[-200:]})"
    return status


# ------------------------------------------------------------------------------------------------ adapters
def _adapter_config(r: int, targets: Sequence[str]) -> dict[str, Any]:
    return {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": 2 * r,
        "target_modules": sorted(targets),
        "lora_dropout": 0.0,
        "bias": "none",
        "use_rslora": False,
        "fan_in_fan_out": False,
        "use_dora": False,
        "rank_pattern": {},
        "alpha_pattern": {},
        "modules_to_save": None,
    }


def _write_adapter(path: Path, factors: dict[str, tuple[torch.Tensor, torch.Tensor]], config: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for module, (a, b) in factors.items():
        tensors[f"base_model.model.{module}.lora_A.weight"] = a.contiguous()
        tensors[f"base_model.model.{module}.lora_B.weight"] = b.contiguous()
    save_file(tensors, path / "adapter_model.safetensors")
    (path / "adapter_config.json").write_text(json.dumps(config, indent=1))
    return path


def _sq(left: torch.Tensor, right: torch.Tensor) -> float:
    """‖L R‖² by an r×r Gram (no d×d product)."""
    return float(((left.T @ left) * (right @ right.T)).sum())


def make_planted(
    root: Path, n: int, layers: int, d: int, r: int, span: int, noise: float, seed: int = 0
) -> dict[str, Any]:
    """Adapters ``ad000…`` in ``root/plain`` and the same ΔW with rotated factors in ``root/rotated``.

    Per module a span ``U0`` (d × span), ``V0`` (d × span) is planted: ``B_i = U0 X_i + ε N``, ``A_i = Y_i V0ᵀ + ε N'``
    with ``ε = noise · sqrt(span / d)`` (so each factor's noise is ``noise`` of its signal).
    """
    modules = [f"model.layers.{i}.self_attn.{p}" for i in range(layers) for p in ("q_proj", "v_proj")]
    config = _adapter_config(r, ("q_proj", "v_proj"))
    g = torch.Generator().manual_seed(seed)
    spans = {
        m: (
            torch.linalg.qr(torch.randn(d, span, generator=g)).Q,
            torch.linalg.qr(torch.randn(d, span, generator=g)).Q,
        )
        for m in modules
    }
    eps = noise * math.sqrt(span / d)
    noise_sq = total_sq = 0.0
    plain, rotated = [], []
    for i in range(n):
        fac, rot = {}, {}
        for m in modules:
            u0, v0 = spans[m]
            b_clean = u0 @ torch.randn(span, r, generator=g)  # (d, r)
            a_clean = torch.randn(r, span, generator=g) @ v0.T  # (r, d)
            b = b_clean + eps * torch.randn(d, r, generator=g)
            a = a_clean + eps * torch.randn(r, d, generator=g)
            q = torch.linalg.qr(torch.randn(r, r, generator=g)).Q
            fac[m] = (a, b)
            rot[m] = (q.T @ a, b @ q)  # B R, Rᵀ A: the same ΔW
            bd, ad = b.double(), a.double()
            noise_sq += _sq(torch.cat([bd, -b_clean.double()], 1), torch.cat([ad, a_clean.double()], 0))
            total_sq += _sq(bd, ad)
        plain.append(_write_adapter(root / "plain" / f"ad{i:03d}", fac, config))
        rotated.append(_write_adapter(root / "rotated" / f"ad{i:03d}", rot, config))
    return {"plain": plain, "rotated": rotated, "noise_level": (noise_sq / total_sq) ** 0.5, "modules": modules}


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def _factors(path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(s·B, A) in float64 per unit key, read through weightspace's PEFT reader."""
    from weightspace.io import open_source

    src = open_source(path)
    out = {}
    for key in src.modules:
        b, a, mod = src.lora(key)
        out[key] = (mod.scaling * b.double().reshape(b.shape[0], -1), a.double().reshape(a.shape[0], -1))
    return out


# ------------------------------------------------------------------------------------------------ weightspace
def ours_compress(python: str, paths: Sequence[Path], out: Path, *extra: str) -> dict[str, Any]:
    argv = ["compress", *map(str, paths), "-o", str(out), "--json", *extra]
    res = _child(python, _OURS_COMPRESS, {"argv": argv})
    if res["returncode"] != 0 or "archive_bytes" not in (res.get("json") or {}):
        err = (res.get("json") or {}).get("error")  # the CLI's --json error object
        if not err:
            lines = [ln for ln in res["stderr"].splitlines() if ln.strip() and not ln.startswith("RUSAGE")]
            err = " ".join(" ".join(lines[-6:]).split())
        res["refused"] = err
        res["json"] = None
    return res


def ours_in_sample(archive: Path, paths: Sequence[Path]) -> float:
    """Pooled in-sample error of the stored reconstructions (factored units: U (M + C_i) Vᵀ; others: spectrum).

    Adapters are read one at a time (the archive's shared factors stay in memory).
    """
    from weightspace.decompose import SharedSubspace

    ss = SharedSubspace.load(archive)
    shared = {key: unit.shared_factors() for key, unit in ss.units_.items()}
    err = norm = 0.0
    for key, unit in ss.units_.items():
        if shared[key] is None:  # model-axis PCA: Σ_i ‖x_i − x̂_i‖² = Σ_{j > k} σ_j² (centered)
            err += float((unit.singular_values[int(unit.k) :] ** 2).sum())  # type: ignore[call-overload]
    for i, p in enumerate(paths):
        for key, (left, right) in _factors(p).items():
            norm += _sq(left, right)
            if shared[key] is not None:
                u, cores, v = shared[key]  # type: ignore[misc]
                err += _sq(torch.cat([left, -(u @ cores[i])], 1), torch.cat([right, v.T], 0))
    return (err / norm) ** 0.5


def ours_held_out(archive: Path, paths: Sequence[Path]) -> tuple[float, float]:
    """Pooled (mean + basis, mean only) relative residuals of unseen adapters.

    Factored archives go through :func:`weightspace.compress.project` (cores from the adapters' factors). Dense
    (pca) archives are projected here, each unit's basis read once for all adapters, with the same formulas
    (``project`` would re-read a ΔW-sized basis for every adapter).
    """
    from weightspace.compress import project
    from weightspace.decompose import SharedSubspace

    ss = SharedSubspace.load(archive)
    factors = [_factors(p) for p in paths]
    norms = [sum(_sq(left, right) for left, right in f.values()) for f in factors]
    tot = sum(norms)
    if all(u.shared_factors() is not None for u in ss.units_.values()):
        res = project(ss, [str(p) for p in paths])
        mb = sum(m.mean_plus_basis**2 * n for m, n in zip(res.models, norms, strict=True)) / tot
        mo = sum(m.mean_only**2 * n for m, n in zip(res.models, norms, strict=True)) / tot
        return mb**0.5, mo**0.5
    mb = mo = 0.0
    for key, unit in ss.units_.items():
        mean = unit.mean().reshape(-1)  # (D,)
        basis = unit.tensor("basis").reshape(-1, mean.numel())  # (k, D), orthonormal rows
        for f in factors:
            xc = (f[key][0] @ f[key][1]).reshape(-1) - mean  # dense ΔW − μ: this is the pca baseline's own cost
            mo += float(xc @ xc)
            mb += float(xc @ xc) - float(((basis @ xc) ** 2).sum())
    return (mb / tot) ** 0.5, (mo / tot) ** 0.5


def ours_bytes(d: int, n_units: int, n: int, k: int) -> int:
    """Tensor bytes of a factored archive at rank k (U, V, mean core, cores; float32)."""
    return n_units * (2 * d * k + k * k + n * k * k) * 4


# ------------------------------------------------------------------------------------------------ formatting
def _words(models: float, archive: float) -> str:
    from weightspace.compress import ratio_words

    return ratio_words(int(models), int(archive))


def _table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in header]]
    for row in rows:
        strs = ["—" if c is None else str(c) for c in row]
        cells.append(strs + [""] * (len(header) - len(strs)))
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(cells[0], widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells[1:]]
    return "\n".join(lines)


def _f(x: float | None, spec: str = ".4f") -> str | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _check(ok: bool) -> str:
    return "met" if ok else "NOT met"


# ------------------------------------------------------------------------------------------------ 1. planted
def run_planted(args: argparse.Namespace, d: int, work: Path, peers: dict[str, str | None]) -> dict[str, Any]:
    n, held, layers, r = args.adapters, args.held_out, args.layers, args.rank
    t0 = time.perf_counter()
    data = make_planted(work / f"planted-d{d}", n + held, layers, d, r, args.span, args.noise)
    n_units = len(data["modules"])
    train = {v: data[v][:n] for v in ("plain", "rotated")}
    test = {v: data[v][n:] for v in ("plain", "rotated")}
    adapter_bytes = sum(_dir_bytes(p) for p in train["plain"])
    print(
        f"\n[planted d={d}] {n} adapters (+{held} held out) × {n_units} modules, r={r}, planted span {args.span}, "
        f"noise level {data['noise_level']:.4f} (‖ΔW − ΔW_clean‖/‖ΔW‖, pooled); adapters {adapter_bytes / MB:.1f} MB; "
        f"written in {time.perf_counter() - t0:.1f}s",
        flush=True,
    )
    rows: list[dict[str, Any]] = []

    def ours(label: str, k: int, *extra: str) -> dict[str, Any]:
        row: dict[str, Any] = {"method": label, "setting": f"k={k}"}
        for variant in ("plain", "rotated"):
            arc = work / f"ws-d{d}-{variant}-{label.split()[-1]}-k{k}.wsz"
            res = ours_compress(sys.executable, train[variant], arc, "--rank", str(k), *extra)
            if res.get("json") is None:
                row["refused"] = res.get("refused")
                print(f"  {label} k={k}: refused — {row['refused']}", flush=True)
                return row
            if variant == "plain":
                row.update(
                    wall_s=res["wall_s"], peak_rss=res["peak_rss"], archive_bytes=res["json"]["archive_bytes"]
                )
            row[f"in_{variant}"] = ours_in_sample(arc, train[variant])
            row[f"held_{variant}"], row[f"mean_only_{variant}"] = ours_held_out(arc, test[variant])
            shutil.rmtree(arc, ignore_errors=True)
        print(f"  {label} k={k}: done", flush=True)
        return row

    default = ours("weightspace auto", args.k)
    rows.append(default)
    overhead = default["archive_bytes"] - ours_bytes(d, n_units, n, args.k)
    for name, label in (("vlora", "vlora-dev 1.0.0"), ("lorashare", "lorashare 0.1.3")):
        if peers[name] is not None:
            rows.append({"method": label, "setting": peers[name]})
            continue
        if name == "lorashare" and d > args.lorashare_max_d:
            why = (
                f"skipped: {2 * n_units} dense {d}×{d} eigendecompositions per run (--lorashare-max-d {d} runs it)"
            )
            rows.append({"method": label, "setting": why})
            continue
        row: dict[str, Any] = {"method": label, "setting": "default"}
        for variant in ("plain", "rotated"):
            out = work / f"{name}-d{d}-{variant}"
            res = _child(
                args.peers_python,
                "",
                {
                    "method": name,
                    "train": [str(p) for p in train[variant]],
                    "held_out": [str(p) for p in test[variant]],
                    "out": str(out),
                    "k": None,
                },
                script=PEERS_SCRIPT,
            )
            if "archive_bytes" not in res:
                row["setting"] = f"failed: {res['stderr'][-300:]}"
                break
            if variant == "plain":
                row.update(wall_s=res["wall_s"], peak_rss=res["peak_rss"], archive_bytes=res["archive_bytes"])
                row["setting"] = f"default (k={res['k']})"
            row[f"in_{variant}"], row[f"held_{variant}"] = res["in_sample"], res["held_out"]
            shutil.rmtree(out, ignore_errors=True)
        print(f"  {label}: done", flush=True)
        rows.append(row)
        if "archive_bytes" in row:
            fits = [
                k
                for k in range(1, min(d, n * r) + 1)
                if ours_bytes(d, n_units, n, k) + overhead <= row["archive_bytes"]
            ]
            if fits:
                matched = ours("weightspace auto", fits[-1])
                matched["setting"] += f" (≤ {label.split()[0]} bytes)"
                matched["matches"] = label
                rows.append(matched)
            else:
                rows.append({"method": "weightspace auto", "setting": f"no k fits in {label}'s bytes"})
    pca_extra = ("--method", "pca") + (("--allow-larger",) if d <= args.pca_max_d else ())
    rows.append(ours("weightspace pca", args.k, *pca_extra))
    (work / f"planted-d{d}-rows.json").write_text(json.dumps(rows, indent=1, default=str))  # before printing
    _print_planted(d, rows, adapter_bytes, data["noise_level"])
    return {"d": d, "noise_level": data["noise_level"], "adapter_bytes": adapter_bytes, "rows": rows}


def _print_planted(d: int, rows: list[dict[str, Any]], adapter_bytes: int, noise: float) -> None:
    table, notes = [], []
    for row in rows:
        if "refused" in row:
            table.append([row["method"], row["setting"], "refused"])
            notes.append(f"  {row['method']} {row['setting']}: refused before writing — {row['refused']}")
            continue
        ab = row.get("archive_bytes")
        table.append(
            [
                row["method"],
                row["setting"],
                _f(row.get("wall_s"), ".1f"),
                _f(None if row.get("peak_rss") is None else row["peak_rss"] / MB, ".0f"),
                _f(None if ab is None else ab / MB, ".2f"),
                None if ab is None else _words(adapter_bytes, ab),
                _f(row.get("in_plain")),
                _f(row.get("held_plain")),
                _f(row.get("in_rotated")),
                _f(row.get("held_rotated")),
                _f(row.get("mean_only_plain")),
            ]
        )
    header = [
        "method",
        "setting",
        "wall s",
        "peak RSS MB",
        "archive MB",
        "vs adapters",
        "in-sample",
        "held-out",
        "in-sample rot",
        "held-out rot",
        "mean-only held-out",
    ]
    print(
        _table(f"\nplanted d={d}: relative ΔW error, pooled (rot = factors rotated by B R, Rᵀ A)", header, table)
    )
    for note in notes:
        print(note)
    ours = next(r for r in rows if r["method"] == "weightspace auto")
    vl = next((r for r in rows if r["method"].startswith("vlora") and "wall_s" in r), None)
    ratio = adapter_bytes / ours["archive_bytes"]
    print(f"targets (d={d}):")
    print(f"  archive ≤ 1/20 of the adapters: {ratio:.1f}× smaller — {_check(ratio >= 20)}")
    held = max(ours["held_plain"], ours["held_rotated"])
    print(f"  held-out ΔW error ≤ 2 × noise level: {held:.4f} vs {2 * noise:.4f} — {_check(held <= 2 * noise)}")
    if vl is not None:
        w, m = ours["wall_s"] / vl["wall_s"], ours["peak_rss"] / vl["peak_rss"]
        print(
            f"  wall ≤ 1/3 of vlora's: {ours['wall_s']:.1f}s vs {vl['wall_s']:.1f}s ({w:.2f}×) — {_check(w <= 1 / 3)}"
        )
        print(
            f"  peak RSS ≤ 1/3 of vlora's: {ours['peak_rss'] / MB:.0f} vs {vl['peak_rss'] / MB:.0f} MB ({m:.2f}×) — "
            f"{_check(m <= 1 / 3)}"
        )
    for peer in (r for r in rows if r["method"].startswith(("vlora", "lorashare")) and "held_plain" in r):
        mine = next((r for r in rows if r.get("matches") == peer["method"]), None)
        if mine is None:
            continue
        better = all(mine[f"held_{v}"] < peer[f"held_{v}"] for v in ("plain", "rotated"))
        print(
            f"  held-out error at ≤ {peer['method']}'s bytes ({mine['setting']}): plain {mine['held_plain']:.4f} vs "
            f"{peer['held_plain']:.4f}, rotated {mine['held_rotated']:.4f} vs {peer['held_rotated']:.4f} — "
            f"{_check(better)}"
        )


# ------------------------------------------------------------------------------------------------ 2. zoo
def _peft_dir_from(original: Path, factors_file: Path, dest: Path) -> Path:
    """A PEFT adapter dir: ``original``'s config and non-LoRA tensors (its head) with rebuilt LoRA factors."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(original / "adapter_config.json", dest / "adapter_config.json")
    tensors = {k: v for k, v in load_file(str(original / "adapter_model.safetensors")).items() if "lora_" not in k}
    for key, t in load_file(str(factors_file)).items():
        tensors[f"base_model.model.{key}"] = t
    save_file(tensors, dest / "adapter_model.safetensors")
    return dest


def run_zoo(args: argparse.Namespace, work: Path, peers: dict[str, str | None]) -> dict[str, Any]:
    from weightspace.compress import compress, project, reconstruct
    from weightspace.zoo import build_zoo, get_zoo, load_zoo_info

    zoo = get_zoo("minilm-lora")
    t0 = time.perf_counter()
    if args.zoo_dir is not None:  # a built zoo, used as it is (quick or not)
        info = load_zoo_info(args.zoo_dir)
    else:
        info = build_zoo("minilm-lora", work / "zoo" / "minilm-lora", quick=args.quick, seed=0)
    paths = [Path(m.path) for m in info.models]
    tasks = [m.task for m in info.models]
    n = len(paths)
    adapter_bytes = sum(_dir_bytes(p) for p in paths)
    print(
        f"\n[zoo] minilm-lora: {n} adapters, {adapter_bytes / MB:.2f} MB (ready in {time.perf_counter() - t0:.0f}s)",
        flush=True,
    )
    original = [zoo.accuracy(p, t) for p, t in zip(paths, tasks, strict=True)]
    rows: list[dict[str, Any]] = []

    def evaluate(label: str, setting: str, extra: tuple[str, ...], kw: dict[str, Any]) -> None:
        arc = work / f"zoo-{label.split()[-1]}.wsz"
        res = ours_compress(sys.executable, paths, arc, *extra)
        if res.get("json") is None:
            rows.append({"method": label, "setting": setting, "refused": res.get("refused")})
            return
        rebuilt = reconstruct(arc, work / f"zoo-{label.split()[-1]}-rebuilt")
        acc_rebuilt = [zoo.accuracy(r.path, t) for r, t in zip(rebuilt, tasks, strict=True)]
        acc_loo, loo_err = [], []
        for h in range(n):
            loo_arc = work / "zoo-loo.wsz"
            compress([str(p) for i, p in enumerate(paths) if i != h], loo_arc, allow_larger=True, **kw)
            pr = project(loo_arc, [str(paths[h])], add=True)
            loo_err.append((pr.models[0].mean_plus_basis, pr.models[0].mean_only))
            out = reconstruct(loo_arc, work / "zoo-loo-rebuilt", [pr.models[0].name])
            acc_loo.append(zoo.accuracy(out[0].path, tasks[h]))
            shutil.rmtree(work / "zoo-loo-rebuilt", ignore_errors=True)
        rows.append(
            {
                "method": label,
                "setting": setting,
                "wall_s": res["wall_s"],
                "peak_rss": res["peak_rss"],
                "archive_bytes": res["json"]["archive_bytes"],
                "in_sample": ours_in_sample(arc, paths),
                "loo": sum(e for e, _ in loo_err) / n,
                "loo_mean_only": sum(m for _, m in loo_err) / n,
                "acc_rebuilt": sum(acc_rebuilt) / n,
                "acc_loo": sum(acc_loo) / n,
            }
        )
        print(f"  {label}: done", flush=True)

    evaluate("weightspace auto", f"k={args.k} (default)", ("--rank", str(args.k)), {"n_components": args.k})
    evaluate(
        "weightspace pca",
        f"k={args.k}",
        ("--method", "pca", "--rank", str(args.k), "--allow-larger"),
        {"n_components": args.k, "method": "pca"},
    )
    for name, label in (("vlora", "vlora-dev 1.0.0"), ("lorashare", "lorashare 0.1.3")):
        if peers[name] is not None:
            rows.append({"method": label, "setting": peers[name]})
            continue
        rebuilt_root = work / f"zoo-{name}-factors"
        res = _child(
            args.peers_python,
            "",
            {
                "method": name,
                "train": [str(p) for p in paths],
                "held_out": [],
                "out": str(work / f"zoo-{name}"),
                "k": None,
                "loo": True,
                "rebuilt": str(rebuilt_root),
            },
            script=PEERS_SCRIPT,
        )
        if "archive_bytes" not in res:
            rows.append({"method": label, "setting": f"failed: {res['stderr'][-300:]}"})
            continue
        acc = {}
        for split in ("in_sample", "loo"):
            accs = []
            for p, task in zip(paths, tasks, strict=True):
                dest = _peft_dir_from(
                    p, rebuilt_root / split / f"{p.name}.safetensors", work / "zoo-peer" / p.name
                )
                accs.append(zoo.accuracy(dest, task))
                shutil.rmtree(dest, ignore_errors=True)
            acc[split] = sum(accs) / n
        rows.append(
            {
                "method": label,
                "setting": f"default (k={res['k']})",
                "wall_s": res["wall_s"],
                "peak_rss": res["peak_rss"],
                "archive_bytes": res["archive_bytes"],
                "in_sample": res["in_sample"],
                "loo": res["loo"],
                "acc_rebuilt": acc["in_sample"],
                "acc_loo": acc["loo"],
            }
        )
        print(f"  {label}: done", flush=True)
    table = []
    for row in rows:
        if "archive_bytes" not in row:
            table.append([row["method"], row["setting"], "refused: " + str(row.get("refused"))[:200]])
            continue
        ab = row["archive_bytes"]
        table.append(
            [
                row["method"],
                row["setting"],
                _f(row["wall_s"], ".1f"),
                _f(ab / 1e3, ".0f"),
                _words(adapter_bytes, ab),
                _f(row["in_sample"]),
                _f(row["loo"]),
                _f(row.get("loo_mean_only")),
                _f(100 * sum(original) / n, ".2f"),
                _f(100 * row["acc_rebuilt"], ".2f"),
                _f(100 * row["acc_loo"], ".2f"),
            ]
        )
    header = [
        "method",
        "setting",
        "wall s",
        "archive KB",
        "vs adapters",
        "ΔW err in-sample",
        "ΔW err held-out",
        "mean-only held-out",
        "acc original %",
        "acc rebuilt %",
        "acc held-out %",
    ]
    print(
        _table(
            f"\nminilm-lora zoo ({n} adapters, {adapter_bytes / 1e3:.0f} KB; held-out = leave-one-out)",
            header,
            table,
        )
    )
    ours = rows[0]
    if "archive_bytes" in ours:
        loss = 100 * (sum(original) / n - ours["acc_rebuilt"])
        print("targets (zoo):")
        print(
            f"  archive smaller than the adapters at the default: {_words(adapter_bytes, ours['archive_bytes'])} — "
            f"{_check(ours['archive_bytes'] < adapter_bytes)}"
        )
        print(f"  rebuilt accuracy within 1 point of the originals: {-loss:+.2f} pt — {_check(loss <= 1.0)}")
    return {"n": n, "adapter_bytes": adapter_bytes, "acc_original": sum(original) / n, "rows": rows}


# ------------------------------------------------------------------------------------------------ 3. serving
_SERVE_COMMON = """
import copy, gc, resource, time, torch, transformers
from weightspace.zoo._text import minilm_dir
torch.manual_seed(0)
base = transformers.BertModel.from_pretrained(str(minilm_dir())).eval()
names = ARGS["names"]
B, T, REPS = ARGS["batch"], ARGS["tokens"], ARGS["reps"]
x = torch.randint(1000, 20000, (B, T), generator=torch.Generator().manual_seed(0))
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
gc.collect(); rss0 = rss()
def tokens_per_s(fn):
    with torch.no_grad():
        fn()
        t = time.perf_counter()
        for _ in range(REPS):
            fn()
        return B * T * REPS / (time.perf_counter() - t)
"""

_SERVE_OURS = """
from weightspace.serve import serve
served = serve(base, ARGS["archive"])
gc.collect(); rss1 = rss()
t = time.perf_counter()
for i in range(10000):
    served.set_adapter(names[i % len(names)])
switch = (time.perf_counter() - t) / 10000
served.set_adapter(names[0])
single = tokens_per_s(lambda: served(input_ids=x))
rows = [names[i % len(names)] for i in range(B)]
with served.adapter_rows(rows):
    mixed = tokens_per_s(lambda: served(input_ids=x))
print("RESULT " + json.dumps({"adapter_bytes": served.memory_bytes(), "rss_added": rss1 - rss0,
      "switch_s": switch, "tokens_per_s": single, "mixed_tokens_per_s": mixed}), flush=True)
"""

_SERVE_PEFT = """
import peft
model = peft.PeftModel.from_pretrained(base, ARGS["paths"][0], adapter_name=names[0])
for p, n in zip(ARGS["paths"][1:], names[1:]):
    model.load_adapter(p, adapter_name=n)
model.eval()
gc.collect(); rss1 = rss()
lora_bytes = sum(t.numel() * t.element_size() for k, t in model.named_parameters() if "lora_" in k)
reps = 3 * len(names)
t = time.perf_counter()
for i in range(reps):
    model.set_adapter(names[i % len(names)])
switch = (time.perf_counter() - t) / reps
model.set_adapter(names[0])
single = tokens_per_s(lambda: model(input_ids=x))
rows = [names[i % len(names)] for i in range(B)]
mixed = tokens_per_s(lambda: model(input_ids=x, adapter_names=rows))
print("RESULT " + json.dumps({"adapter_bytes": lora_bytes, "rss_added": rss1 - rss0,
      "switch_s": switch, "tokens_per_s": single, "mixed_tokens_per_s": mixed}), flush=True)
"""


def run_serving(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from weightspace.compress import compress

    n, r, hidden, layers = args.serve_adapters, 8, 384, 6
    g = torch.Generator().manual_seed(0)
    config = _adapter_config(r, ("query", "value"))
    paths = []
    for i in range(n):
        fac = {
            f"encoder.layer.{layer}.attention.self.{t}": (
                torch.randn(r, hidden, generator=g) / hidden**0.5,
                0.02 * torch.randn(hidden, r, generator=g),
            )
            for layer in range(layers)
            for t in ("query", "value")
        }
        paths.append(_write_adapter(work / "serve" / f"task{i:03d}", fac, config))
    arc = work / "serve.wsz"
    res = compress([str(p) for p in paths], arc, n_components=args.k)
    names = [p.name for p in paths]
    common = {"names": names, "batch": args.serve_batch, "tokens": 32, "reps": args.serve_reps}
    ours = _child(sys.executable, _SERVE_COMMON + _SERVE_OURS, {**common, "archive": str(arc)})
    peft = _child(sys.executable, _SERVE_COMMON + _SERVE_PEFT, {**common, "paths": [str(p) for p in paths]})
    table = []
    for label, row in ((f"weightspace serve (archive k={args.k})", ours), ("peft PeftModel", peft)):
        if "tokens_per_s" not in row:
            table.append([label, f"failed: {row['stderr'][-300:]}"])
            continue
        table.append(
            [
                label,
                _f(row["adapter_bytes"] / MB, ".2f"),
                _f(row["rss_added"] / MB, ".1f"),
                _f(row["switch_s"] * 1e3, ".4f"),
                _f(row["tokens_per_s"], ".0f"),
                _f(row["mixed_tokens_per_s"], ".0f"),
            ]
        )
    header = [
        "served from",
        "adapter MB",
        "RSS added MB",
        "switch ms",
        "tokens/s (one adapter)",
        "tokens/s (mixed batch)",
    ]
    print(
        _table(
            f"\nserving {n} adapters on all-MiniLM-L6-v2 (r={r}, query/value; archive {res.ratio_words} than "
            f"the adapters), batch {args.serve_batch} × 32 tokens",
            header,
            table,
        )
    )
    if "tokens_per_s" in ours and "tokens_per_s" in peft:
        print("targets (serving):")
        print(f"  switching < 1 ms: {ours['switch_s'] * 1e3:.4f} ms — {_check(ours['switch_s'] < 1e-3)}")
        print(
            f"  {n} adapters in memory cost less than {n} PEFT adapters: {ours['adapter_bytes'] / MB:.2f} vs "
            f"{peft['adapter_bytes'] / MB:.2f} MB — {_check(ours['adapter_bytes'] < peft['adapter_bytes'])}"
        )
    return {"n": n, "ours": ours, "peft": peft, "archive_ratio": res.ratio_words}


# ------------------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small version of every section")
    ap.add_argument("--sections", default="planted,zoo,serving")
    ap.add_argument("--sizes", default=None, help="comma-separated d for the planted section (default 1024,4096)")
    ap.add_argument("--adapters", type=int, default=None, help="fitted adapters (default 50; quick 10)")
    ap.add_argument("--held-out", type=int, default=None, help="held-out adapters (default 5; quick 3)")
    ap.add_argument("--layers", type=int, default=None, help="layers × {q_proj, v_proj} (default 32; quick 2)")
    ap.add_argument("--rank", type=int, default=None, help="adapter rank (default 16; quick 8)")
    ap.add_argument("--span", type=int, default=12, help="planted span per module")
    ap.add_argument("--noise", type=float, default=0.07, help="per-factor noise relative to its signal")
    ap.add_argument("--k", type=int, default=16, help="weightspace rank (its default)")
    ap.add_argument("--pca-max-d", type=int, default=1024, help="write pca archives (--allow-larger) up to this d")
    ap.add_argument("--peers-python", default=DEFAULT_PEERS)
    ap.add_argument(
        "--lorashare-max-d", type=int, default=1024, help="run lorashare on the planted set up to this d"
    )
    ap.add_argument("--zoo-dir", type=Path, default=None, help="a built minilm-lora zoo to use as it is")
    ap.add_argument("--serve-adapters", type=int, default=None, help="adapters served (default 64; quick 8)")
    ap.add_argument("--serve-batch", type=int, default=16)
    ap.add_argument("--serve-reps", type=int, default=None)
    ap.add_argument(
        "--threads", type=int, default=None, help="CPU threads of every measured child (default: torch's)"
    )
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write every measured row here")
    args = ap.parse_args()
    q = args.quick
    sizes = [int(s) for s in (args.sizes or ("256" if q else "1024,4096")).split(",")]
    args.adapters = args.adapters or (10 if q else 50)
    args.held_out = args.held_out or (3 if q else 5)
    args.layers = args.layers or (2 if q else 32)
    args.rank = args.rank or (8 if q else 16)
    args.serve_adapters = args.serve_adapters or (8 if q else 64)
    args.serve_reps = args.serve_reps or (2 if q else 5)
    if q:
        args.span = min(args.span, 6)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ws-bench-lora-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            ENV[var] = str(args.threads)  # every child, ours and the peers alike
    torch.set_num_threads(1)  # this process only writes adapters and evaluates; the measured work runs in children
    peers = _peers_ok(args.peers_python)
    for name, why in peers.items():
        if why:
            print(f"{name}: {why}")
    threads = args.threads or f"torch default ({os.cpu_count()} cpus)"
    print(f"workdir {work}; threads per measured process: {threads}; python {sys.version.split()[0]}", flush=True)
    out: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    sections = set(args.sections.split(","))

    def save() -> None:
        if args.json:
            args.json.write_text(json.dumps(out, indent=1, default=str))

    if "planted" in sections:
        out["planted"] = []
        for d in sizes:
            out["planted"].append(run_planted(args, d, work, peers))
            shutil.rmtree(work / f"planted-d{d}", ignore_errors=True)
            save()
    if "zoo" in sections:
        out["zoo"] = run_zoo(args, work, peers)
        save()
    if "serving" in sections:
        out["serving"] = run_serving(args, work)
        save()


if __name__ == "__main__":
    main()
