"""Coefficient-only adapters: what trains, exactness at zero, round trips, merging, counts, HOSVD, errors."""

from __future__ import annotations

import copy
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adapt._builders import Tiny, TinyNet
from weightspace.adapt import (
    KCapWarning,
    SubspaceAdapterConfig,
    SubspaceConv,
    SubspaceLinear,
    adapter_layers,
    inject,
    load,
    merge_into_base,
    save,
    trainable_parameters,
    unload,
)
from weightspace.decompose import Parametrisation, SharedSubspace
from weightspace.errors import ArchiveError, InputError, ParameterError, ShapeMismatchError, TensorKeyError

X = torch.randn(5, 2, 5, generator=torch.Generator().manual_seed(1))  # (batch, channels, length) for TinyNet


def _cfg(archive: Path, **kw: object) -> SubspaceAdapterConfig:
    kw.setdefault("modules_to_save", ["head"])
    return SubspaceAdapterConfig(archive, **kw)  # type: ignore[arg-type]


def _randomise(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            for role in layer.units:
                coef = getattr(layer, f"{role}_coef")
                coef.copy_(torch.randn(coef.shape, generator=g, dtype=torch.float64).to(coef.dtype))


# ------------------------------------------------------------------------------------------------ what trains
@pytest.mark.parametrize("archive", ["pca", "hosvd"])
def test_only_coefficients_and_heads_require_grad(tiny: Tiny, archive: str) -> None:
    model = inject(tiny.model(), _cfg(getattr(tiny, archive), variant=archive))
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == [
        "conv.bias_coef",
        "conv.weight_coef",
        "fc.bias_coef",
        "fc.weight_coef",
        "head.bias",
        "head.weight",
    ]
    for layer in adapter_layers(model).values():
        # The basis and mean are buffers, never parameters.
        assert {n for n, _ in layer.named_parameters(recurse=False)} <= {"weight_coef", "bias_coef"}
        assert layer.weight_mean is not None
        assert not layer.weight_mean.requires_grad


@pytest.mark.parametrize("archive", ["pca", "hosvd"])
def test_zero_coefficients_without_mean_reproduce_the_base_exactly(tiny: Tiny, archive: str) -> None:
    ref = tiny.model()
    model = inject(tiny.model(), _cfg(getattr(tiny, archive), variant=archive, use_mean=False, init="zero"))
    assert torch.equal(model(X), ref(X))


def test_mean_init_starts_at_the_mean_task_vector(tiny: Tiny) -> None:
    """Centered archive at full rank: W0 + μ + c̄V = W0 + mean_i ΔW_i (c̄ = 0 up to rounding)."""
    model = inject(tiny.model(), _cfg(tiny.pca, init="mean", use_mean=True, k=None))
    mean_delta = torch.stack([d["fc.weight"] for d in tiny.deltas]).mean(0)
    got = model.fc.effective("weight") - tiny.base["fc.weight"]
    assert torch.allclose(got, mean_delta, atol=1e-6)
    assert float(model.fc.weight_coef.detach().abs().max()) < 1e-6  # c̄ of a centered archive


def test_mean_init_uses_the_archive_mean_coefficients(tiny: Tiny) -> None:
    arch = SharedSubspace.load(tiny.pca)
    model = inject(tiny.model(), _cfg(tiny.pca, init="mean", k=2))
    want = arch.unit("fc.weight").coefficients.mean(0)[:2].float()
    assert torch.equal(model.fc.weight_coef.detach(), want)


# ------------------------------------------------------------------------------------------------ counts
def test_trainable_parameter_counts_are_exact(tiny: Tiny) -> None:
    model = inject(tiny.model(), _cfg(tiny.pca, k=2))
    counts = trainable_parameters(model)
    assert counts["per_unit"] == {"conv.weight": 2, "conv.bias": 2, "fc.weight": 2, "fc.bias": 2}
    assert counts["coefficients"] == 8
    assert counts["modules_to_save"] == 6 * 3 + 3  # head weight + bias
    assert counts["other"] == 0
    assert counts["trainable"] == 8 + 21
    assert counts["total"] == counts["trainable"] + counts["frozen"]
    assert counts["frozen"] == sum(p.numel() for k, p in tiny.base.items() if not k.startswith("head"))


def test_hosvd_counts_are_k1_times_k2(tiny: Tiny) -> None:
    model = inject(tiny.model(), _cfg(tiny.hosvd, variant="hosvd", k=(2, 1)))
    per = trainable_parameters(model)["per_unit"]
    assert per["fc.weight"] == 2
    assert per["conv.weight"] == 2
    assert per["fc.bias"] == 2  # vector units are PCA; a pair caps them at its first entry


def test_bias_frozen_option(tiny: Tiny) -> None:
    model = inject(tiny.model(), _cfg(tiny.pca, k=3, bias="frozen"))
    assert trainable_parameters(model)["per_unit"] == {"conv.weight": 3, "fc.weight": 3}
    assert "bias" not in model.fc.units
    assert not hasattr(model.fc, "bias_coef")


# ------------------------------------------------------------------------------------------------ HOSVD
def test_hosvd_shapes_and_forward(tiny: Tiny) -> None:
    model = inject(tiny.model(), _cfg(tiny.hosvd, variant="hosvd", use_mean=True))
    fc, conv = model.fc, model.conv
    assert tuple(fc.weight_u.shape) == (6, 3)
    assert tuple(fc.weight_v.shape) == (12, 2)
    assert tuple(fc.weight_coef.shape) == (3, 2)
    assert tuple(conv.weight_u.shape) == (4, 3)
    assert tuple(conv.weight_v.shape) == (6, 2)
    _randomise(model)
    u, v, c = fc.weight_u, fc.weight_v, fc.weight_coef
    want = tiny.base["fc.weight"] + fc.weight_mean + u @ c @ v.T
    assert torch.allclose(fc.effective("weight"), want, atol=1e-6)
    conv_want = tiny.base["conv.weight"] + (
        conv.weight_mean + conv.weight_u @ conv.weight_coef @ conv.weight_v.T
    ).reshape(4, 2, 3)
    assert torch.allclose(conv.effective("weight"), conv_want, atol=1e-6)
    assert model(X).shape == (5, 3)


def test_hosvd_low_rank_path_matches_dense() -> None:
    g = torch.Generator().manual_seed(0)
    base = nn.Linear(40, 30)
    u, _ = torch.linalg.qr(torch.randn(30, 2, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(40, 2, generator=g, dtype=torch.float64))
    init = torch.randn(2, 2, generator=g, dtype=torch.float64)
    mean = torch.randn(30, 40, generator=g, dtype=torch.float64)
    layer = SubspaceLinear(base)
    layer.update_layer(Parametrisation("w.weight", "hosvd", (30, 40), {"u": u, "v": v}, mean, init))
    x = torch.randn(3, 40, generator=g)  # few tokens: the low-rank route pays
    assert layer.units["weight"].fit_class.lowrank_apply(x, layer._pieces("weight"), layer.weight_coef) is not None
    dense = F.linear(x, layer.effective("weight"), base.bias)
    assert torch.allclose(layer(x), dense, atol=1e-5)
    layer(x).sum().backward()
    assert layer.weight_coef.grad is not None
    assert float(layer.weight_coef.grad.abs().sum()) > 0


# ------------------------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("archive", ["pca", "hosvd"])
def test_gradient_reaches_the_coefficients_only(tiny: Tiny, archive: str) -> None:
    model = inject(tiny.model(), _cfg(getattr(tiny, archive), variant=archive))
    F.cross_entropy(model(X), torch.tensor([0, 1, 2, 0, 1])).backward()
    for layer in adapter_layers(model).values():
        for role in layer.units:
            grad = getattr(layer, f"{role}_coef").grad
            assert grad is not None
            assert float(grad.abs().sum()) > 0
        assert layer.base_layer.weight.grad is None
    assert model.head.weight.grad is not None


def test_a_training_step_moves_only_coefficients_and_head(tiny: Tiny) -> None:
    model = inject(tiny.model(), _cfg(tiny.pca))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    F.cross_entropy(model(X), torch.tensor([0, 1, 2, 0, 1])).backward()
    opt.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {
        "conv.weight_coef",
        "conv.bias_coef",
        "fc.weight_coef",
        "fc.bias_coef",
        "head.weight",
        "head.bias",
    }


# ------------------------------------------------------------------------------------------------ save / load
@pytest.mark.parametrize("save_basis", [True, False])
@pytest.mark.parametrize("archive", ["pca", "hosvd"])
def test_save_load_round_trip_gives_identical_outputs(
    tiny: Tiny, tmp_path: Path, archive: str, save_basis: bool
) -> None:
    model = inject(tiny.model(), _cfg(getattr(tiny, archive), variant=archive, save_basis=save_basis, k=2))
    _randomise(model)
    with torch.no_grad():
        model.head.weight.add_(1.0)
    y = model(X)
    save(model, tmp_path / "ad")
    doc = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert doc["peft_type"] == "WEIGHTSPACE_SUBSPACE"
    assert doc["save_basis"] is save_basis
    assert len(doc["archive_sha256"]) == 64
    fresh = load(tiny.model(), tmp_path / "ad")
    assert torch.equal(fresh(X), y)
    assert trainable_parameters(fresh)["coefficients"] == trainable_parameters(model)["coefficients"]


def test_saved_basis_needs_no_archive_and_referenced_basis_does(tiny: Tiny, tmp_path: Path) -> None:
    arch = tmp_path / "copy.wsz"
    shutil.copytree(tiny.pca, arch)
    for save_basis in (True, False):
        model = inject(tiny.model(), _cfg(arch, save_basis=save_basis))
        _randomise(model, seed=3)
        save(model, tmp_path / f"ad-{save_basis}")
    y = model(X)
    shutil.rmtree(arch)
    assert torch.equal(load(tiny.model(), tmp_path / "ad-True")(X), y)
    with pytest.raises(ArchiveError, match="no longer exists"):
        load(tiny.model(), tmp_path / "ad-False")


def test_load_refuses_an_archive_that_changed(tiny: Tiny, tmp_path: Path) -> None:
    arch = tmp_path / "copy.wsz"
    shutil.copytree(tiny.pca, arch)
    model = inject(tiny.model(), _cfg(arch))
    save(model, tmp_path / "ad")
    manifest = json.loads((arch / "manifest.json").read_text())
    manifest["created_by"] = "someone else"
    (arch / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArchiveError, match="archive changed since the adapter was saved"):
        load(tiny.model(), tmp_path / "ad")


def test_load_errors(tiny: Tiny, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"adapter_config\.json is missing"):
        load(tiny.model(), tmp_path)
    model = inject(tiny.model(), _cfg(tiny.pca))
    save(model, tmp_path / "ad")
    with pytest.raises(ParameterError, match="already carries"):
        load(model, tmp_path / "ad")


# ------------------------------------------------------------------------------------------------ merge
@pytest.mark.parametrize("archive", ["pca", "hosvd", "raw"])
def test_merge_into_base_equals_the_adapter_forward(tiny: Tiny, archive: str) -> None:
    variant = "hosvd" if archive == "hosvd" else "pca"
    model = inject(tiny.model(), _cfg(getattr(tiny, archive), variant=variant, init="mean"))
    _randomise(model, seed=5)
    with torch.no_grad():
        y = model(X)
    merged = merge_into_base(model)
    assert type(merged.fc) is nn.Linear
    assert type(merged.conv) is nn.Conv1d
    assert not adapter_layers(merged)
    assert all(p.requires_grad for p in merged.parameters())  # original flags restored
    assert torch.allclose(merged(X), y, atol=1e-6)


def test_merge_unmerge_is_exact_and_unload_restores(tiny: Tiny) -> None:
    model = inject(tiny.model(), _cfg(tiny.pca))
    _randomise(model)
    w0 = model.fc.base_layer.weight.detach().clone()
    y = model(X)
    model.fc.merge()
    assert model.fc.merged
    assert torch.allclose(model(X), y, atol=1e-6)
    model.fc.unmerge()
    assert torch.equal(model.fc.base_layer.weight, w0)
    plain = unload(model)
    assert torch.equal(plain(X), tiny.model()(X))


def test_get_delta_weight_is_the_pca_combination(tiny: Tiny) -> None:
    arch = SharedSubspace.load(tiny.pca).unit("fc.weight")
    model = inject(tiny.model(), _cfg(tiny.pca, k=3, use_mean=True))
    _randomise(model)
    c = model.fc.weight_coef.detach().double()
    want = arch.mean() + (c @ arch.basis()[:3]).reshape(6, 12)
    assert torch.allclose(model.fc.get_delta_weight().double(), want, atol=1e-5)


def test_raw_archive_replaces_the_model_weights(tiny: Tiny) -> None:
    """No base: W = μ + Σ c V whatever the model held before."""
    arch = SharedSubspace.load(tiny.raw).unit("fc.weight")
    scrambled = TinyNet()  # a different init: must not matter for adapted layers
    model = inject(scrambled, _cfg(tiny.raw, k=2))
    _randomise(model)
    c = model.fc.weight_coef.detach().double()
    want = arch.mean() + (c @ arch.basis()[:2]).reshape(6, 12)
    assert torch.allclose(model.fc.effective("weight").double(), want, atol=1e-5)
    assert torch.allclose(model.fc.base_layer.weight + model.fc.get_delta_weight(), model.fc.effective("weight"))


def test_raw_archive_without_mean_warns(tiny: Tiny) -> None:
    with pytest.warns(UserWarning, match="raw-weight archive"):
        inject(tiny.model(), _cfg(tiny.raw, use_mean=False))


# ------------------------------------------------------------------------------------------------ errors
def test_no_matching_unit_names_module_and_unit(tiny: Tiny) -> None:
    with pytest.raises(TensorKeyError, match=r"target module 'head' has no matching unit.*'head\.weight'"):
        inject(tiny.model(), SubspaceAdapterConfig(tiny.pca, target_modules=["head"]))


def test_shape_mismatch_names_module_unit_and_both_shapes(tiny: Tiny) -> None:
    model = tiny.model()
    model.fc = nn.Linear(12, 7)
    with pytest.raises(
        ShapeMismatchError,
        match=r"module 'fc' weight has shape \(7, 12\) but archive unit 'fc\.weight' has shape \(6, 12\)",
    ):
        inject(model, _cfg(tiny.pca, target_modules=["fc"]))
    assert type(model.fc) is nn.Linear  # nothing was replaced


def test_unsupported_module_and_conflicts(tiny: Tiny) -> None:
    with pytest.raises(ParameterError, match="target module 'norm' is a LayerNorm"):
        inject(tiny.model(), SubspaceAdapterConfig(tiny.pca, target_modules=["norm"]))
    with pytest.raises(InputError, match="match no Linear/Conv module"):
        inject(tiny.model(), SubspaceAdapterConfig(tiny.pca, target_modules=["nothing*"]))
    with pytest.raises(ParameterError, match="both target_modules and modules_to_save"):
        inject(tiny.model(), SubspaceAdapterConfig(tiny.pca, target_modules=["fc"], modules_to_save=["fc"]))
    with pytest.raises(InputError, match="modules_to_save pattern 'heads' matches no module"):
        inject(tiny.model(), SubspaceAdapterConfig(tiny.pca, modules_to_save=["heads"]))


def test_variant_must_match_the_archive(tiny: Tiny) -> None:
    with pytest.raises(ParameterError, match="fitted with pca, but the adapter variant is 'hosvd'"):
        inject(tiny.model(), _cfg(tiny.pca, variant="hosvd"))


def test_double_inject_and_missing_archive(tiny: Tiny, tmp_path: Path) -> None:
    model = inject(tiny.model(), _cfg(tiny.pca))
    with pytest.raises(ParameterError, match="already carries a subspace adapter"):
        inject(model, _cfg(tiny.pca))
    with pytest.raises(ArchiveError, match="not an archive directory"):
        inject(tiny.model(), _cfg(tmp_path / "missing.wsz"))


def test_k_above_the_archive_is_capped_with_a_warning(tiny: Tiny) -> None:
    with pytest.warns(KCapWarning) as rec:
        model = inject(tiny.model(), _cfg(tiny.pca, k=9))
    messages = sorted(str(w.message) for w in rec)
    assert "unit 'fc.weight': requested k=9 but the archive stores 4; using 4" in messages
    assert len(messages) == 4  # one per capped unit (2 weights + 2 biases)
    assert trainable_parameters(model)["per_unit"]["fc.weight"] == 4
    with pytest.raises(ParameterError, match="requested k=9 but the archive stores 4; lower k"):
        inject(tiny.model(), _cfg(tiny.pca, k=9, strict_k=True))


def test_k_per_module_mapping(tiny: Tiny) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = inject(tiny.model(), _cfg(tiny.pca, k={"fc": 1, "conv.bias": 0}))
    assert trainable_parameters(model)["per_unit"] == {
        "conv.weight": 4,
        "conv.bias": 0,
        "fc.weight": 1,
        "fc.bias": 1,
    }


# ------------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"init": "ones"},
            "The 'init' parameter of SubspaceAdapterConfig must be one of 'zero', 'mean'. Got 'ones'",
        ),
        ({"variant": "svd"}, "The 'variant' parameter"),
        ({"k": -1}, "The 'k' parameter of SubspaceAdapterConfig must be None, an int >= 0"),
        ({"k": (2, 2), "variant": "pca"}, "may only be a .k1, k2. pair for a two-mode decomposition"),
        ({"k": {"fc": "x"}}, "must map str patterns"),
        ({"target_modules": "fc"}, "must be a sequence of str patterns"),
        ({"target_modules": []}, "must be None .every matching unit. or a non-empty"),
        ({"use_mean": 1}, "The 'use_mean' parameter of SubspaceAdapterConfig must be a bool"),
    ],
)
def test_config_validation_messages(kwargs: dict, message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        SubspaceAdapterConfig("a.wsz", **kwargs)


def test_config_round_trips_through_json() -> None:
    cfg = SubspaceAdapterConfig("a.wsz", k={"fc": (2, 3)}, variant="hosvd", modules_to_save=["head"], init="mean")
    assert SubspaceAdapterConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


# ------------------------------------------------------------------------------------------------ layers
def test_conv2d_layer_reshapes_the_unit() -> None:
    g = torch.Generator().manual_seed(0)
    base = nn.Conv2d(2, 3, 2)
    basis = torch.randn(2, 3 * 2 * 2 * 2, generator=g, dtype=torch.float64)
    layer = SubspaceConv(base)
    layer.update_layer(Parametrisation("c.weight", "pca", (3, 2, 2, 2), {"basis": basis}, None, torch.ones(2)))
    x = torch.randn(1, 2, 4, 4, generator=g)
    want = F.conv2d(x, base.weight + basis.sum(0).float().reshape(3, 2, 2, 2), base.bias)
    assert torch.allclose(layer(x), want, atol=1e-5)


def test_layer_refuses_a_unit_of_another_shape() -> None:
    layer = SubspaceLinear(nn.Linear(3, 2))
    with pytest.raises(ShapeMismatchError, match=r"unit shape \(3, 3\).*layer's weight shape \(2, 3\)"):
        layer.update_layer(Parametrisation("w", "pca", (3, 3), {"basis": torch.zeros(1, 9)}, None, torch.zeros(1)))


def test_half_precision_base_keeps_float32_coefficients(tiny: Tiny) -> None:
    model = copy.deepcopy(tiny.model()).to(torch.bfloat16)
    model = inject(model, _cfg(tiny.pca, use_mean=False))
    assert model.fc.weight_coef.dtype == torch.float32
    assert torch.equal(model(X.bfloat16()), tiny.model().to(torch.bfloat16)(X.bfloat16()))
