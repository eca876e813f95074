"""Many LoRA adapters of one frozen encoder trained (and evaluated) at once.

The encoder runs once per step on the concatenated minibatches of ``m`` adapters; forward hooks on the
adapted ``nn.Linear`` modules add each adapter's own update to its own rows,
``out[rows of j] += s · (x A_jᵀ) B_jᵀ`` (one ``bmm`` pair for all adapters), and a per-adapter head reads the
pooled rows. The loss is the sum of the adapters' mean cross-entropies, so each adapter's gradient is its own;
AdamW is element-wise, so the stacked optimiser state is each adapter's own state. The frozen encoder is shared
and never copied.

Layout of the stacked parameters (``m`` adapters, ``T`` adapted modules, rank ``r``, head width ``c``):
``a`` ``(m, T, r, d_in)``, ``b`` ``(m, T, d_out, r)``, ``head_w`` ``(m, c, hidden)``, ``head_b`` ``(m, c)``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["LoraStack", "lora_hooks", "pooled_logits"]


class LoraStack:
    """Stacked LoRA factors and heads of ``m`` adapters (see the module docstring for shapes)."""

    def __init__(self, a: Tensor, b: Tensor, head_w: Tensor, head_b: Tensor, n_classes: Sequence[int]) -> None:
        self.a, self.b, self.head_w, self.head_b = a, b, head_w, head_b
        self.n_classes = list(n_classes)

    @property
    def m(self) -> int:
        return int(self.a.shape[0])

    def parameters(self) -> list[Tensor]:
        return [self.a, self.b, self.head_w, self.head_b]

    def valid(self) -> Tensor:
        """Mask ``(m, 1, c)``: True for each adapter's real classes (padded head rows are masked out)."""
        width = self.head_w.shape[1]
        return (torch.arange(width)[None, :] < torch.tensor(self.n_classes)[:, None])[:, None, :]


@contextlib.contextmanager
def lora_hooks(
    modules: Sequence[nn.Linear], stack: LoraStack, scaling: float, rows_per_adapter: Callable[[], int]
) -> Iterator[None]:
    """Add adapter ``j``'s ``s · x A_jᵀ B_jᵀ`` to its rows of every module's output inside the block.

    ``rows_per_adapter()`` gives the current number of batch rows of each adapter (the batch is the
    concatenation of the adapters' minibatches, adapter-major).
    """

    def make(t: int) -> Callable[[nn.Module, tuple[Any, ...], Tensor], Tensor]:
        def hook(_mod: nn.Module, inputs: tuple[Any, ...], out: Tensor) -> Tensor:
            x = inputs[0]  # (m * rows, L, d_in)
            m, rows = stack.m, rows_per_adapter()
            xs = x.reshape(m, rows * x.shape[1], x.shape[2])  # (m, rows * L, d_in)
            low = torch.bmm(xs, stack.a[:, t].transpose(1, 2))  # (m, rows * L, r)
            up = torch.bmm(low, stack.b[:, t].transpose(1, 2))  # (m, rows * L, d_out)
            return out + scaling * up.reshape(out.shape)

        return hook

    handles = [mod.register_forward_hook(make(t)) for t, mod in enumerate(modules)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def pooled_logits(encoder: nn.Module, ids: Tensor, mask: Tensor, stack: LoraStack) -> Tensor:
    """Masked-mean-pooled encoder states through each adapter's head: logits ``(m, rows, c)``.

    ``ids``/``mask`` are ``(m * rows, L)``, adapter-major; padded head rows get ``-inf``.
    """
    length = max(1, int(mask.sum(dim=1).max()))
    ids, mask = ids[:, :length], mask[:, :length]
    h = encoder(input_ids=ids, attention_mask=mask).last_hidden_state  # (m * rows, L, hidden)
    w = mask.unsqueeze(-1).to(h.dtype)
    pooled = (h * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)  # (m * rows, hidden)
    pooled = pooled.reshape(stack.m, -1, pooled.shape[-1])  # (m, rows, hidden)
    logits = torch.baddbmm(stack.head_b[:, None, :], pooled, stack.head_w.transpose(1, 2))  # (m, rows, c)
    return torch.where(stack.valid(), logits, torch.full_like(logits, -math.inf))
