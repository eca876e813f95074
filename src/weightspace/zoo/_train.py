"""The training loop every zoo build uses, its evaluation, seeding and thread pinning.

Thread counts are pinned (:func:`pinned_threads`, :func:`train_threads`) because float reductions in CPU kernels
depend on how the work is split: byte-identical rebuilds need the same split every time.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from weightspace.errors import ParameterError

__all__ = [
    "ProgressFn",
    "check_int",
    "check_split",
    "derive_seed",
    "evaluate",
    "fit",
    "pinned_threads",
    "seeded",
    "train_threads",
]

#: ``progress(done, total, message)`` of builds and training loops.
ProgressFn = Callable[[int, int, str], None]


def derive_seed(zoo_seed: int, *key: int) -> int:
    """A 31-bit seed derived from the zoo seed and a key (model index ...), independent across keys."""
    return int(np.random.SeedSequence([zoo_seed, *key]).generate_state(1)[0] & 0x7FFFFFFF)


def train_threads(default: int) -> int:
    """Threads for training/evaluation: ``WEIGHTSPACE_ZOO_THREADS`` if set, else the zoo's ``default``.

    The count is pinned rather than "all cores" because float reductions in CPU kernels depend on how the
    work is split, and byte-identical rebuilds need the same split every time.
    """
    raw = os.environ.get("WEIGHTSPACE_ZOO_THREADS", "")
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ParameterError(f"WEIGHTSPACE_ZOO_THREADS must be a positive integer, got {raw!r}")
    return value


@contextlib.contextmanager
def pinned_threads(n: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)``, restoring the previous count afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Seed torch's global CPU generator inside the block and restore its state after (no-op for ``None``).

    Module constructors draw from the global generator; forking it keeps a build from disturbing the
    caller's random stream.
    """
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def check_split(split: Any) -> Literal["train", "test"]:
    """Return ``split`` if it is ``"train"`` or ``"test"``; anything else raises :class:`ParameterError`."""
    if split not in ("train", "test"):
        raise ParameterError(f"split must be 'train' or 'test', got {split!r}")
    return split


def check_int(name: str, value: Any, *, minimum: int) -> int:
    """Return ``value`` as an int if it is an integer (not a bool) ``>= minimum``; else :class:`ParameterError`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ParameterError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    return int(value)


# ------------------------------------------------------------------------------------------------ training


def fit(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    steps: int,
    lr: float,
    seed: int,
    batch_size: int = 64,
    parameters: Sequence[Tensor] | None = None,
    progress: ProgressFn | None = None,
    weight_decay: float = 0.0,
    schedule: Literal["cosine", "constant"] = "cosine",
) -> dict[str, Any]:
    """Minibatch Adam(W) on cross-entropy; batches come from a ``torch.Generator`` seeded with ``seed``.

    Parameters outside ``parameters`` have ``requires_grad`` switched off during the loop (so no gradient is
    computed for them) and restored afterwards; the model's train/eval mode is restored too.
    """
    steps = check_int("steps", steps, minimum=0)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ParameterError(f"lr must be a positive finite number, got {lr!r}")
    if schedule not in ("cosine", "constant"):
        raise ParameterError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ParameterError(
            f"inputs and labels must be non-empty and of equal length, got {x.shape[0]}, {y.shape[0]}"
        )
    if parameters is None:
        params = [p for p in model.parameters() if p.requires_grad]
    else:
        params = list({id(p): p for p in parameters}.values())
        for p in params:
            if not (torch.is_tensor(p) and p.is_floating_point() and p.is_leaf):
                raise ParameterError("parameters must be floating-point leaf tensors")
    if steps > 0 and not params:
        raise ParameterError("nothing to train: no parameter requires grad")

    chosen = {id(p) for p in params}
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in chosen]
    restore_grad = [(p, p.requires_grad) for p in params]
    was_training = model.training
    gen = torch.Generator().manual_seed(int(seed))
    n = x.shape[0]
    bs = min(batch_size, n)
    losses: list[float] = []
    t0 = time.perf_counter()
    try:
        for p in frozen:
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        model.train()
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=True) if steps else None
        order = torch.empty(0, dtype=torch.long)
        pos = 0
        report_every = max(1, steps // 20)
        for step in range(steps):
            if schedule == "cosine":
                for g in opt.param_groups:  # type: ignore[union-attr]
                    g["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * step / steps))
            if pos + bs > order.numel():
                order = torch.randperm(n, generator=gen)
                pos = 0
            idx = order[pos : pos + bs]
            pos += bs
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)  # type: ignore[union-attr]
            loss.backward()
            opt.step()  # type: ignore[union-attr]
            losses.append(float(loss.detach()))
            if progress is not None and ((step + 1) % report_every == 0 or step + 1 == steps):
                progress(step + 1, steps, f"loss {losses[-1]:.4f}")
    finally:
        for p in frozen:
            p.requires_grad_(True)
        for p, flag in restore_grad:
            p.requires_grad_(flag)
        model.train(was_training)
    tail = losses[-min(10, len(losses)) :]
    return {
        "steps": steps,
        "wall_s": time.perf_counter() - t0,
        "final_loss": float(np.mean(tail)) if tail else None,
        "losses": losses,
        "lr": float(lr),
        "batch_size": bs,
        "seed": int(seed),
        "n_parameters": int(sum(p.numel() for p in params)),
    }


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` in eval mode (mode restored afterwards)."""
    was_training = model.training
    model.eval()
    try:
        correct = 0
        for i in range(0, x.shape[0], batch_size):
            correct += int((model(x[i : i + batch_size]).argmax(-1) == y[i : i + batch_size]).sum())
    finally:
        model.train(was_training)
    return correct / max(1, x.shape[0])
