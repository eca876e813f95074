"""One small analysed collection, saved once per session with plots (rendering is the slow part)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from analyze._builders import mean_noise_tensors, planted_tensors, write_state_dicts
from weightspace.analyze import analyze
from weightspace.collection import Collection


@pytest.fixture(scope="session")
def report_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    models = tmp_path_factory.mktemp("report_models")
    write_state_dicts(
        models,
        {
            "layers.0.fc.weight": planted_tensors(n=10, shape=(12, 16), seed=1),
            "layers.1.fc.weight": mean_noise_tensors(n=10, shape=(12, 16), seed=2),
            "layers.0.fc.bias": mean_noise_tensors(n=10, shape=(12,), mean_scale=0.0, seed=3),
            "head.weight": mean_noise_tensors(n=10, shape=(3, 12), mean_scale=0.0, seed=4),
        },
    )
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # see _one_torch_thread
    try:
        return analyze(Collection.from_paths([models]), n_null=3).to_dict()
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def report_dir(report_data: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from weightspace.report import write_report

    return write_report(report_data, tmp_path_factory.mktemp("out") / "report")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """These tests run thousands of tiny-matrix ops; a 2-thread pool only adds fork/join stalls (restored after)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
