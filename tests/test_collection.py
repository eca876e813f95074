"""Collection rules: units vs private tensors, missing keys, architectures, dtypes, names, duplicates."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from helpers import mlp_like, write_adapter, write_models
from weightspace.collection import Collection, model_names
from weightspace.errors import InputError, ShapeMismatchError, TensorKeyError, UnsupportedFormatError


def test_units_in_natural_order_and_heads_private(tmp_path: Path, gen: torch.Generator) -> None:
    models = []
    for i in range(4):
        sd = {f"layer.{j}.weight": torch.randn(3, 3, generator=gen) for j in (10, 2, 1)}
        sd["head.weight"] = torch.randn(2 + i % 2, 3, generator=gen)
        models.append(sd)
    write_models(tmp_path / "m", models)
    coll = Collection.from_paths([str(tmp_path / "m")])
    assert [u.name for u in coll.units] == ["layer.1.weight", "layer.2.weight", "layer.10.weight"]
    assert coll.private["head.weight"].reason == "shape differs across models"
    summary = coll.summary()
    assert summary["private"][0]["shapes"]["m1"] == [3, 3]


def test_different_architectures_are_an_error(tmp_path: Path, gen: torch.Generator) -> None:
    write_models(tmp_path / "m", [mlp_like(gen, hidden=12), mlp_like(gen, hidden=8)])
    with pytest.raises(
        ShapeMismatchError,
        match=r"m1\.safetensors: tensor 'fc1\.bias': these are different architectures: 3 of 4 tensors differ",
    ) as info:
        Collection.from_paths([str(tmp_path / "m")])
    # The first differing keys of each model are named, with their shapes.
    assert "of 'm0': fc1.bias [12], fc1.weight [12, 10], fc2.weight [6, 12]" in str(info.value)
    assert "of 'm1': fc1.bias [8], fc1.weight [8, 10], fc2.weight [6, 8]" in str(info.value)


def test_models_with_mostly_other_keys_are_different_architectures(tmp_path: Path, gen: torch.Generator) -> None:
    bert = {f"encoder.layer.{i}.weight": torch.randn(4, 4, generator=gen) for i in range(3)}
    gpt = {f"h.{i}.attn.weight": torch.randn(4, 4, generator=gen) for i in range(3)}
    write_models(tmp_path / "m", [bert, gpt])
    with pytest.raises(
        ShapeMismatchError, match="these are different architectures: 6 of 6 tensors differ"
    ) as info:
        Collection.from_paths([str(tmp_path / "m")])
    assert "--private" not in str(info.value)  # no advice to paper over an architecture mismatch
    assert "of 'm0': encoder.layer.0.weight [4, 4]" in str(info.value)
    assert "of 'm1': h.0.attn.weight [4, 4]" in str(info.value)


def test_missing_tensor_names_the_model_that_lacks_it(tmp_path: Path, gen: torch.Generator) -> None:
    a, b = mlp_like(gen), mlp_like(gen)
    del b["fc2.bias"]
    write_models(tmp_path / "m", [a, b])
    with pytest.raises(TensorKeyError, match=r"m1\.safetensors: tensor 'fc2\.bias': model 'm1' lacks this tensor"):
        Collection.from_paths([str(tmp_path / "m")])
    coll = Collection.from_paths([str(tmp_path / "m")], private=["fc2.bias"])
    assert "fc2.bias" in coll.private


def test_integer_tensor_needs_explicit_exclude(tmp_path: Path, gen: torch.Generator) -> None:
    models = [{**mlp_like(gen), "position_ids": torch.arange(5)} for _ in range(2)]
    write_models(tmp_path / "m", models)
    with pytest.raises(
        UnsupportedFormatError, match=r"tensor 'position_ids': dtype I64 is not a float type.*--exclude"
    ):
        Collection.from_paths([str(tmp_path / "m")])
    coll = Collection.from_paths([str(tmp_path / "m")], exclude=["position_*"])
    assert coll.excluded == ["position_ids"]


def test_too_few_models(tmp_path: Path, gen: torch.Generator) -> None:
    write_models(tmp_path / "m", [mlp_like(gen)])
    with pytest.raises(InputError, match="1 model given; a shared subspace needs at least 2"):
        Collection.from_paths([str(tmp_path / "m")])
    with pytest.raises(InputError, match="no models given"):
        Collection([])


def test_base_turns_members_into_task_vectors(tmp_path: Path, gen: torch.Generator) -> None:
    base = mlp_like(gen)
    save_file(base, tmp_path / "base.safetensors")
    models = [{k: v + 1.0 for k, v in base.items()} for _ in range(2)]
    write_models(tmp_path / "m", models)
    coll = Collection.from_paths([str(tmp_path / "m")], base=tmp_path / "base.safetensors")
    assert coll.is_delta
    torch.testing.assert_close(coll.member(0, "fc1.weight").full(), torch.ones(12, 10, dtype=torch.float64))


def test_peft_and_full_cannot_mix(tmp_path: Path, gen: torch.Generator) -> None:
    write_models(tmp_path / "m", [mlp_like(gen)])
    write_adapter(tmp_path / "m" / "ad", {"fc1": (torch.randn(2, 10), torch.randn(12, 2))}, r=2, alpha=2)
    with pytest.raises(InputError, match="mixes PEFT adapters with full checkpoints"):
        Collection.from_paths([str(tmp_path / "m")])


def test_unique_names_and_duplicates(tmp_path: Path, gen: torch.Generator) -> None:
    sd = mlp_like(gen)
    for d in ("a", "b"):
        write_models(tmp_path / d, [sd], prefix="model")
    shutil.copy(tmp_path / "a" / "model0.safetensors", tmp_path / "c.safetensors")
    coll = Collection.from_paths(
        [str(tmp_path / "a" / "model0.safetensors"), str(tmp_path / "b"), str(tmp_path / "c.safetensors")]
    )
    assert coll.names == ["a-model0", "b-model0", "c"]
    assert coll.duplicates() == [["a-model0", "b-model0", "c"]]


def test_model_names_fall_back_to_suffixes() -> None:
    assert model_names([Path("/x/m.safetensors"), Path("/x/m.bin")]) == ["m", "m-2"]


def test_peft_collection_units_are_factored(tmp_path: Path, gen: torch.Generator) -> None:
    for i in range(3):
        write_adapter(
            tmp_path / f"ad{i}",
            {"enc.q": (torch.randn(2, 6, generator=gen), torch.randn(4, 2, generator=gen))},
            r=2,
            alpha=4,
            extra={"classifier.weight": torch.randn(2 + i, 4, generator=gen)},
        )
    coll = Collection.from_paths([str(tmp_path / f"ad{i}") for i in range(3)])
    assert coll.is_peft
    assert coll.is_delta
    assert [(u.name, u.lora) for u in coll.units] == [("enc.q.weight", True)]
    assert "modules_to_save" in coll.private["classifier.weight"].reason
