"""Shared pytest fixtures; builders live in ``helpers.py``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from helpers import mlp_like, write_models


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def model_dir(tmp_path: Path, gen: torch.Generator) -> Path:
    """Eight random MLP-shaped checkpoints under tmp_path/models."""
    write_models(tmp_path / "models", [mlp_like(gen) for _ in range(8)])
    return tmp_path / "models"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``requires_gpu`` are skipped (with the reason) where torch sees no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="requires_gpu: torch sees no CUDA device")
    for item in items:
        if "requires_gpu" in item.keywords:
            item.add_marker(skip)
