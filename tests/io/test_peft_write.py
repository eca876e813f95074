"""PEFT adapters on the writing side: base-key mapping, rank-R configs, LoRA output targets and factors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from helpers import write_adapter
from weightspace.errors import ShapeMismatchError, TensorKeyError, UnsupportedFormatError
from weightspace.io import (
    Layout,
    LayoutWriter,
    adapter_base_keys,
    base_key_for,
    lora_factors_from_delta,
    lora_targets,
    open_source,
)


@pytest.fixture
def base(tmp_path: Path):
    save_file(
        {
            "encoder.layer.0.query.weight": torch.zeros(6, 5),
            "encoder.layer.0.value.weight": torch.zeros(4, 5),
            "encoder.layer.0.query.bias": torch.zeros(6),
            "ids": torch.arange(3),
        },
        tmp_path / "base.safetensors",
    )
    return open_source(tmp_path / "base.safetensors")


def test_base_key_for_exact_and_dotted_suffix_in_both_directions(base) -> None:
    assert base_key_for("encoder.layer.0.query.weight", base, adapter="a") == "encoder.layer.0.query.weight"
    assert base_key_for("bert.encoder.layer.0.query.weight", base, adapter="a") == "encoder.layer.0.query.weight"
    assert base_key_for("0.value.weight", base, adapter="a") == "encoder.layer.0.value.weight"


def test_base_key_for_errors_name_base_key_and_adapter(base) -> None:
    with pytest.raises(
        TensorKeyError,
        match=r"base.safetensors: tensor 'decoder.q.weight': adapter module weight 'decoder.q.weight' \(from a0\) "
        r"has no counterpart in the base.*base keys look like 'ids'",
    ):
        base_key_for("decoder.q.weight", base, adapter="a0")
    with pytest.raises(TensorKeyError, match=r"matches several base keys by dotted suffix \('encoder"):
        base_key_for("weight", base, adapter="a0")


def test_adapter_base_keys_checks_one_to_one_shape_and_dtype(base) -> None:
    updates = {"bert.encoder.layer.0.query.weight": (6, 5), "encoder.layer.0.value.weight": (4, 5)}
    assert adapter_base_keys(updates, base, adapter="a") == {
        "bert.encoder.layer.0.query.weight": "encoder.layer.0.query.weight",
        "encoder.layer.0.value.weight": "encoder.layer.0.value.weight",
    }
    with pytest.raises(TensorKeyError, match=r"adapter modules 'x.encoder.layer.0.query.weight' and 'encoder"):
        adapter_base_keys(
            {"x.encoder.layer.0.query.weight": (6, 5), "encoder.layer.0.query.weight": (6, 5)}, base, adapter="a"
        )
    with pytest.raises(ShapeMismatchError, match=r"the base has shape \(6, 5\) but the adapter update for"):
        adapter_base_keys({"encoder.layer.0.query.weight": (5, 6)}, base, adapter="a")
    with pytest.raises(UnsupportedFormatError, match=r"tensor 'ids': base dtype I64 is not a float type"):
        adapter_base_keys({"ids": (3,)}, base, adapter="a")


def test_with_rank_keeps_alpha_semantics(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    factors = {"m.q": (torch.randn(2, 5, generator=g), torch.randn(6, 2, generator=g))}
    src = open_source(
        write_adapter(
            tmp_path / "a", factors, r=2, alpha=8, use_rslora=True, rank_pattern={"q": 2}, lora_dropout=0.1
        )
    )
    cfg = src.config.with_rank(4, modules_to_save=None)
    assert (cfg.r, cfg.rank_pattern, cfg.rank_for("m.q")) == (4, {}, 4)
    assert cfg.scaling_for("m.q") == pytest.approx(8 / 2)  # rslora: alpha / sqrt(r)
    assert cfg.raw["r"] == 4
    assert cfg.raw["lora_dropout"] == 0.1
    assert cfg.raw["modules_to_save"] is None
    assert src.config.raw["r"] == 2  # the source's config is not changed


def test_lora_targets_and_factors_write_a_readable_adapter(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    factors = {
        "m.v": (torch.randn(2, 5, generator=g), torch.randn(4, 2, generator=g)),
        "m.q": (torch.randn(2, 5, generator=g), torch.randn(6, 2, generator=g)),
    }
    src = open_source(write_adapter(tmp_path / "a", factors, r=2, alpha=4))
    cfg = src.config.with_rank(3)
    targets = lora_targets(src, cfg)
    assert list(targets) == [
        u
        for u in (k.removeprefix("base_model.model.").replace(".lora_A", "") for k in src.file_keys())
        if u in targets
    ]  # the template's file order
    q = targets["m.q.weight"]
    assert (q.a_shape, q.b_shape, q.dtype, q.scaling, q.rank) == ((3, 5), (6, 3), torch.float32, 4 / 3, 3)
    assert list(lora_targets(src, cfg, units=["m.v.weight"])) == ["m.v.weight"]

    deltas = {
        u: torch.randn(t.b_shape[0], t.a_shape[1], generator=g, dtype=torch.float64) for u, t in targets.items()
    }
    specs = {}
    for t in targets.values():
        specs[t.a_key], specs[t.b_key] = (t.dtype, t.a_shape), (t.dtype, t.b_shape)
    layout = Layout("peft", configs={"adapter_config.json": json.dumps(cfg.raw)})
    with LayoutWriter(tmp_path / "out", layout, specs) as w:
        for unit, t in targets.items():
            tensors, err = t.factors(deltas[unit])
            assert err == pytest.approx(lora_factors_from_delta(deltas[unit], 3, t.scaling)[2])
            for key, tensor in tensors.items():
                w.write(key, tensor)
    out = open_source(tmp_path / "out")
    assert out.config.r == 3
    for unit in targets:
        b, a, mod = out.lora(unit)
        rebuilt = mod.scaling * b.double() @ a.double()
        u, s, vh = torch.linalg.svd(deltas[unit])
        torch.testing.assert_close(rebuilt, (u[:, :3] * s[:3]) @ vh[:3], atol=1e-5, rtol=1e-5)


def test_lora_factors_from_delta_is_exact_at_full_rank() -> None:
    g = torch.Generator().manual_seed(2)
    delta = torch.randn(4, 2, generator=g, dtype=torch.float64) @ torch.randn(
        2, 6, generator=g, dtype=torch.float64
    )
    b, a, err = lora_factors_from_delta(delta, 2, 0.5)
    assert err < 1e-12
    torch.testing.assert_close(0.5 * b @ a, delta)
    b, a, _ = lora_factors_from_delta(delta.T, 3, 2.0, fan_in_fan_out=True)  # stored (d_in, d_out)
    torch.testing.assert_close(2.0 * (b @ a).T, delta.T)
