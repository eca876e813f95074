"""Builders of the adapter tests: a conv + linear net, task-vector and raw archives."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from weightspace.collection import Collection
from weightspace.compress import compress
from weightspace.io import save_safetensors


class TinyNet(nn.Module):
    """Conv1d → Linear → Linear head; every weight and bias is a unit except the head (kept private)."""

    def __init__(self, n_classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 3)
        self.fc = nn.Linear(12, 6)
        self.norm = nn.LayerNorm(6)
        self.head = nn.Linear(6, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x)).flatten(1)  # (batch, 4 * 3)
        return self.head(self.norm(torch.relu(self.fc(h))))


@dataclass
class Tiny:
    base: dict[str, torch.Tensor]
    base_path: Path
    models: list[Path]
    pca: Path
    hosvd: Path
    raw: Path
    deltas: list[dict[str, torch.Tensor]]

    def model(self) -> TinyNet:
        net = TinyNet()
        net.load_state_dict(self.base)
        return net


def build_tiny(root: Path) -> Tiny:
    """Base + 6 task-vector models of TinyNet and their PCA, HOSVD and raw (no base) archives."""
    gen = torch.Generator().manual_seed(7)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        base_net = TinyNet()
    base = {k: v.detach().clone() for k, v in base_net.state_dict().items()}
    save_safetensors(root / "base.safetensors", base)
    paths, deltas = [], []
    for i in range(6):
        delta = {k: 0.1 * torch.randn(v.shape, generator=gen) for k, v in base.items()}
        sd = {k: base[k] + delta[k] for k in base}
        sd["head.weight"] = torch.randn(2 + i % 2, 6, generator=gen)  # per-task heads differ: private
        sd["head.bias"] = torch.randn(2 + i % 2, generator=gen)
        p = root / "models" / f"m{i}.safetensors"
        p.parent.mkdir(exist_ok=True)
        save_safetensors(p, sd)
        paths.append(p)
        deltas.append(delta)
    coll = Collection.from_paths(paths, base=root / "base.safetensors", private=["head.*"])
    compress(coll, root / "pca.wsz", method="pca", n_components=4, storage_dtype="float64")
    compress(coll, root / "hosvd.wsz", method="hosvd", n_components=(3, 2), storage_dtype="float64")
    raw = Collection.from_paths(paths, private=["head.*"])
    compress(raw, root / "raw.wsz", method="pca", n_components=5, storage_dtype="float64")
    return Tiny(
        base, root / "base.safetensors", paths, root / "pca.wsz", root / "hosvd.wsz", root / "raw.wsz", deltas
    )
