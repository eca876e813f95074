"""``digits-vit``: a tiny pure-torch ViT pretrained on 8×8 digits, fully fine-tuned on derived tasks."""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn

from weightspace.zoo import _data
from weightspace.zoo._finetune import FinetuneZoo, extended_tasks, label_tasks

__all__ = ["DigitsViT", "DigitsViTZoo"]

#: Input transforms beyond the original seven (shifts, noise levels, blur, contrast, nonlinear maps).
_EXTRA_TRANSFORMS = (
    "rot270",
    "noise-0.1",
    "shift-x1",
    "blur",
    "noise-0.3",
    "shift-y1",
    "gamma-2",
    "noise-0.5",
    "shift-x-1",
    "contrast-0.5",
    "threshold-0.5",
    "shift-y-1",
    "dropout-0.2",
    "hflip+invert",
    "noise-0.4",
)


def _transform_2d(name: str, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One named transform of images ``(N, 8, 8)``; parametrised names carry their value (``noise-0.3``)."""
    kind, _, arg = name.partition("-")
    if name == "hflip":
        return x[:, :, ::-1]
    if name == "vflip":
        return x[:, ::-1, :]
    if name in ("rot90", "rot180", "rot270"):
        return np.rot90(x, int(name[3:]) // 90, axes=(1, 2))
    if name == "transpose":
        return x.transpose(0, 2, 1)
    if name == "invert":
        return 1.0 - x
    if name == "blur":
        pad = np.pad(x, ((0, 0), (1, 1), (1, 1)), mode="edge")
        return sum(pad[:, i : i + 8, j : j + 8] for i in range(3) for j in range(3)) / 9.0
    if kind == "noise":
        return x + float(arg) * rng.standard_normal(x.shape).astype(np.float32)
    if kind == "shift":
        axis = 2 if arg.startswith("x") else 1
        return np.roll(x, int(arg[1:]), axis=axis)
    if kind == "gamma":
        return x ** float(arg)
    if kind == "contrast":
        return 0.5 + float(arg) * (x - 0.5)
    if kind == "threshold":
        return (x > float(arg)).astype(np.float32)
    if kind == "dropout":
        return x * (rng.random(x.shape) >= float(arg)).astype(np.float32)
    raise KeyError(name)  # unreachable: transform names come from the task table


class Attention(nn.Module):
    """Multi-head self-attention with separate ``q``/``k``/``v``/``proj`` linear maps (each dim×dim)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        h = self.heads

        def split(z: Tensor) -> Tensor:
            return z.reshape(b, t, h, d // h).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // h), dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    """``fc1`` (hidden×dim) → GELU → ``fc2`` (dim×hidden)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.nn.functional.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio * dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DigitsViT(nn.Module):
    """Vision transformer for 8×8 images: 4×4 patches (4 tokens) plus a class token.

    4×4 patches reach the same digits accuracy as 2×2 ones (≈0.98) at about half the training cost, which is
    what bounds the zoo's build time on CPU.

    State-dict keys (dim 32, 2 blocks): ``cls_token`` (1×1×dim), ``pos_embed`` (1×5×dim),
    ``patch_embed.{weight,bias}`` (dim×16), ``blocks.{i}.norm1/norm2.{weight,bias}``,
    ``blocks.{i}.attn.{q,k,v,proj}.{weight,bias}``, ``blocks.{i}.mlp.fc1`` (2·dim×dim), ``blocks.{i}.mlp.fc2``,
    ``norm.{weight,bias}``, ``head.{weight,bias}`` (n_classes×dim, applied to the class token).

    Parameters
    ----------
    n_classes : int
        Output size.
    dim, depth, heads, mlp_ratio, patch : int
        Width, number of blocks, attention heads, MLP expansion and patch side.
    """

    def __init__(
        self,
        n_classes: int = 10,
        dim: int = 32,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: int = 2,
        patch: int = 4,
    ) -> None:
        super().__init__()
        self.patch = patch
        n_tokens = (8 // patch) ** 2
        self.patch_embed = nn.Linear(patch * patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, n_tokens + 1, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(batch, n_classes)`` of images ``(batch, 8, 8)`` (or ``(batch, 64)``) in ``[0, 1]``."""
        b, p = x.shape[0], self.patch
        g = 8 // p
        tokens = x.reshape(b, g, p, g, p).permute(0, 1, 3, 2, 4).reshape(b, g * g, p * p)
        h = torch.cat([self.cls_token.expand(b, -1, -1), self.patch_embed(tokens)], dim=1) + self.pos_embed
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h[:, 0]))


class DigitsViTZoo(FinetuneZoo):
    """Tiny ViTs fully fine-tuned from one digits-pretrained base on derived tasks (see :meth:`tasks`).

    Inputs are sklearn digits as images ``(N, 8, 8)`` float32 in ``[0, 1]`` with the fixed 70/30 split shared
    by the digits zoos; the base task ``pretrain`` is the original 10-class problem.
    """

    name: ClassVar[str] = "digits-vit"
    task_order: ClassVar[tuple[str, ...]] = (
        "perm-0",
        "pair-0-1",
        "hflip",
        "perm-1",
        "pair-2-3",
        "invert",
        "parity",
        "rot90",
        "perm-2",
        "pair-4-5",
        "vflip",
        "lt5",
        "perm-3",
        "pair-6-7",
        "rot180",
        "pair-8-9",
        "transpose",
        "perm-4",
        "pair-3-8",
        "noise-0.2",
    )

    def _raw(self, split: Literal["train", "test"]) -> tuple[np.ndarray, np.ndarray]:
        x_tr, y_tr, x_te, y_te = _data.digits()
        x, y = (x_tr, y_tr) if split == "train" else (x_te, y_te)
        return x.reshape(-1, 8, 8), y

    def _build_table(self) -> dict[str, dict[str, Any]]:
        table = label_tasks(5, [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (3, 8)])
        ident = list(range(10))
        for t in ("hflip", "vflip", "rot90", "rot180", "transpose", "invert", "noise-0.2"):
            table[t] = {"kind": "transform", "labels": ident, "n_classes": 10, "transform": t}
        first = {t: table[t] for t in self.task_order}
        combos = [
            (t, lab)
            for lab in ("perm-1", "parity", "pair-2-7", "lt5", "sub-012", "perm-2", "mod3", "pair-0-9")
            for t in ("hflip", "rot90", "invert", "noise-0.2", "transpose", "vflip")
        ]
        return extended_tasks(first, list(_EXTRA_TRANSFORMS), combos)

    def _transform(self, name: str, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for part in name.split("+"):
            x = _transform_2d(part, x, rng)
        return x

    def _new_model(self, n_classes: int) -> nn.Module:
        return DigitsViT(n_classes)

    def settings(self, quick: bool) -> dict[str, dict[str, Any]]:
        # Large batches for the single base model, small ones for the fine-tunes trained together (see mnist1d-cnn).
        if quick:
            return {
                "pretrain": {"steps": 150, "lr": 3e-3, "batch_size": 192},
                "finetune": {"steps": 80, "lr": 2e-3, "batch_size": 32},
            }
        return {
            "pretrain": {"steps": 400, "lr": 3e-3, "batch_size": 192},
            "finetune": {"steps": 200, "lr": 2e-3, "batch_size": 32},
        }
