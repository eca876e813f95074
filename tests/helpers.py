"""Builders of tiny fixtures shared by the tests (importable as ``helpers``; see pytest ``pythonpath``)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file


def write_models(directory: Path, models: Sequence[Mapping[str, torch.Tensor]], prefix: str = "m") -> list[Path]:
    """Save state dicts as ``<prefix><i>.safetensors`` files."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, sd in enumerate(models):
        p = directory / f"{prefix}{i}.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, p)
        paths.append(p)
    return paths


def write_adapter(
    directory: Path,
    factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    *,
    r: int,
    alpha: float,
    extra: Mapping[str, torch.Tensor] | None = None,
    **config: object,
) -> Path:
    """Write a PEFT LoRA adapter dir; ``factors`` maps module name → (A (r×in), B (out×r))."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for module, (a, b) in factors.items():
        tensors[f"base_model.model.{module}.lora_A.weight"] = a.contiguous()
        tensors[f"base_model.model.{module}.lora_B.weight"] = b.contiguous()
    for k, v in (extra or {}).items():
        tensors[f"base_model.model.{k}"] = v.contiguous()
    save_file(tensors, directory / "adapter_model.safetensors")
    cfg = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": alpha,
        "target_modules": sorted({m.rsplit(".", 1)[-1] for m in factors}),
        "use_rslora": False,
        "fan_in_fan_out": False,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_dora": False,
        "bias": "none",
        "modules_to_save": None,
    }
    cfg.update(config)
    (directory / "adapter_config.json").write_text(json.dumps(cfg))
    return directory


def mlp_like(g: torch.Generator, scale: float = 1.0, hidden: int = 12) -> dict[str, torch.Tensor]:
    """A small 2-layer-MLP-shaped state dict (fp32)."""
    return {
        "fc1.weight": scale * torch.randn(hidden, 10, generator=g),
        "fc1.bias": scale * torch.randn(hidden, generator=g),
        "fc2.weight": scale * torch.randn(6, hidden, generator=g),
        "fc2.bias": scale * torch.randn(6, generator=g),
    }
