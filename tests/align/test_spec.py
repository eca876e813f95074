"""Permutation specs: derived sequential chains, built-in ViT/BERT specs, user files — and their refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from align._nets import cnn1d, cnn2d, mlp, state
from weightspace.align import (
    AxisRef,
    PermGroup,
    PermutationSpec,
    bert_spec,
    check_spec,
    derive_sequential,
    load_spec,
    resolve_spec,
    spec_from_dict,
    vit_spec,
)
from weightspace.errors import InputError, ParameterError, ShapeMismatchError, TensorKeyError


def _shapes(sd: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in sd.items()}


def _layout(spec: PermutationSpec) -> dict[str, list[tuple[str, int, int]]]:
    return {g.name: [(a.key, a.axis, a.block) for a in g.axes] for g in spec.groups}


def test_sequential_naming_chains_in_natural_order() -> None:
    # Twelve layers: natural order puts "10" after "8", where plain sorting would put it after "1".
    sd = state(mlp(0, widths=(4, 5, 6, 7, 8, 9, 10, 11)))
    spec = derive_sequential(_shapes(sd))
    assert [g.name for g in spec.groups] == ["0", "2", "4", "6", "8", "10"]
    assert _layout(spec)["10"] == [("10.weight", 0, 1), ("10.bias", 0, 1), ("12.weight", 1, 1)]
    assert all(g.scale for g in spec.groups)


def test_named_layers_and_the_interface_stays_put() -> None:
    shapes = {
        "fc1.weight": (16, 8),
        "fc1.bias": (16,),
        "fc2.weight": (16, 16),
        "fc2.bias": (16,),
        "head.weight": (3, 16),
        "head.bias": (3,),
    }
    spec = derive_sequential(shapes)
    assert _layout(spec) == {
        "fc1": [("fc1.weight", 0, 1), ("fc1.bias", 0, 1), ("fc2.weight", 1, 1)],
        "fc2": [("fc2.weight", 0, 1), ("fc2.bias", 0, 1), ("head.weight", 1, 1)],
    }
    assert any("not permuted" in n for n in spec.notes)
    assert check_spec(spec, shapes) == {"fc1": 16, "fc2": 16}


def test_cnn_flatten_is_a_block_of_positions() -> None:
    spec = derive_sequential(_shapes(state(cnn1d(0))))
    assert _layout(spec)["2"][-1] == ("5.weight", 1, 6)  # 6 channels × 6 positions feed the linear layer
    assert "flattened" in spec.groups[1].note
    spec2 = derive_sequential(_shapes(state(cnn2d(0))))
    assert _layout(spec2)["2"][-1] == ("5.weight", 1, 25)


def test_norm_vectors_follow_their_layer_without_scale() -> None:
    sd = state(cnn2d(0, norm=True))
    spec = derive_sequential(_shapes(sd))
    first = spec.groups[0]
    keys = [a.key for a in first.axes]
    assert keys == ["0.weight", "0.bias", "1.bias", "1.running_mean", "1.running_var", "1.weight", "3.weight"]
    assert not first.scale
    assert spec.groups[1].scale
    assert any("normalisation" in n for n in spec.notes)


@pytest.mark.parametrize(
    ("shapes", "tensor", "match"),
    [
        ({"a.bias": (4,), "b.weight": (4, 3)}, "a.bias", "comes before any layer"),
        ({"fc1.weight": (8, 4), "fc1.bias": (7,), "fc2.weight": (2, 8)}, "fc1.bias", "length 7 follows layer"),
        ({"fc1.weight": (8, 4), "fc2.weight": (2, 9)}, "fc2.weight", "takes 9 inputs"),
        ({"fc1.weight": (8, 4), "fc1.other": (8, 4), "fc2.weight": (2, 8)}, "fc1.weight", "holds 2 matrices"),
        ({"fc1.weight": (8, 4)}, "fc1.weight", "at least two"),
    ],
)
def test_underivable_chains_are_refused_naming_file_and_tensor(
    shapes: dict[str, tuple[int, ...]], tensor: str, match: str
) -> None:
    with pytest.raises(InputError, match=match) as info:
        derive_sequential(shapes, path="m.safetensors")
    assert info.value.path == "m.safetensors"
    assert info.value.tensor == tensor
    assert str(info.value).startswith(f"m.safetensors: tensor '{tensor}'")


def test_checkpoint_order_is_tried_when_natural_order_does_not_chain() -> None:
    shapes = {"encoder.weight": (16, 8), "decoder.weight": (4, 16)}
    spec = derive_sequential(shapes, order=["encoder.weight", "decoder.weight"])
    assert _layout(spec) == {"encoder": [("encoder.weight", 0, 1), ("decoder.weight", 1, 1)]}
    assert "checkpoint key order" in spec.origin


def _vit_state() -> dict[str, torch.Tensor]:
    from weightspace.zoo._vit import DigitsViT

    torch.manual_seed(0)
    return state(DigitsViT(10))


def test_vit_spec_groups_heads_mlp_and_residual() -> None:
    shapes = _shapes(_vit_state())
    spec = vit_spec(shapes, heads=4)
    names = [g.name for g in spec.groups]
    assert names == ["blocks.0.mlp", "blocks.0.heads", "blocks.1.mlp", "blocks.1.heads", "residual"]
    sizes = check_spec(spec, shapes)
    assert sizes["blocks.0.heads"] == 4
    assert sizes["blocks.0.mlp"] == 64
    assert sizes["residual"] == 32
    heads = {(a.key, a.axis, a.block) for a in spec.group("blocks.0.heads").axes}
    assert ("blocks.0.attn.q.weight", 0, 8) in heads
    assert ("blocks.0.attn.proj.weight", 1, 8) in heads
    residual = {a.key for a in spec.group("residual").axes}
    assert {"cls_token", "pos_embed", "head.weight", "norm.bias", "blocks.1.norm2.weight"} <= residual
    assert not any(g.scale for g in spec.groups)
    no_heads = resolve_spec(None, shapes)  # detected from the keys; no config says how many heads
    assert "blocks.0.heads" not in [g.name for g in no_heads.groups]
    assert any("heads not permuted" in n for n in no_heads.notes)
    assert [g.name for g in resolve_spec("vit:heads=4,residual=false", shapes).groups] == [
        "blocks.0.mlp",
        "blocks.0.heads",
        "blocks.1.mlp",
        "blocks.1.heads",
    ]


def test_vit_spec_refuses_what_it_does_not_know() -> None:
    shapes = _shapes(_vit_state())
    with pytest.raises(ParameterError, match="heads=3 does not divide"):
        vit_spec(shapes, heads=3)
    with pytest.raises(InputError, match="does not know this one") as info:
        vit_spec({**shapes, "extra.weight": (32, 32)}, heads=4, path="v.safetensors")
    assert info.value.tensor == "extra.weight"
    with pytest.raises(ParameterError, match="not understood"):
        resolve_spec("vit:depth=2", shapes)


def test_bert_spec_from_a_real_bert_and_its_config() -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=24,
        max_position_embeddings=20,
    )
    torch.manual_seed(0)
    sd = state(transformers.BertModel(cfg))
    shapes = _shapes(sd)
    spec = resolve_spec("bert:residual=true", shapes, configs={"config.json": cfg.to_json_string()})
    assert spec.origin.startswith("built-in bert (heads=4")
    assert resolve_spec(None, shapes).origin == "built-in bert (heads=None, residual=False)"
    sizes = check_spec(spec, shapes)
    assert sizes["encoder.layer.1.heads"] == 4
    assert sizes["encoder.layer.1.mlp"] == 24
    assert sizes["residual"] == 16
    assert ("embeddings.word_embeddings.weight", 1) in {(a.key, a.axis) for a in spec.group("residual").axes}
    assert [g.name for g in bert_spec(shapes).groups] == ["encoder.layer.0.mlp", "encoder.layer.1.mlp"]


def _spec_file(tmp_path: Path, groups: dict, suffix: str = ".json") -> Path:
    p = tmp_path / f"spec{suffix}"
    if suffix == ".json":
        p.write_text(json.dumps({"groups": groups}))
    else:
        yaml = pytest.importorskip("yaml")
        p.write_text(yaml.safe_dump({"groups": groups}))
    return p


MLP_SHAPES = {"fc1.weight": (16, 8), "fc1.bias": (16,), "fc2.weight": (4, 16)}


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_spec_files_in_both_formats(tmp_path: Path, suffix: str) -> None:
    groups = {
        "h": {
            "axes": [
                ["fc1.weight", 0, "in"],
                {"key": "fc1.bias", "axis": 0, "role": "in"},
                ["fc2.weight", 1, "out"],
            ],
            "scale": True,
        }
    }
    spec = load_spec(_spec_file(tmp_path, groups, suffix))
    assert spec.groups[0].scale
    assert [a.role for a in spec.groups[0].axes] == ["in", "in", "out"]
    assert check_spec(spec, MLP_SHAPES) == {"h": 16}
    assert spec_from_dict(spec.to_dict()).to_dict() == spec.to_dict()


@pytest.mark.parametrize(
    ("groups", "error", "tensor", "match"),
    [
        ({"h": [["fc1.weight", 0], ["fc9.weight", 1]]}, TensorKeyError, "fc9.weight", "does not have"),
        ({"h": [["fc1.weight", 0], ["fc2.weight", 2]]}, InputError, "fc2.weight", "axis 2 is out of range"),
        ({"h": [["fc1.weight", 0], ["fc2.weight", 0]]}, ShapeMismatchError, "fc2.weight", "permutes 16 units"),
        (
            {
                "h": [["fc1.weight", 0, "in"], ["fc2.weight", 1]],
            },
            None,
            None,
            None,
        ),
        (
            {"h": {"axes": [["fc1.weight", 0], ["fc2.weight", 1]], "scale": True}},
            InputError,
            "fc1.weight",
            "needs role",
        ),
        (
            {"h": [{"key": "fc1.weight", "axis": 0, "block": 3}]},
            InputError,
            "fc1.weight",
            "block 3 does not divide",
        ),
        ({"a": [["fc1.weight", 0]], "b": [["fc1.weight", 0]]}, InputError, "fc1.weight", "again in group 'b'"),
    ],
)
def test_bad_spec_files_name_the_file_and_the_key(
    tmp_path: Path, groups: dict, error: type | None, tensor: str | None, match: str | None
) -> None:
    path = _spec_file(tmp_path, groups)
    spec = load_spec(path)
    if error is None:
        check_spec(spec, MLP_SHAPES, spec_path=path)
        return
    with pytest.raises(error, match=match) as info:
        check_spec(spec, MLP_SHAPES, path="model.safetensors", spec_path=path)
    assert info.value.path == str(path)
    assert info.value.tensor == tensor


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"groups": {}}', "non-empty 'groups'"),
        ('{"groups": {"h": [["fc1.weight"]]}}', r"groups.h.axes\[0\]: an axis is"),
        ('{"groups": {"h": [["fc1.weight", 0, "sideways"]]}}', "'role' must be 'in' or 'out'"),
        ('{"groups": {"h": [["fc1.weight", 0]]}, "version": 2}', "unknown top-level"),
        ("{not json", "not valid JSON"),
    ],
)
def test_malformed_spec_files(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "bad.json"
    p.write_text(text)
    with pytest.raises(InputError, match=match) as info:
        load_spec(p)
    assert info.value.path == str(p)


def test_a_spec_argument_that_is_neither_file_nor_builtin() -> None:
    with pytest.raises(ParameterError, match="neither a file nor a built-in"):
        resolve_spec("no-such-spec.yaml", MLP_SHAPES)
    assert (
        resolve_spec(PermutationSpec((PermGroup("h", (AxisRef("fc1.weight", 0),)),)), MLP_SHAPES).groups[0].name
        == "h"
    )
