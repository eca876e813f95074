"""Builders of the acceptance collections (tiny, written as safetensors under a tmp dir)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

PLANTED_RANK = 3


def write_init_mlps(directory: Path, n: int = 8) -> list[Path]:
    """Untrained torch MLPs with default init, one seed each: the null case."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        torch.manual_seed(1000 + i)
        net = nn.Sequential(nn.Linear(24, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, 6))
        path = directory / f"init{i}.safetensors"
        save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, path)
        paths.append(path)
    return paths


def planted_tensors(
    n: int = 16, shape: tuple[int, ...] = (24, 32), rank: int = PLANTED_RANK, noise: float = 0.01, seed: int = 0
) -> list[torch.Tensor]:
    """``μ + U c_i + noise`` with orthonormal U (D × rank), c_i ~ N(0, I): a known rank-``rank`` subspace."""
    g = torch.Generator().manual_seed(seed)
    d = int(torch.tensor(shape).prod())
    mu = torch.randn(d, generator=g, dtype=torch.float64)
    u = torch.linalg.qr(torch.randn(d, rank, generator=g, dtype=torch.float64)).Q  # (d, rank)
    scale = d**0.5  # each planted direction carries about as much energy as the mean
    out = []
    for _ in range(n):
        c = torch.randn(rank, generator=g, dtype=torch.float64) * scale
        x = mu + u @ c + noise * torch.randn(d, generator=g, dtype=torch.float64)
        out.append(x.reshape(shape).to(torch.float32))
    return out


def mean_noise_tensors(
    n: int = 16, shape: tuple[int, ...] = (24, 32), mean_scale: float = 2.0, seed: int = 0
) -> list[torch.Tensor]:
    """``μ + ε_i`` with iid Gaussian ε_i and ‖μ‖² = mean_scale² · E‖ε‖²: mean-dominated, centered spectrum null-like."""
    g = torch.Generator().manual_seed(seed)
    mu = mean_scale * torch.randn(shape, generator=g)
    return [mu + torch.randn(shape, generator=g) for _ in range(n)]


def write_state_dicts(directory: Path, per_key: dict[str, list[torch.Tensor]], prefix: str = "m") -> list[Path]:
    """Model i gets ``{key: tensors[i]}`` for every key."""
    directory.mkdir(parents=True, exist_ok=True)
    n = len(next(iter(per_key.values())))
    paths = []
    for i in range(n):
        path = directory / f"{prefix}{i}.safetensors"
        save_file({k: v[i].contiguous() for k, v in per_key.items()}, path)
        paths.append(path)
    return paths
