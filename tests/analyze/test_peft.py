"""LoRA collections: the rank-r Gaussian ΔW null is reported beside the full-rank one and must be beaten too."""

from __future__ import annotations

from pathlib import Path

import torch

from helpers import write_adapter
from weightspace.analyze import analyze
from weightspace.collection import Collection
from weightspace.report import render_html

N, R, D_OUT, D_IN = 24, 2, 24, 20  # N = 24 tests k = 4 = R² (N ≥ 6 k)


def _adapters(root: Path, shared: bool) -> list[Path]:
    g = torch.Generator().manual_seed(0 if shared else 1)
    b0 = torch.randn(D_OUT, R, generator=g)
    a0 = torch.randn(R, D_IN, generator=g)
    dirs = []
    for i in range(N):
        if shared:  # ΔW_i = B0 C_i A0: every update in one R²-dimensional subspace
            b, a = b0 @ torch.randn(R, R, generator=g), a0
        else:
            b, a = torch.randn(D_OUT, R, generator=g), torch.randn(R, D_IN, generator=g)
        factors = {f"layers.{j}.q": (a + 0.001 * j, b.clone()) for j in range(2)}
        dirs.append(write_adapter(root / f"a{i}", factors, r=R, alpha=2 * R))
    return dirs


def test_lora_null_and_verdicts(tmp_path: Path) -> None:
    shared = analyze(Collection.from_paths(_adapters(tmp_path / "shared", True)), n_null=3)
    random = analyze(Collection.from_paths(_adapters(tmp_path / "random", False)), n_null=3)
    assert shared.data["collection"]["kind"] == "peft"
    for u in shared.units:
        assert u["lora"]
        assert u["lora_null"]["ranks"] == [R] * N
        assert len(u["lora_null"]["evr"]) == len(u["ks"])
        assert u["verdict"] == "shared-subspace", u["reasons"]
        # the verdict's band is the higher of the two nulls
        i = u["loo"]["k"].index(u["k_ref"])
        assert u["loo"]["null_heldout_evr_hi"][i] >= u["lora_null"]["heldout_evr_hi"][i]
    assert set(random.verdicts.values()) == {"null-like"}
    assert any("rank-r Gaussian ΔW null" in note for note in shared.data["notes"])
    a = shared.units[0]["at_k_ref"]
    assert a["lora_null_evr_hi"] is not None
    page = render_html(shared.data)
    assert "rank-r LoRA null EVR@k" in page
    assert f"{a['lora_null_evr']:.3f} ({a['lora_null_evr_hi']:.3f})" in page
