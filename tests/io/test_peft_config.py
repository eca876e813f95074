"""adapter_config.json is read as PEFT types it, with PEFT's defaults and matching rules, and bounded regexes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from helpers import write_adapter
from weightspace.errors import CorruptFileError
from weightspace.io import LoraConfig, open_source
from weightspace.io._peft import DEFAULT_LORA_ALPHA
from weightspace.io._regex import safe_pattern

MODULES = [
    "model.layers.0.self_attn.q_proj",
    "model.layers.0.self_attn.v_proj",
    "model.layers.10.mlp.up_proj",
    "fc1",
]


def _adapter(tmp_path: Path, **config: object) -> Path:
    ad = write_adapter(tmp_path / "a", {"q": (torch.randn(2, 4), torch.randn(3, 2))}, r=2, alpha=4)
    cfg = json.loads((ad / "adapter_config.json").read_text())
    cfg.update(config)
    cfg = {k: v for k, v in cfg.items() if v is not None}
    (ad / "adapter_config.json").write_text(json.dumps(cfg))
    return ad


def test_missing_lora_alpha_is_peft_default_8(tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    assert peft.LoraConfig().lora_alpha == DEFAULT_LORA_ALPHA == 8
    src = open_source(_adapter(tmp_path, lora_alpha=None))
    assert src.config.lora_alpha == 8
    assert src.modules["q.weight"].scaling == pytest.approx(8 / 2)  # not alpha = r, which would give 1


def test_missing_lora_alpha_matches_peft_delta(tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    from weightspace.units import UnitMember, UnitSpec

    torch.manual_seed(0)
    base = torch.nn.Sequential()
    base.add_module("q", torch.nn.Linear(5, 3))
    model = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["q"], init_lora_weights=False))
    model.save_pretrained(tmp_path / "ad")
    cfg_path = tmp_path / "ad" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["lora_alpha"]  # a config written without the field: PEFT reads it as 8
    cfg_path.write_text(json.dumps(cfg))
    want = model.base_model.model.q.get_delta_weight("default").detach().double()
    src = open_source(tmp_path / "ad")
    got = UnitMember(src, UnitSpec("q.weight", (3, 5), lora=True)).full().reshape(3, 5)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("targets", [["q_proj"], ["self_attn.v_proj", "up_proj"], ["fc1", "fc"], "all-linear"])
def test_list_targets_match_as_peft_does(targets: object) -> None:
    peft = pytest.importorskip("peft")
    from peft.tuners.tuners_utils import check_target_module_exists

    cfg = LoraConfig(2, 4.0, False, False, {}, {}, {}, target_modules=targets)  # type: ignore[arg-type]
    pcfg = peft.LoraConfig(target_modules=targets if targets != "all-linear" else ["q_proj"])
    for name in MODULES:
        want = True if targets == "all-linear" else bool(check_target_module_exists(pcfg, name))
        assert cfg.targets(name) == want, name


@pytest.mark.parametrize("pattern", [r".*\.q_proj", r".*layers\.\d+\.self_attn\.(q|v)_proj", r"fc\d", r".*mlp.*"])
def test_regex_targets_match_as_peft_does(pattern: str) -> None:
    peft = pytest.importorskip("peft")
    from peft.tuners.tuners_utils import check_target_module_exists

    cfg = LoraConfig(2, 4.0, False, False, {}, {}, {}, target_modules=pattern)
    pcfg = peft.LoraConfig(target_modules=pattern)
    for name in MODULES:
        assert cfg.targets(name) == bool(check_target_module_exists(pcfg, name)), name


@pytest.mark.parametrize(
    "keys", [["q_proj"], ["layers.0.self_attn.q_proj", "q_proj"], [r"layers\.\d+\.mlp\.up_proj"]]
)
def test_rank_pattern_picks_the_key_peft_picks(keys: list[str]) -> None:
    pytest.importorskip("peft")
    from peft.utils.other import get_pattern_key

    cfg = LoraConfig(2, 4.0, False, False, dict.fromkeys(keys, 8), {}, {})
    for name in MODULES:
        want = get_pattern_key(keys, name)
        assert cfg.rank_for(name) == (8 if want in keys else 2), name


def test_modules_outside_target_modules_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CorruptFileError, match="not selected by the config's target_modules"):
        open_source(_adapter(tmp_path, target_modules=["k_proj"]))


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("r", 2.0, "field 'r' must be an int"),
        ("r", "2", "field 'r' must be an int"),
        ("r", True, "field 'r' must be an int"),
        ("r", 0, "field 'r' must be an int in"),
        ("lora_alpha", -4, "field 'lora_alpha' must be a finite number in"),
        ("lora_alpha", 1e300, "field 'lora_alpha' must be a finite number in"),
        ("lora_alpha", "8", "field 'lora_alpha'"),
        ("rank_pattern", {"q": 0}, r"'rank_pattern\['q'\]' must be an int"),
        ("rank_pattern", {"(a+)+b": 2}, "repeats a repeated part"),
        ("alpha_pattern", {"q": math.inf}, "literal Infinity"),
        ("target_modules", "(qa|va)+_proj", "repeats a group"),
        ("use_rslora", "yes", "field 'use_rslora' must be true or false"),
    ],
)
def test_config_fields_are_typed(tmp_path: Path, field: str, value: object, match: str) -> None:
    with pytest.raises(CorruptFileError, match=match) as info:
        open_source(_adapter(tmp_path, **{field: value}))
    assert "adapter_config.json" in str(info.value)


def test_unknown_keys_are_reported_not_fatal(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="keys PEFT does not know are ignored: 'my_key'"):
        src = open_source(_adapter(tmp_path, my_key=1))
    assert src.config.r == 2


@pytest.mark.parametrize(
    "pattern",
    [
        "^model.decoder.layers.0.encoder_attn.k_proj",
        r"layers\.\d+\.q_proj",
        ".*decoder.*(Self|EncDec)Attention.*(q|v)$",
    ],
)
def test_documented_regex_forms_are_accepted(pattern: str) -> None:
    assert safe_pattern(pattern, what="target_modules").pattern == pattern


@pytest.mark.parametrize(
    ("pattern", "match"),
    [
        ("(a+)+b", "repeats a repeated part"),
        ("(a|aa)+b", "repeats a group"),
        (r"(\w+\.)*q", "repeats a repeated part"),
        (r"(a)\1", "backreference"),
        (".*a.*a.*a.*a", "unbounded repeats"),
        ("x" * 600, "more than 512"),
    ],
)
def test_catastrophic_regexes_are_refused(pattern: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        safe_pattern(pattern, what="rank_pattern")
