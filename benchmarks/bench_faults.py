"""Faults over an existing output: ``kill -9`` at random points, a full disk, a read-only file system.

For each of ``compress``, ``reconstruct``, ``merge`` and ``analyze``, an output from an earlier run (content A)
already exists; the command is started in a fresh process to replace it with different content (B) and killed with
SIGKILL at a random moment between the end of its imports and its normal finish. After each kill the output must be
A, or a complete, valid B — never a mix, never missing — and the next run (not killed) must succeed and leave no
temporary behind. Then the same commands write into a small tmpfs that cannot hold the output (a full disk) and into
a read-only tmpfs: each must exit 2 naming the output, keep the previous output there intact and leave nothing
half-written. Where tmpfs cannot be mounted (not root, no CAP_SYS_ADMIN), the full disk is simulated with a
file-size limit (RLIMIT_FSIZE, so writes fail with EFBIG) and the read-only case is skipped, as the table says.

Usage::

    python benchmarks/bench_faults.py [--runs 20] [--quick] [--workdir DIR] [--seed 0]

``--quick`` runs 5 kills per command. Every number printed is counted in this run.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

COMMANDS = ("compress", "reconstruct", "merge", "analyze")


def _env() -> dict[str, str]:
    src = Path(__file__).resolve().parents[1] / "src"
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


def _cli(argv: list[str]) -> list[str]:
    # READY on stdout once the imports are done: kills are timed from there, so they land in the real work.
    code = "import sys; from weightspace.cli import main; print('READY', flush=True); main(sys.argv[1:])"
    return [sys.executable, "-c", code, *argv]


def _start(argv: list[str]) -> tuple[subprocess.Popen[str], float]:
    """Start a command; return it once its imports are done, with the time that happened."""
    proc = subprocess.Popen(
        _cli(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), bufsize=1
    )
    assert proc.stdout is not None
    proc.stdout.readline()  # READY (or EOF if it died)
    return proc, time.perf_counter()


def make_inputs(root: Path, n_models: int = 6, size: int = 384) -> None:
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    (root / "models").mkdir(parents=True)
    base = {f"l{j}.weight": torch.randn(size, size, generator=g) for j in range(4)}
    save_file(base, root / "base.safetensors")
    for i in range(n_models):
        sd = {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base.items()}
        save_file(sd, root / "models" / f"m{i}.safetensors")


def argv_for(cmd: str, root: Path, out: Path, variant: int) -> list[str]:
    """The command writing content A (variant 0) or B (variant 1) to ``out``."""
    m, b = str(root / "models"), str(root / "base.safetensors")
    if cmd == "compress":
        return ["compress", m, "-o", str(out), "--rank", str(2 + variant)]
    if cmd == "reconstruct":
        return ["reconstruct", str(root / f"arc{variant}.wsz"), "--all", "-o", str(out)]
    if cmd == "merge":
        return [
            "merge",
            m,
            "--base",
            b,
            "-m",
            "task_arithmetic",
            "-p",
            f"lam={0.3 + 0.4 * variant}",
            "-o",
            str(out),
        ]
    return ["analyze", m, "-o", str(out), "--no-plots", "--null-draws", "1", "--seed", str(variant)]


def tree_digest(path: Path) -> str | None:
    """sha256 over (relative name, bytes) of every file under ``path`` (or of the file); None if absent."""
    if not path.exists():
        return None
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(f.relative_to(path.parent).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def valid(cmd: str, out: Path, root: Path) -> bool:
    """Whether ``out`` is a complete output of ``cmd`` (opened and checked by weightspace itself)."""
    from weightspace.errors import WeightspaceError

    try:
        if cmd == "compress":
            from weightspace.decompose import Archive

            Archive(out, verify=True)
        elif cmd == "reconstruct":
            from weightspace.io import open_source

            names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
            if names != sorted(f"m{i}.safetensors" for i in range(len(list((root / "models").iterdir())))):
                return False
            for n in names:
                src = open_source(out / n)
                for k in src.entries:
                    src.read(k)
        elif cmd == "merge":
            from weightspace.io import open_source

            src = open_source(out)
            for k in src.entries:
                src.read(k)
        else:
            from weightspace.report import load_report

            load_report(out)
    except (WeightspaceError, OSError, ValueError):
        return False
    return True


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".wstmp-" in p.name or ".wsold-" in p.name)


def timed(argv: list[str]) -> tuple[int, float, str]:
    """Run a command; (exit code, seconds of work after the imports, stderr)."""
    proc, t0 = _start(argv)
    _, err = proc.communicate()
    return proc.returncode, time.perf_counter() - t0, err


def kill_runs(cmd: str, root: Path, runs: int, rng: random.Random) -> dict[str, int | float]:
    out = root / f"out-{cmd}" / ("merged.safetensors" if cmd == "merge" else "out")
    out.parent.mkdir(parents=True, exist_ok=True)
    code, _, err = timed(argv_for(cmd, root, out, 0))
    if code != 0:
        raise RuntimeError(f"{cmd} (A) failed: {err[-2000:]}")
    digest_a = tree_digest(out)
    code, t_full, err = timed(argv_for(cmd, root, out, 1))
    if code != 0:
        raise RuntimeError(f"{cmd} (B) failed: {err[-2000:]}")
    digest_b = tree_digest(out)
    counts = {"kills": 0, "old_kept": 0, "new_complete": 0, "broken": 0, "rerun_ok": 0, "finished_first": 0}
    for i in range(runs):
        # alternate which content is on disk, so every kill replaces an existing output with a different one
        variant = i % 2
        before = digest_b if variant == 0 else digest_a
        proc, _ = _start(argv_for(cmd, root, out, variant))
        time.sleep(rng.uniform(0.0, 0.9 * t_full))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            counts["kills"] += 1
        else:
            counts["finished_first"] += 1
        proc.wait()
        now = tree_digest(out)
        if now == before:
            counts["old_kept"] += 1
        elif valid(cmd, out, root):
            counts["new_complete"] += 1
        else:
            counts["broken"] += 1
            print(f"  BROKEN after kill {i} of {cmd}: {out}", file=sys.stderr)
        code, _, err = timed(argv_for(cmd, root, out, variant))
        if code == 0 and valid(cmd, out, root) and not leftovers(out.parent):
            counts["rerun_ok"] += 1
        else:
            print(f"  rerun {i} of {cmd} failed ({code}): {err[-500:]} leftovers={leftovers(out.parent)}")
    counts["full_run_s"] = round(t_full, 2)
    counts["output_bytes"] = _size(out)
    return counts


def _mount_tmpfs(path: Path, size: str, ro: bool = False) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if ro else "")
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True)
    except OSError:
        return False
    return proc.returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True)


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def fault_runs(root: Path, sizes: dict[str, int]) -> list[dict[str, object]]:
    """Full disk (a tmpfs half the output's size) and a read-only file system for every command.

    Half the size is more than the up-front lower bound for some commands (the write then fails half-way, with
    ENOSPC) and less for others (refused before any work): the table says which.
    """
    rows: list[dict[str, object]] = []
    for cmd in COMMANDS:
        if cmd not in sizes:
            continue
        room = max(4096, sizes[cmd] // 2)
        disk = root / f"disk-{cmd}"
        mounted = _mount_tmpfs(disk, str(room))
        limit: Callable[[], None] | None = None
        if not mounted:
            disk.mkdir(exist_ok=True)

            def limit(room: int = room) -> None:  # a file-size limit: a write past it fails with EFBIG
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (room, room))

        try:
            out = disk / ("merged.safetensors" if cmd == "merge" else f"out-{cmd}")
            sentinel = disk / "keep.txt"  # an earlier file on the same disk that must survive
            sentinel.write_text("previous\n")
            proc = subprocess.run(
                _cli(argv_for(cmd, root, out, 1)), capture_output=True, text=True, env=_env(), preexec_fn=limit
            )
            rows.append(
                {
                    "fault": f"full disk (tmpfs {room // 1024} KiB)" if mounted else f"file-size limit {room} B",
                    "command": cmd,
                    "exit": proc.returncode,
                    "when": "up front" if "needs at least" in proc.stderr else "while writing",
                    "names_output": out.name in proc.stderr,
                    "traceback": "Traceback" in proc.stderr,
                    "left_behind": sorted(p.name for p in disk.iterdir() if p.name != "keep.txt"),
                    "kept": sentinel.read_text() == "previous\n",
                }
            )
        finally:
            if mounted:
                _umount(disk)
    ro = root / "ro"
    if _mount_tmpfs(ro, "1m", ro=True):
        try:
            for cmd in COMMANDS:
                out = ro / ("merged.safetensors" if cmd == "merge" else f"out-{cmd}")
                t0 = time.perf_counter()
                proc = subprocess.run(
                    _cli(argv_for(cmd, root, out, 1)), capture_output=True, text=True, env=_env()
                )
                rows.append(
                    {
                        "fault": "read-only tmpfs",
                        "command": cmd,
                        "exit": proc.returncode,
                        "names_output": out.name in proc.stderr,
                        "traceback": "Traceback" in proc.stderr,
                        "left_behind": sorted(p.name for p in ro.iterdir()),
                        "kept": True,
                        "wall_s": round(time.perf_counter() - t0, 2),
                    }
                )
        finally:
            _umount(ro)
    else:
        rows.append({"fault": "read-only tmpfs", "command": "(skipped: cannot mount tmpfs here)"})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20, help="kills per command (default 20)")
    ap.add_argument("--quick", action="store_true", help="5 kills per command")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--commands", nargs="*", default=list(COMMANDS))
    args = ap.parse_args()
    runs = 5 if args.quick else args.runs
    rng = random.Random(args.seed)
    root = Path(args.workdir or tempfile.mkdtemp(prefix="ws-faults-"))
    root.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    make_inputs(root)
    for v in (0, 1):
        code, _, err = timed(
            ["compress", str(root / "models"), "-o", str(root / f"arc{v}.wsz"), "--rank", str(2 + v)]
        )
        if code != 0:
            raise RuntimeError(err)
    print(f"kill -9 at a uniformly random moment of the work (after the imports), {runs} runs per command")
    print(
        f"{'command':12s} {'kills':>5s} {'old kept':>8s} {'new ok':>7s} {'broken':>6s} {'rerun ok':>8s} {'work s':>6s}"
    )
    total = {"kills": 0, "broken": 0, "rerun_ok": 0, "runs": 0}
    sizes: dict[str, int] = {}
    for cmd in args.commands:
        c = kill_runs(cmd, root, runs, rng)
        sizes[cmd] = int(c["output_bytes"])
        print(
            f"{cmd:12s} {c['kills']:5d} {c['old_kept']:8d} {c['new_complete']:7d} {c['broken']:6d} "
            f"{c['rerun_ok']:8d} {c['full_run_s']:6.1f}"
            + (f"  ({c['finished_first']} finished before the kill)" if c["finished_first"] else "")
        )
        total["kills"] += int(c["kills"])
        total["broken"] += int(c["broken"])
        total["rerun_ok"] += int(c["rerun_ok"])
        total["runs"] += runs
    print(
        f"total: {total['kills']} kills, {total['broken']} broken outputs, {total['rerun_ok']}/{total['runs']} reruns ok"
    )
    print()
    print("faults (each with an earlier file in place that must survive):")
    ok = 0
    rows = fault_runs(root, sizes)
    for r in rows:
        print("  " + ", ".join(f"{k}={v}" for k, v in r.items()))
        ok += int(
            r.get("exit") == 2 and not r.get("traceback") and not r.get("left_behind") and bool(r.get("kept"))
        )
    tried = sum(1 for r in rows if "exit" in r)
    print(f"faults handled (exit 2, output named, nothing left, earlier file kept): {ok}/{tried}")
    if not args.workdir:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
