"""``device="cuda"``: the same archives, reports and merges as the CPU to float64 rounding (skipped without CUDA)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from backends.test_parallel import _numbers, assert_same_archive
from weightspace.analyze import analyze
from weightspace.collection import Collection
from weightspace.compress import compress
from weightspace.decompose import FitParams, MemoryStore, PCAUnit, TuckerUnit
from weightspace.merge import merge
from weightspace.units import UnitStack

pytestmark = pytest.mark.requires_gpu


@pytest.mark.parametrize("method", ["pca", "hosvd"])
def test_cuda_archive_equals_cpu(models_dir: Path, tmp_path: Path, method: str) -> None:
    compress([models_dir], tmp_path / "cpu.wsz", method=method, n_components=3, threads=1, device="cpu")
    compress([models_dir], tmp_path / "gpu.wsz", method=method, n_components=3, threads=1, device="cuda")
    assert_same_archive(tmp_path / "cpu.wsz", tmp_path / "gpu.wsz")


def test_cuda_streamed_and_covariance_routes() -> None:
    g = torch.Generator().manual_seed(0)
    wide = UnitStack.from_tensors([torch.randn(64, 48, generator=g) for _ in range(12)], name="w")
    tall = UnitStack.from_tensors([torch.randn(4, 3, generator=g) for _ in range(40)], name="v")
    for stack in (wide, tall):
        for cache in (0, 1 << 30):
            for cls, k in ((PCAUnit, 5), (TuckerUnit, (4, 3))):
                cpu = cls.fit(stack, FitParams(n_components=k, chunk_bytes=4096, cache_bytes=cache), MemoryStore())
                gpu = cls.fit(
                    stack,
                    FitParams(n_components=k, chunk_bytes=4096, cache_bytes=cache, device="cuda"),
                    MemoryStore(),
                )
                torch.testing.assert_close(cpu.coefficients, gpu.coefficients, atol=1e-9, rtol=1e-9)
                for name in cpu.stored_layout():
                    torch.testing.assert_close(cpu.tensor(name), gpu.tensor(name), atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("method", ["pca", "hosvd"])
def test_cuda_report_equals_cpu(models_dir: Path, method: str) -> None:
    cpu = analyze([models_dir], method=method, n_null=2, threads=1, device="cpu")
    gpu = analyze([models_dir], method=method, n_null=2, threads=1, device="cuda")
    assert cpu.verdicts == gpu.verdicts
    a, b = _numbers(cpu.to_dict()), _numbers(gpu.to_dict())
    torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=1e-9, rtol=1e-9, equal_nan=True)


@pytest.mark.parametrize("method", ["ties", "knots", "tsv", "subspace"])
def test_cuda_merge_equals_cpu(models_dir: Path, tmp_path: Path, method: str) -> None:
    from helpers import write_models

    paths = sorted(models_dir.glob("*.safetensors"))
    coll = Collection.from_paths(paths)
    base = {u.name: torch.zeros(u.shape) for u in coll.units}
    write_models(tmp_path / "b", [base], prefix="base")
    kw = {"base": tmp_path / "b" / "base0.safetensors", "method": method, "threads": 1}
    cpu = merge(paths, device="cpu", **kw)
    gpu = merge(paths, device="cuda", **kw)
    assert cpu.tensors is not None
    assert gpu.tensors is not None
    for key, t in cpu.tensors.items():
        torch.testing.assert_close(t, gpu.tensors[key], atol=1e-5, rtol=1e-5)
