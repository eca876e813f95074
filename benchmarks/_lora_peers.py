"""Child script of ``bench_lora.py``: runs vlora-dev or lorashare in their own venv, one method per process.

Reads one JSON argument::

    {"method": "vlora" | "lorashare", "train": [adapter dirs], "held_out": [adapter dirs], "out": archive dir,
     "k": int or null, "loo": bool, "rebuilt": dir or null}

and prints one line ``RESULT {json}`` with the compress wall time and peak RSS (measured from process start,
imports included, before any evaluation), the archive bytes, and the pooled relative ΔW errors
``sqrt(Σ‖B A − B̂ Â‖² / Σ‖B A‖²)`` in-sample and held out (held-out adapters projected with the method's own
projection). With ``rebuilt`` it also writes every rebuilt adapter's factors (in-sample, and held out by
leave-one-out refits when ``loo``) as ``<rebuilt>/<split>/<name>.safetensors`` for task-accuracy evaluation.
Only torch, safetensors and the peer package are imported here.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]  # module -> (A (r, d_in), B (d_out, r))


def _peak_rss() -> int:
    """VmHWM of this address space (getrusage's ru_maxrss would include the parent's RSS at fork)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _factors(state: dict[str, torch.Tensor]) -> Factors:
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in state.items():
        for side in ("A", "B"):
            tag = f".lora_{side}."
            if tag in key:
                module = key.split(tag)[0].removeprefix("base_model.model.")
                out.setdefault(module, {})[side] = t
    return {m: (ab["A"], ab["B"]) for m, ab in out.items()}


def _original(path: str) -> Factors:
    return _factors(load_file(str(Path(path) / "adapter_model.safetensors")))


def _sq_err(orig: Factors, rebuilt: Factors) -> tuple[float, float]:
    """(Σ‖BA − B̂Â‖², Σ‖BA‖²) over modules, by r×r Grams of the stacked factors (no d×d product)."""
    err = norm = 0.0
    for m, (a, b) in orig.items():
        a2, b2 = rebuilt[m]
        left = torch.cat([b.double(), -b2.double()], dim=1)  # (d_out, r + r')
        right = torch.cat([a.double(), a2.double()], dim=0)  # (r + r', d_in)
        err += float(((left.T @ left) * (right @ right.T)).sum())
        norm += float(((b.double().T @ b.double()) * (a.double() @ a.double().T)).sum())
    return max(err, 0.0), norm


def _pooled(pairs: list[tuple[float, float]]) -> float:
    e = sum(p[0] for p in pairs)
    n = sum(p[1] for p in pairs)
    return (e / n) ** 0.5 if n > 0 else float("nan")


def _save(root: Path | None, split: str, name: str, factors: Factors) -> None:
    if root is None:
        return
    (root / split).mkdir(parents=True, exist_ok=True)
    tensors = {}
    for m, (a, b) in factors.items():
        tensors[f"{m}.lora_A.weight"] = a.float().contiguous()
        tensors[f"{m}.lora_B.weight"] = b.float().contiguous()
    save_file(tensors, str(root / split / f"{name}.safetensors"))


# ------------------------------------------------------------------------------------------------- vlora
def _vlora_fit(train: list[str], k: int | None, out: Path | None):  # type: ignore[no-untyped-def]
    from vlora import SharedSubspace, load_adapter

    adapters = [load_adapter(p) for p in train]
    sub = SharedSubspace.from_adapters(adapters, task_ids=[Path(p).name for p in train], num_components=k)
    if out is not None:
        sub.save(out)
    return sub


def _vlora_rebuilt(sub, name: str) -> Factors:  # type: ignore[no-untyped-def]
    w = sub.reconstruct(name)
    return {m: (w.lora_a[m], w.lora_b[m]) for m in w.layer_names}


def _vlora_project(sub, path: str) -> Factors:  # type: ignore[no-untyped-def]
    from vlora import load_adapter

    name = "heldout-" + Path(path).name
    sub.add_task(sub.project(load_adapter(path), name))
    return _vlora_rebuilt(sub, name)


# ------------------------------------------------------------------------------------------------- lorashare
def _share_fit(train: list[str], k: int | None, out: Path | None):  # type: ignore[no-untyped-def]
    from lorashare import SHAREModel

    share = SHAREModel.from_adapters({Path(p).name: p for p in train}, num_components=32 if k is None else k)
    if out is not None:
        share.save_pretrained(out)
    return share


def _share_rebuilt(share, name: str) -> Factors:  # type: ignore[no-untyped-def]
    from lorashare.compression import reconstruct_adapter_weights

    return _factors(reconstruct_adapter_weights(share.components, share.all_loadings[name]))


def _share_project(share, path: str) -> Factors:  # type: ignore[no-untyped-def]
    from lorashare.compression import compute_adapter_loadings, reconstruct_adapter_weights

    weights = load_file(str(Path(path) / "adapter_model.safetensors"))
    return _factors(
        reconstruct_adapter_weights(share.components, compute_adapter_loadings(share.components, weights))
    )


METHODS = {
    "vlora": (_vlora_fit, _vlora_rebuilt, _vlora_project),
    "lorashare": (_share_fit, _share_rebuilt, _share_project),
}


def main() -> None:
    args = json.loads(sys.argv[1])
    fit, rebuilt_of, project = METHODS[args["method"]]
    train, held, out = args["train"], args["held_out"], Path(args["out"])
    rebuilt_root = Path(args["rebuilt"]) if args.get("rebuilt") else None
    model = fit(train, args.get("k"), out)
    wall, peak = time.perf_counter() - T0, _peak_rss()
    in_sample = []
    for p in train:
        name = Path(p).name
        rec = rebuilt_of(model, name)
        in_sample.append(_sq_err(_original(p), rec))
        _save(rebuilt_root, "in_sample", name, rec)
    held_out = []
    for p in held:
        rec = project(model, p)
        held_out.append(_sq_err(_original(p), rec))
        _save(rebuilt_root, "held_out", Path(p).name, rec)
    loo = []
    if args.get("loo"):
        for h, p in enumerate(train):
            others = [q for i, q in enumerate(train) if i != h]
            rec = project(fit(others, args.get("k"), None), p)
            loo.append(_sq_err(_original(p), rec))
            _save(rebuilt_root, "loo", Path(p).name, rec)
    k_used = getattr(model, "num_components", None) or getattr(
        getattr(model, "config", None), "num_components", None
    )
    result = {
        "wall_s": wall,
        "peak_rss": peak,
        "archive_bytes": _dir_bytes(out),
        "k": k_used,
        "in_sample": _pooled(in_sample),
        "held_out": _pooled(held_out) if held_out else None,
        "loo": _pooled(loo) if loo else None,
    }
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
