"""Many small models trained at once: one vectorised optimiser step for a whole chunk of models.

A zoo of 96 fine-tunes would cost 96 separate training loops; the per-step work of one small model is dominated
by per-op overhead, not by arithmetic. :func:`fit_batched` stacks the parameters of up to ``chunk`` models
(``torch.func.stack_module_state``), runs their forward passes as one ``torch.func.vmap`` over
``torch.func.functional_call`` and takes one AdamW step on the stacked tensors.

The result is the same training as one loop per model, model by model:

* each model sees its own data and its own minibatch order (a ``torch.Generator`` seeded with the model's seed,
  the same ``randperm`` epochs as :func:`~weightspace.zoo._train.fit`);
* the loss is the sum of the per-model mean cross-entropies, so the gradient of each model's slice is its own
  gradient, and AdamW is element-wise (its state per slice is that model's state);
* heads of different widths (2-way and 10-way tasks) are padded to the widest; padded logits are masked to
  ``-inf``, so their rows get exactly zero gradient (and zero Adam updates) and are cut off afterwards.

Only float rounding differs from separate loops (batched kernels may sum in another order); the chunk size is
fixed, so rebuilds with the same parameters are byte-identical.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from weightspace.errors import ParameterError
from weightspace.zoo._train import ProgressFn, check_int, seeded

__all__ = ["CHUNK", "Job", "batch_order", "fit_batched"]

#: Models per vectorised step. Fixed (not derived from the machine) so the float summation order, hence the
#: bytes of every checkpoint, never depend on where a zoo is built.
CHUNK = 96


@dataclass
class Job:
    """One model to train.

    Attributes
    ----------
    init : dict of str to Tensor
        The model's full state dict at the start (parameters and buffers, head at its own width).
    data : int
        Index into the ``datasets`` of :func:`fit_batched` (models of one task share their data).
    n_classes : int
        Width of this model's head.
    seed : int
        Seeds the minibatch order.
    """

    init: dict[str, Tensor]
    data: int
    n_classes: int
    seed: int


def batch_order(n: int, steps: int, batch_size: int, seed: int) -> Tensor:
    """Minibatch indices of :func:`~weightspace.zoo._train.fit` for one model: shape ``(steps, batch_size)``.

    A fresh ``randperm(n)`` (from a generator seeded with ``seed``) each time the previous one cannot fill a
    whole batch, exactly as the per-model loop draws them.

    Examples
    --------
    >>> batch_order(5, 3, 2, seed=0).shape
    torch.Size([3, 2])
    """
    gen = torch.Generator().manual_seed(int(seed))
    out = torch.empty(steps, batch_size, dtype=torch.long)
    order = torch.empty(0, dtype=torch.long)
    pos = 0
    for s in range(steps):
        if pos + batch_size > order.numel():
            order = torch.randperm(n, generator=gen)
            pos = 0
        out[s] = order[pos : pos + batch_size]
        pos += batch_size
    return out


def _pad_head(t: Tensor, width: int) -> Tensor:
    if t.shape[0] == width:
        return t
    pad = torch.zeros((width - t.shape[0], *t.shape[1:]), dtype=t.dtype)
    return torch.cat([t, pad])


def fit_batched(
    make_template: Callable[[int], nn.Module],
    jobs: Sequence[Job],
    datasets: Sequence[tuple[Tensor, Tensor]],
    *,
    steps: int,
    lr: float,
    batch_size: int,
    head_prefix: str = "head.",
    trainable: Callable[[str], bool] | None = None,
    schedule: Literal["cosine", "constant"] = "cosine",
    weight_decay: float = 0.0,
    chunk: int = CHUNK,
    progress: ProgressFn | None = None,
) -> tuple[list[dict[str, Tensor]], list[dict[str, Any]]]:
    """Train every job's model with minibatch AdamW on cross-entropy, ``chunk`` models per vectorised step.

    Parameters
    ----------
    make_template : callable
        ``make_template(n_classes)`` returns a module of the architecture with a head of that width; its
        forward is what every model runs (its own weights are never used).
    jobs : sequence of Job
        The models, in order.
    datasets : sequence of (Tensor, Tensor)
        Training inputs ``(n_d, ...)`` and int64 labels ``(n_d,)``; ``jobs[i].data`` indexes this list. Inputs of
        all datasets share their trailing shape.
    steps, lr, batch_size : int, float, int
        As for :func:`~weightspace.zoo._train.fit` (every dataset must hold at least ``batch_size`` examples).
    head_prefix : str
        Prefix of the head tensors (padded to the widest head, cut back afterwards).
    trainable : callable, optional
        ``trainable(key)`` for each parameter; default all. Others keep their initial value.
    schedule : {"cosine", "constant"}
        Learning-rate schedule over ``steps``.
    weight_decay : float
        AdamW weight decay.
    chunk : int
        Models per vectorised step.
    progress : callable, optional
        ``progress(done, total, message)`` after each chunk.

    Returns
    -------
    states : list of dict
        Trained state dicts (heads at each job's own width), in job order.
    stats : list of dict
        Per model: ``steps``, ``lr``, ``batch_size``, ``final_loss`` (mean of its last 10 steps), ``wall_s``
        (its share of its chunk's wall time).
    """
    from torch.func import functional_call, stack_module_state, vmap

    steps = check_int("steps", steps, minimum=0)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ParameterError(f"lr must be a positive finite number, got {lr!r}")
    for d, (x, y) in enumerate(datasets):
        if x.shape[0] != y.shape[0] or x.shape[0] < batch_size:
            raise ParameterError(
                f"dataset {d} must hold at least batch_size={batch_size} examples with one label each, got "
                f"{x.shape[0]} inputs and {y.shape[0]} labels"
            )
    width = max((j.n_classes for j in jobs), default=1)
    # Templates are overwritten by the jobs' states; building them must not consume the caller's random stream.
    with seeded(0):
        template = make_template(width)
    names = [k for k, _ in template.named_parameters()]
    keep = [k for k in names if trainable is None or trainable(k)]
    n_max = max(x.shape[0] for x, _ in datasets)
    # One padded tensor per task's data; a chunk gathers its batches from it by (task, index).
    xs = torch.stack([_pad_rows(x, n_max) for x, _ in datasets])  # (n_data, n_max, ...)
    ys = torch.stack([_pad_rows(y, n_max) for _, y in datasets])  # (n_data, n_max)

    states: list[dict[str, Tensor]] = []
    stats: list[dict[str, Any]] = []
    for c0 in range(0, len(jobs), chunk):
        part = list(jobs[c0 : c0 + chunk])
        t0 = time.perf_counter()
        modules = []
        for j in part:
            with seeded(0):
                m = make_template(width)
            padded = {k: _pad_head(v, width) if k.startswith(head_prefix) else v for k, v in j.init.items()}
            m.load_state_dict(padded)
            modules.append(m)
        params, buffers = stack_module_state(modules)  # each (M, ...)
        del modules
        for k in names:
            params[k] = params[k].detach().requires_grad_(k in keep)
        m_count = len(part)
        order = torch.stack(
            [batch_order(int(datasets[j.data][0].shape[0]), steps, batch_size, j.seed) for j in part]
        )  # (M, steps, batch)
        which = torch.tensor([j.data for j in part])[:, None]  # (M, 1)
        valid = torch.arange(width)[None, :] < torch.tensor([j.n_classes for j in part])[:, None]  # (M, width)
        valid = valid[:, None, :]  # (M, 1, width)

        def one(p: dict[str, Tensor], b: dict[str, Tensor], x: Tensor) -> Tensor:
            return functional_call(template, (p, b), (x,))

        forward = vmap(one)
        trained = [params[k] for k in keep]
        opt = torch.optim.AdamW(trained, lr=lr, weight_decay=weight_decay, foreach=True) if steps else None
        losses = torch.zeros(steps, m_count, dtype=torch.float64)
        for s in range(steps):
            if schedule == "cosine":
                for g in opt.param_groups:  # type: ignore[union-attr]
                    g["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * s / steps))
            idx = order[:, s]  # (M, batch)
            xb, yb = xs[which, idx], ys[which, idx]  # (M, batch, ...), (M, batch)
            logits = forward(params, buffers, xb)  # (M, batch, width)
            logits = torch.where(valid, logits, torch.full_like(logits, -math.inf))
            per = torch.nn.functional.cross_entropy(
                logits.reshape(-1, width), yb.reshape(-1), reduction="none"
            ).reshape(m_count, batch_size)
            loss = per.mean(dim=1)  # (M,)
            opt.zero_grad(set_to_none=True)  # type: ignore[union-attr]
            loss.sum().backward()
            opt.step()  # type: ignore[union-attr]
            losses[s] = loss.detach().to(torch.float64)
        wall = time.perf_counter() - t0
        for i, j in enumerate(part):
            state = {k: params[k][i].detach().clone() for k in names}
            state.update({k: v[i].clone() for k, v in buffers.items()})
            for k in list(state):
                if k.startswith(head_prefix):
                    state[k] = state[k][: j.n_classes].contiguous()
            states.append(state)
            tail = losses[max(0, steps - 10) :, i]
            stats.append(
                {
                    "steps": steps,
                    "lr": float(lr),
                    "batch_size": batch_size,
                    "final_loss": float(tail.mean()) if steps else None,
                    "wall_s": wall / m_count,
                    "vectorised_with": m_count,
                }
            )
        if progress is not None:
            done = min(c0 + chunk, len(jobs))
            progress(done, len(jobs), f"trained models {c0}–{done - 1} in one vectorised loop ({wall:.1f} s)")
    return states, stats


def _pad_rows(t: Tensor, n: int) -> Tensor:
    if t.shape[0] == n:
        return t
    return torch.cat([t, torch.zeros((n - t.shape[0], *t.shape[1:]), dtype=t.dtype)])
