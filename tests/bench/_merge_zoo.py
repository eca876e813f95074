"""A tiny fine-tune zoo built in a second: a pretrained MLP base, task models with their own (private) heads.

It follows the ``weightspace.zoo`` contract the merge benchmark relies on (``zoo.json`` with ``base``, ``models``
and ``head_prefix``; an evaluator with ``load_model``, ``accuracy`` and ``task_data``), so the benchmark can be
tested without training a real zoo. The fixtures are in ``conftest.py``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

N_IN = 8
# task -> label map over the 4 base classes
TASKS: dict[str, list[int]] = {
    "pretrain": [0, 1, 2, 3],
    "swap": [1, 0, 3, 2],
    "pair": [0, 1, 1, 0],
    "shift": [3, 0, 1, 2],
}


class TinyNet(nn.Module):
    def __init__(self, n_classes: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(N_IN, 16)
        self.fc2 = nn.Linear(16, 16)
        self.head = nn.Linear(16, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class FakeZoo:
    """Gaussian blobs of 4 classes; tasks relabel them. Records which splits were requested."""

    name = "fake-finetune"

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.centers = 2.0 * torch.randn(4, N_IN, generator=g)
        self.requested: list[tuple[str, str]] = []

    def tasks(self) -> list[str]:
        return [t for t in TASKS if t != "pretrain"]

    def n_classes(self, task: str) -> int:
        return len(set(TASKS[task]))

    def _data(self, task: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(1 if split == "train" else 2)
        n = 400 if split == "train" else 200
        y = torch.randint(0, 4, (n,), generator=g)
        x = self.centers[y] + 1.2 * torch.randn(n, N_IN, generator=g)
        return x, torch.tensor(TASKS[task])[y]

    def task_data(self, task: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        self.requested.append((task, split))
        return self._data(task, split)

    def load_model(self, source: Any, task: str | None = None) -> nn.Module:
        state = dict(source) if isinstance(source, Mapping) else load_file(source)
        assert task is not None
        model = TinyNet(self.n_classes(task))
        model.load_state_dict(state, strict=True)
        return model.eval()

    @torch.no_grad()
    def accuracy(self, source: Any, task: str | None = None) -> float:
        model = self.load_model(source, task)
        x, y = self._data(task or "", "test")
        return float((model(x).argmax(-1) == y).float().mean())

    def train(self, model: nn.Module, task: str, steps: int, seed: int) -> None:
        x, y = self._data(task, "train")
        g = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(steps):
            idx = torch.randint(0, x.shape[0], (64,), generator=g)
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()


def build_fake_zoo(root: Path, zoo: FakeZoo) -> Path:
    threads = torch.get_num_threads()
    # One thread: these models are far too small to gain from more, and a busy machine makes extra threads slow.
    torch.set_num_threads(1)
    try:
        return _build(root, zoo)
    finally:
        torch.set_num_threads(threads)


def _build(root: Path, zoo: FakeZoo) -> Path:
    torch.manual_seed(0)
    base = TinyNet(4)
    zoo.train(base, "pretrain", 120, seed=0)
    save_file({k: v.contiguous() for k, v in base.state_dict().items()}, root / "base.safetensors")
    (root / "models").mkdir(parents=True)
    models = []
    for i, task in enumerate(zoo.tasks()):
        torch.manual_seed(10 + i)
        model = TinyNet(zoo.n_classes(task))
        model.load_state_dict(
            {k: v for k, v in base.state_dict().items() if not k.startswith("head.")}, strict=False
        )
        zoo.train(model, task, 40, seed=10 + i)
        name = f"{i:03d}_{task}"
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()}, root / "models" / f"{name}.safetensors"
        )
        models.append({"name": name, "path": f"models/{name}.safetensors", "task": task, "seed": 10 + i})
    doc = {
        "zoo": zoo.name,
        "version": 1,
        "seed": 0,
        "n": len(models),
        "quick": True,
        "base": "base.safetensors",
        "models": models,
        "tasks": {t: {"labels": TASKS[t], "n_classes": zoo.n_classes(t)} for t in TASKS},
        "head_prefix": "head.",
    }
    (root / "zoo.json").write_text(json.dumps(doc))
    return root
