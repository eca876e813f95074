"""``mnist1d-cnn``: a small 1-D CNN pretrained on MNIST-1D, fully fine-tuned on derived tasks."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
from torch import Tensor, nn

from weightspace.zoo import _data
from weightspace.zoo._finetune import FinetuneZoo, extended_tasks, label_tasks

__all__ = ["MNIST1DCNN", "MNIST1DCNNZoo"]

#: Input transforms beyond the original six (shifts, noise levels, smoothing widths, nonlinear maps).
_EXTRA_TRANSFORMS = (
    "roll-5",
    "noise-0.25",
    "smooth-3",
    "sign",
    "roll-20",
    "noise-1.0",
    "smooth-9",
    "diff",
    "reverse+negate",
    "roll-30",
    "noise-0.75",
    "smooth-7",
    "clip-0.5",
    "scale-3",
    "roll-15",
)


def _transform_1d(name: str, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One named transform of sequences ``(N, 40)``; parametrised names carry their value (``roll-15``)."""
    kind, _, arg = name.partition("-")
    if name == "reverse":
        return x[:, ::-1]
    if name == "negate":
        return -x
    if name == "abs":
        return np.abs(x)
    if name == "sign":
        return np.sign(x)
    if name == "diff":
        return np.diff(x, axis=1, prepend=x[:, :1])
    if kind == "roll":
        return np.roll(x, int(arg), axis=1)
    if kind == "noise":
        return x + float(arg) * rng.standard_normal(x.shape).astype(np.float32)
    if kind == "smooth":
        kernel = np.ones(int(arg), dtype=np.float32) / int(arg)
        return np.stack([np.convolve(row, kernel, mode="same") for row in x]).astype(np.float32)
    if kind == "clip":
        return np.clip(x, -float(arg), float(arg))
    if kind == "scale":
        return x * float(arg)
    raise KeyError(name)  # unreachable: transform names come from the task table


class MNIST1DCNN(nn.Module):
    """Three 1-D convolutions, a hidden linear layer and a linear head.

    State-dict keys: ``conv1.{weight,bias}`` (32×1×5), ``conv2`` and ``conv3`` (32×32×3, stride 2),
    ``fc.{weight,bias}`` (64×320), ``head.{weight,bias}`` (n_classes×64).

    Parameters
    ----------
    n_classes : int
        Output size.
    channels, hidden : int
        Convolution channels and width of ``fc``.
    """

    def __init__(self, n_classes: int = 10, channels: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, channels, 5, padding=2)
        self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.fc = nn.Linear(channels * 10, hidden)
        self.head = nn.Linear(hidden, n_classes)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(batch, n_classes)`` of sequences ``(batch, 40)``."""
        h = x.reshape(x.shape[0], 1, 40)
        h = self.act(self.conv3(self.act(self.conv2(self.act(self.conv1(h))))))
        return self.head(self.act(self.fc(h.flatten(1))))


class MNIST1DCNNZoo(FinetuneZoo):
    """1-D CNNs fully fine-tuned from one MNIST-1D-pretrained base on derived tasks (see :meth:`tasks`).

    Inputs are MNIST-1D sequences ``(N, 40)`` float32 (standardised by the generator); the base task
    ``pretrain`` is the original 10-class problem (4000 train / 1000 test).
    """

    name: ClassVar[str] = "mnist1d-cnn"
    task_order: ClassVar[tuple[str, ...]] = (
        "perm-0",
        "pair-0-1",
        "reverse",
        "perm-1",
        "pair-2-3",
        "negate",
        "parity",
        "roll-10",
        "perm-2",
        "pair-4-5",
        "noise-0.5",
        "lt5",
        "perm-3",
        "pair-6-7",
        "smooth-5",
        "pair-8-9",
        "abs",
        "perm-4",
        "pair-3-8",
        "reverse-perm-0",
    )

    def _raw(self, split: Literal["train", "test"]) -> tuple[np.ndarray, np.ndarray]:
        x_tr, y_tr, x_te, y_te = _data.mnist1d()
        return (x_tr, y_tr) if split == "train" else (x_te, y_te)

    def _build_table(self) -> dict[str, dict[str, Any]]:
        table = label_tasks(5, [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (3, 8)])
        ident = list(range(10))
        for t in ("reverse", "negate", "roll-10", "noise-0.5", "smooth-5", "abs"):
            table[t] = {"kind": "transform", "labels": ident, "n_classes": 10, "transform": t}
        table["reverse-perm-0"] = {**table["perm-0"], "kind": "transform+permutation", "transform": "reverse"}
        first = {t: table[t] for t in self.task_order}
        combos = [
            (t, lab)
            for lab in ("perm-1", "parity", "pair-2-7", "lt5", "sub-012", "perm-2", "mod3", "pair-0-9")
            for t in ("reverse", "negate", "roll-10", "noise-0.5", "smooth-5", "abs")
        ]
        return extended_tasks(first, list(_EXTRA_TRANSFORMS), combos)

    def _transform(self, name: str, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for part in name.split("+"):
            x = _transform_1d(part, x, rng)
        return x

    def _new_model(self, n_classes: int) -> nn.Module:
        return MNIST1DCNN(n_classes)

    def settings(self, quick: bool) -> dict[str, dict[str, Any]]:
        # The base sees ~190k examples (≈48 epochs) in large batches: one model cannot be vectorised, and large
        # batches cost far less per example than per-op overhead does at batch 64. The fine-tunes train together
        # (fit_batched), where small batches keep the cost per model low.
        if quick:
            return {
                "pretrain": {"steps": 300, "lr": 4e-3, "batch_size": 192},
                "finetune": {"steps": 100, "lr": 3e-3, "batch_size": 32},
            }
        return {
            "pretrain": {"steps": 1000, "lr": 4e-3, "batch_size": 192},
            "finetune": {"steps": 200, "lr": 3e-3, "batch_size": 32},
        }
