"""Model sources: PEFT semantics against PEFT itself, sharded dirs, opt-in pickles that never execute code."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from helpers import write_adapter
from weightspace.errors import (
    CorruptFileError,
    ShapeMismatchError,
    TensorKeyError,
    UnsafeFileError,
    UnsupportedFormatError,
)
from weightspace.io import expand_models, open_source
from weightspace.units import UnitMember, UnitSpec


def _delta(src, key: str) -> torch.Tensor:
    e = src.entries[key]
    return UnitMember(src, UnitSpec(key, e.shape, lora=True)).full().reshape(e.shape)


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers.pytorch_utils import Conv1D

        self.q = torch.nn.Linear(8, 6)
        self.v = torch.nn.Linear(8, 6)
        self.conv = torch.nn.Conv2d(3, 5, kernel_size=3)
        self.c_attn = Conv1D(7, 8)  # GPT-2 style: weight stored (in, out)


@pytest.mark.parametrize("use_rslora", [False, True])
def test_peft_delta_matches_peft_get_delta_weight(tmp_path: Path, use_rslora: bool) -> None:
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    cfg = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q", "v", "conv"],
        rank_pattern={"v": 2},
        alpha_pattern={"conv": 3},
        use_rslora=use_rslora,
        init_lora_weights=False,  # random B so that ΔW ≠ 0
    )
    model = peft.get_peft_model(_Tiny(), cfg)
    model.save_pretrained(tmp_path / "ad")
    src = open_source(tmp_path / "ad")
    assert src.format == "peft"
    for name in ("q", "v", "conv"):
        layer = model.base_model.model.get_submodule(name)
        want = layer.get_delta_weight("default").detach().double()
        got = _delta(src, f"{name}.weight")
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_peft_fan_in_fan_out_matches_peft(tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    torch.manual_seed(1)
    cfg = peft.LoraConfig(
        r=3, lora_alpha=6, target_modules=["c_attn"], fan_in_fan_out=True, init_lora_weights=False
    )
    model = peft.get_peft_model(_Tiny(), cfg)
    model.save_pretrained(tmp_path / "gpt")
    src = open_source(tmp_path / "gpt")
    want = model.base_model.model.c_attn.get_delta_weight("default").detach().double()
    got = _delta(src, "c_attn.weight")
    assert got.shape == (8, 7)  # the Conv1D weight layout (in, out)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("config", "extra_key", "exc", "match"),
    [
        ({"use_dora": True}, None, UnsupportedFormatError, "DoRA"),
        ({"peft_type": "IA3"}, None, UnsupportedFormatError, "only LORA"),
        ({"lora_bias": True}, None, UnsupportedFormatError, "bias update"),
        ({}, "emb.lora_embedding_A", UnsupportedFormatError, "embedding LoRA"),
        ({}, "q.lora_magnitude_vector", UnsupportedFormatError, "DoRA"),
    ],
)
def test_unsupported_adapter_features_are_refused(
    tmp_path: Path, config: dict, extra_key: str | None, exc: type, match: str
) -> None:
    extra = {extra_key: torch.zeros(2, 2)} if extra_key else None
    ad = write_adapter(
        tmp_path / "a", {"q": (torch.randn(2, 4), torch.randn(3, 2))}, r=2, alpha=2, extra=extra, **config
    )
    with pytest.raises(exc, match=match) as info:
        open_source(ad)
    assert str(ad) in str(info.value)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"rank_pattern": {"q": "two"}}, r"'rank_pattern\['q'\]' must be an int"),
        ({"alpha_pattern": {"(": 2}}, "not a valid regular expression"),
        ({"r": "x"}, "field 'r' must be an int"),
    ],
)
def test_malformed_adapter_config_is_an_input_error(tmp_path: Path, config: dict, match: str) -> None:
    ad = write_adapter(tmp_path / "a", {"q": (torch.randn(2, 4), torch.randn(3, 2))}, r=2, alpha=2)
    cfg = json.loads((ad / "adapter_config.json").read_text())
    (ad / "adapter_config.json").write_text(json.dumps({**cfg, **config}))
    with pytest.raises(CorruptFileError, match=match) as info:
        open_source(ad)
    assert "adapter_config.json" in str(info.value)


def test_adapter_rank_mismatch_and_missing_factor(tmp_path: Path) -> None:
    ad = write_adapter(tmp_path / "a", {"q": (torch.randn(3, 4), torch.randn(5, 3))}, r=2, alpha=2)
    with pytest.raises(ShapeMismatchError, match="factor rank is 3 but the config"):
        open_source(ad)
    ad2 = tmp_path / "b"
    write_adapter(ad2, {"q": (torch.randn(2, 4), torch.randn(5, 2))}, r=2, alpha=2)
    save_file({"base_model.model.q.lora_A.weight": torch.randn(2, 4)}, ad2 / "adapter_model.safetensors")
    with pytest.raises(TensorKeyError, match="has no lora_B tensor"):
        open_source(ad2)


def test_modules_to_save_tensors_are_extra(tmp_path: Path) -> None:
    ad = write_adapter(
        tmp_path / "a",
        {"q": (torch.randn(2, 4), torch.randn(5, 2))},
        r=2,
        alpha=4,
        extra={"classifier.weight": torch.randn(3, 5)},
    )
    src = open_source(ad)
    assert src.entries["q.weight"].kind == "lora"
    assert src.entries["classifier.weight"].kind == "extra"
    assert src.read("classifier.weight").shape == (3, 5)


def test_sharded_directory(tmp_path: Path) -> None:
    d = tmp_path / "hf"
    d.mkdir()
    a, b = torch.randn(3, 3), torch.randn(4)
    save_file({"a": a}, d / "model-00001-of-00002.safetensors")
    save_file({"b": b}, d / "model-00002-of-00002.safetensors")
    index = {
        "metadata": {},
        "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"},
    }
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    (d / "config.json").write_text('{"model_type": "x"}')
    src = open_source(d)
    assert src.format == "hf-sharded"
    assert torch.equal(src.read("b"), b)
    assert "config.json" in src.configs


def test_sharded_index_path_traversal_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "hf"
    d.mkdir()
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "../evil.safetensors"}}))
    with pytest.raises(CorruptFileError, match="plain file name"):
        open_source(d)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {_Evil.marker}",))

    marker = ""


def _evil_bin(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "PWNED"
    _Evil.marker = str(marker)
    p = tmp_path / "evil.bin"
    with open(p, "wb") as fh:
        pickle.dump({"w": _Evil()}, fh)
    return p, marker


def test_pickle_is_refused_without_allow_pickle(tmp_path: Path) -> None:
    p = tmp_path / "ok.bin"
    torch.save({"w": torch.randn(2, 2)}, p)
    with pytest.raises(UnsafeFileError, match="--allow-pickle"):
        open_source(p)


def test_allowed_pickle_loads_plain_state_dict(tmp_path: Path) -> None:
    w = torch.randn(2, 3)
    torch.save({"state_dict": {"w": w}}, tmp_path / "ok.pt")
    src = open_source(tmp_path / "ok.pt", allow_pickle=True)
    assert torch.equal(src.read("w"), w)


def test_malicious_pickle_never_runs_even_with_force_env(tmp_path: Path) -> None:
    p, marker = _evil_bin(tmp_path)
    code = (
        "import sys\nfrom weightspace.io import open_source\nfrom weightspace.errors import WeightspaceError\n"
        f"try:\n    open_source({str(p)!r}, allow_pickle=True)\nexcept WeightspaceError as e:\n"
        "    print('REFUSED', type(e).__name__)\n"
    )
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "REFUSED UnsafeFileError" in out.stdout, out.stderr
    assert not marker.exists()


def test_expand_models_globs_lists_and_dirs(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    for i in (10, 2, 1):
        save_file({"w": torch.zeros(1)}, d / f"model{i}.safetensors")
    assert [p.name for p in expand_models([str(d)])] == [
        "model1.safetensors",
        "model2.safetensors",
        "model10.safetensors",
    ]
    assert len(expand_models([str(d / "model1*.safetensors")])) == 2
    (tmp_path / "list.txt").write_text("# models\nm/model2.safetensors\n\nm/model1.safetensors\n")
    # Entries of a list are relative to the current directory (as on the command line), not to the list's folder.
    assert [p.name for p in expand_models(["@list.txt"], cwd=tmp_path)] == [
        "model2.safetensors",
        "model1.safetensors",
    ]
    sub = tmp_path / "lists"
    sub.mkdir()
    (sub / "l.txt").write_text("m/model10.safetensors\n")
    assert [p.name for p in expand_models(["@lists/l.txt"], cwd=tmp_path)] == ["model10.safetensors"]
    from weightspace.errors import InputError

    with pytest.raises(InputError, match="named twice"):
        expand_models([str(d / "model1.safetensors"), str(d / "model1.safetensors")])
    with pytest.raises(InputError, match="matched no files"):
        expand_models([str(d / "*.bin")])
