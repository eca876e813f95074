"""Small collections for the backend tests: a few units of different kinds, built at test time."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import write_models


def shared_models(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """``n`` models sharing a mean and a 2-D subspace per unit (so verdicts are not all null-like)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"a.weight": (12, 10), "b.weight": (8, 12), "c.weight": (6, 8), "a.bias": (12,), "d.weight": (10, 6)}
    out: list[dict[str, torch.Tensor]] = [{} for _ in range(n)]
    for key, shape in shapes.items():
        mean = torch.randn(shape, generator=g)
        dirs = torch.randn(2, *shape, generator=g)
        for i in range(n):
            c = torch.randn(2, generator=g)
            out[i][key] = mean + c[0] * dirs[0] + 0.5 * c[1] * dirs[1] + 0.01 * torch.randn(shape, generator=g)
    return out


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    """Ten models × five units (four matrices, one vector) under tmp_path/models."""
    write_models(tmp_path / "models", shared_models(10))
    return tmp_path / "models"
