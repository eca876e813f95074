"""Numerics and metadata hygiene: overflow on write, precision kept, metadata capped, silent caps said out loud."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hostile.test_corpus import run_cli
from weightspace.io import open_source


def test_float16_storage_overflow_is_exit_2_naming_the_unit(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    (tmp_path / "m").mkdir()
    for i in range(3):
        save_file({"w": 1e5 * (1 + torch.rand(4, 4, generator=g))}, tmp_path / "m" / f"m{i}.safetensors")
    code, _, err = run_cli(["compress", str(tmp_path / "m"), "-o", str(tmp_path / "a.wsz"), "--dtype", "float16"])
    assert code == 2, err
    assert "overflow float16" in err
    assert "a.wsz" in err
    assert "tensor 'mean'" in err
    assert not (tmp_path / "a.wsz").exists()
    assert run_cli(["compress", str(tmp_path / "m"), "-o", str(tmp_path / "a.wsz"), "--dtype", "float32"])[0] == 0


def test_float64_models_keep_their_differences(tmp_path: Path) -> None:
    base = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    (tmp_path / "m").mkdir()
    models = [base + 1e-10 * i * torch.ones_like(base) for i in range(4)]
    for i, w in enumerate(models):
        save_file({"w": w}, tmp_path / "m" / f"m{i}.safetensors")
    assert run_cli(["compress", str(tmp_path / "m"), "-o", str(tmp_path / "a.wsz"), "--rank", "2"])[0] == 0
    manifest = json.loads((tmp_path / "a.wsz" / "manifest.json").read_text())
    assert manifest["storage_dtype"] == "float64"  # auto: F64 sources are stored in float64
    assert run_cli(["reconstruct", str(tmp_path / "a.wsz"), "--all", "-o", str(tmp_path / "rec")])[0] == 0
    rebuilt = [load_file(tmp_path / "rec" / f"m{i}.safetensors")["w"] for i in range(4)]
    diffs = [float((r - rebuilt[0]).mean()) for r in rebuilt]
    for i, d in enumerate(diffs):
        assert abs(d - 1e-10 * i) < 1e-13, diffs


def test_huge_metadata_is_capped_with_a_warning(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    (tmp_path / "m").mkdir()
    for i in range(3):
        meta = {"format": "pt", "blob": "x" * (15 << 20) if i == 0 else "small"}
        save_file({"w": torch.randn(4, 4, generator=g)}, tmp_path / "m" / f"m{i}.safetensors", metadata=meta)
    code, _, err = run_cli(["compress", str(tmp_path / "m"), "-o", str(tmp_path / "a.wsz"), "--rank", "2"])
    assert code == 0, err
    assert "warning:" in err
    assert "__metadata__ holds more than 65536 bytes" in err
    assert "m0.safetensors" in err
    assert (tmp_path / "a.wsz" / "manifest.json").stat().st_size < 100_000
    meta = json.loads((tmp_path / "a.wsz" / "manifest.json").read_text())["models"][0]["metadata"]
    assert meta == {"format": "pt"}


def test_rank_beyond_what_the_models_allow_is_said(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    (tmp_path / "m").mkdir()
    for i in range(3):
        save_file({"w": torch.randn(8, 8, generator=g)}, tmp_path / "m" / f"m{i}.safetensors")
    code, _, err = run_cli(["compress", str(tmp_path / "m"), "-o", str(tmp_path / "a.wsz"), "--rank", "50"])
    assert code == 2, err
    assert "--rank 50 is more than the data allows" in " ".join(err.split())
    code, _, err = run_cli(
        ["compress", str(tmp_path / "m"), "-o", str(tmp_path / "a.wsz"), "--rank", "50", "--clip-rank"]
    )
    assert code == 0, err
    assert "kept fewer than asked" in " ".join(err.split())


def test_stray_shard_tensor_is_ignored_with_a_warning(tmp_path: Path) -> None:
    d = tmp_path / "s"
    d.mkdir()
    save_file({"a": torch.ones(2), "stray": torch.ones(1)}, d / "model-00001-of-00001.safetensors")
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00001.safetensors"}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.warns(UserWarning, match="tensor.* the shard index does not list are ignored.*'stray'"):
        src = open_source(d)
    assert list(src.entries) == ["a"]
