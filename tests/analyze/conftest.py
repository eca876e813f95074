"""Fixtures of the analyze tests: the three acceptance collections on disk."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from analyze._builders import mean_noise_tensors, planted_tensors, write_init_mlps, write_state_dicts


@pytest.fixture(scope="session")
def init_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("init")
    write_init_mlps(d)
    return d


@pytest.fixture(scope="session")
def planted_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("planted")
    write_state_dicts(
        d,
        {
            "blocks.0.attn.weight": planted_tensors(seed=1),
            "blocks.1.attn.weight": planted_tensors(seed=2),
            "blocks.0.norm.weight": planted_tensors(shape=(96,), seed=3, noise=0.001),
        },
    )
    return d


@pytest.fixture(scope="session")
def mean_noise_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("meannoise")
    write_state_dicts(d, {"layer.0.w": mean_noise_tensors(seed=4), "layer.1.w": mean_noise_tensors(seed=5)})
    return d


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """These tests run thousands of tiny-matrix ops; a 2-thread pool only adds fork/join stalls (restored after)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
