"""Merging checkpoints on disk: equality with the pure core, formats, LoRA in ΔW space, private heads, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import write_adapter
from weightspace.collection import Collection
from weightspace.errors import (
    ArchiveError,
    InputError,
    NonFiniteError,
    ParameterError,
    ShapeMismatchError,
    TensorKeyError,
)
from weightspace.io import open_source
from weightspace.merge import (
    MERGE_METHODS,
    MergeResult,
    list_methods,
    merge,
    merge_deltas,
    unit_seed,
)

ALL_METHODS = MERGE_METHODS.names()
# Non-default parameters per method, so the test also covers parameter plumbing (strings, as from the CLI).
PARAMS: dict[str, dict[str, str]] = {
    "dare": {"p": "0.5", "seed": "7"},
    "dare_ties": {"p": "0.3", "seed": "3"},
    "task_arithmetic": {"lam": "0.4"},
    "ties": {"density": "0.5"},
    "subspace": {"k": "2"},
}


def merged_tensors(models, **kw) -> dict[str, torch.Tensor]:
    """``merge`` in memory: the merged model by file key."""
    result = merge(models, **kw)
    assert result.out is None
    assert result.tensors is not None
    return result.tensors


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def base_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = _g(seed)
    return {
        "embed.weight": torch.randn(7, 6, generator=g),
        "conv.weight": torch.randn(4, 3, 3, 3, generator=g),  # merged in its (4, 27) view
        "conv.bias": torch.randn(4, generator=g),
        "fc1.weight": torch.randn(6, 8, generator=g),
        "fc2.weight": torch.randn(6, 8, generator=g),  # same shape as fc1: DARE masks must still differ
        "fc1.bias": torch.randn(6, generator=g),
        "norm.scale": torch.randn((), generator=g).abs(),  # a 0-d tensor
        "head.weight": torch.randn(5, 6, generator=g),
        "head.bias": torch.randn(5, generator=g),
        "position_ids": torch.arange(7),  # an integer buffer, not a unit
    }


def finetuned(base: dict[str, torch.Tensor], seed: int, n_classes: int) -> dict[str, torch.Tensor]:
    g = _g(100 + seed)
    out = {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base.items() if v.is_floating_point()}
    out["head.weight"] = torch.randn(n_classes, 6, generator=g)
    out["head.bias"] = torch.randn(n_classes, generator=g)
    return out


@pytest.fixture
def zoo(tmp_path: Path) -> dict:
    """A base and three fine-tuned models whose task heads differ in shape (5, 3, 5 classes)."""
    base = base_state()
    save_file(base, tmp_path / "base.safetensors")
    models = [finetuned(base, i, c) for i, c in enumerate((5, 3, 5))]
    paths = []
    for i, sd in enumerate(models):
        p = tmp_path / f"m{i}.safetensors"
        save_file(sd, p)
        paths.append(p)
    return {
        "dir": tmp_path,
        "base": base,
        "models": models,
        "paths": paths,
        "base_path": tmp_path / "base.safetensors",
    }


def view(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[0], math.prod(shape[1:])) if len(shape) >= 2 else (math.prod(shape),)


def expected_full(base: dict, models: list[dict], method: str, params: dict, key: str) -> torch.Tensor:
    """base + merge_deltas(task vectors) for one unit, computed with the pure core only."""
    b = base[key]
    v = view(tuple(b.shape))
    deltas = [(m[key].double() - b.double()).reshape(v) for m in models]
    kwargs = MERGE_METHODS.get(method).resolve_params(params)
    if "seed" in kwargs:
        kwargs["seed"] = unit_seed(kwargs["seed"], key)
    merged = merge_deltas(method, deltas, **kwargs)
    return (b.double().reshape(v) + merged).reshape(b.shape).to(b.dtype)


UNITS = ["embed.weight", "conv.weight", "conv.bias", "fc1.weight", "fc2.weight", "fc1.bias", "norm.scale"]


# ------------------------------------------------------------------------------------------- full checkpoints


@pytest.mark.parametrize("method", ALL_METHODS)
def test_full_merge_equals_base_plus_core_merge(zoo: dict, method: str) -> None:
    params = PARAMS.get(method, {})
    n = MERGE_METHODS.get(method).n_models or len(zoo["paths"])  # slerp merges two
    out = zoo["dir"] / "merged.safetensors"
    summary = merge(zoo["paths"][:n], base=zoo["base_path"], method=method, params=params, out=out)
    got = load_file(out)
    for key in UNITS:
        torch.testing.assert_close(
            got[key], expected_full(zoo["base"], zoo["models"][:n], method, params, key), rtol=0, atol=0
        )
    # Non-unit tensors: the integer buffer and the private heads come from the base, verbatim.
    assert torch.equal(got["position_ids"], zoo["base"]["position_ids"])
    assert torch.equal(got["head.weight"], zoo["base"]["head.weight"])
    assert set(got) == set(zoo["base"])  # every base key is there
    assert isinstance(summary, MergeResult)
    assert summary.out == out
    assert summary.tensors is None
    assert summary.n_units == len(UNITS)
    assert {u.name for u in summary.units} == set(UNITS)


def test_dare_seeds_are_per_unit_and_deterministic(zoo: dict) -> None:
    kw = {"base": zoo["base_path"], "method": "dare", "params": {"p": 0.5, "seed": 11}}
    summary = merge(zoo["paths"], **kw)
    a = summary.tensors
    b = merged_tensors(zoo["paths"], **kw)
    assert all(torch.equal(a[k], b[k]) for k in a)
    seeds = {u.name: u.seed for u in summary.units}
    assert seeds["fc1.weight"] == unit_seed(11, "fc1.weight") != seeds["fc2.weight"]
    # fc1 and fc2 have the same shape; with one seed for both they would share their drop masks, which shows as
    # the same pattern of entries where every model was dropped (merged == base).
    base = zoo["base"]
    kept1, kept2 = a["fc1.weight"] != base["fc1.weight"], a["fc2.weight"] != base["fc2.weight"]
    assert not torch.equal(kept1, kept2)


def test_summary_reports_private_heads_and_comparison_with_mean(zoo: dict) -> None:
    summary = merge(zoo["paths"], base=zoo["base_path"], method="ties")
    heads = {p.key: p for p in summary.not_merged}
    assert set(heads) == {"head.weight", "head.bias"}
    assert heads["head.weight"].reason == "shape differs across models"
    assert heads["head.weight"].shapes == {"m0": (5, 6), "m1": (3, 6), "m2": (5, 6)}
    assert heads["head.weight"].action.startswith("kept the base's tensor")
    assert "position_ids" in summary.copied_from_base
    assert summary.rel_diff_from_mean > 0
    mean_summary = merge(zoo["paths"], base=zoo["base_path"], method="mean")
    assert mean_summary.rel_diff_from_mean == 0.0
    d = json.loads(json.dumps(summary.to_dict()))  # JSON-able
    head = next(p for p in d["not_merged"] if p["key"] == "head.weight")
    assert head["shapes"] == {"m0": [5, 6], "m1": [3, 6], "m2": [5, 6]}
    assert d["format"] == "full"
    assert d["layout"] == "safetensors"
    assert d["out"] is None
    assert d["n_units"] == len(d["units"]) == len(UNITS)
    assert "max_truncation_error" not in d


def test_private_head_left_out_when_base_shape_matches_no_model(tmp_path: Path) -> None:
    base = base_state()
    save_file(base, tmp_path / "base.safetensors")
    paths = []
    for i in range(2):  # both binary tasks: every model's head is (2, 6), the base's is (5, 6)
        save_file(finetuned(base, i, 2), tmp_path / f"m{i}.safetensors")
        paths.append(tmp_path / f"m{i}.safetensors")
    with pytest.raises(
        ShapeMismatchError,
        match=r"base.safetensors: tensor 'head.bias': the base has shape \(5,\) but every model has \(2,\)",
    ):
        merged_tensors(paths, base=tmp_path / "base.safetensors", method="mean")
    summary = merge(paths, base=tmp_path / "base.safetensors", method="mean", private=["head.*"])
    sd = summary.tensors
    assert "head.weight" not in sd
    assert "head.bias" not in sd
    actions = {p.key: p.action for p in summary.not_merged}
    assert actions["head.weight"] == "left out (the base's shape (5, 6) matches no model)"


def test_private_key_missing_from_base_is_left_out(zoo: dict, tmp_path: Path) -> None:
    for p, sd in zip(zoo["paths"], zoo["models"], strict=True):
        save_file({**sd, "extra.weight": torch.ones(2, 2)}, p)
    summary = merge(zoo["paths"], base=zoo["base_path"], method="mean")
    assert "extra.weight" not in summary.tensors
    rec = next(p for p in summary.not_merged if p.key == "extra.weight")
    assert rec.reason == "base lacks this tensor (no task vector)"
    assert rec.action == "left out (the base has no such tensor)"


# ------------------------------------------------------------------------------------------- output formats


def _write_hf_dir(d: Path, sd: dict) -> Path:
    d.mkdir(parents=True)
    save_file(sd, d / "model.safetensors")
    (d / "config.json").write_text(json.dumps({"model_type": "tiny", "hidden_size": 6}))
    return d


def _write_sharded(d: Path, sd: dict) -> Path:
    d.mkdir(parents=True)
    keys = sorted(sd)
    shards = {
        "model-00001-of-00002.safetensors": keys[: len(keys) // 2],
        "model-00002-of-00002.safetensors": keys[len(keys) // 2 :],
    }
    weight_map = {}
    for shard, ks in shards.items():
        save_file({k: sd[k] for k in ks}, d / shard)
        weight_map.update(dict.fromkeys(ks, shard))
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map})
    )
    (d / "config.json").write_text(json.dumps({"model_type": "tiny"}))
    return d


@pytest.mark.parametrize("layout", ["hf-dir", "hf-sharded"])
def test_output_keeps_the_base_layout(zoo: dict, layout: str) -> None:
    writer = _write_hf_dir if layout == "hf-dir" else _write_sharded
    base_dir = writer(zoo["dir"] / "base_dir", zoo["base"])
    out = zoo["dir"] / "merged"
    summary = merge(zoo["paths"], base=base_dir, method="ties", out=out)
    src = open_source(out)
    assert src.format == layout == summary.layout
    assert json.loads((out / "config.json").read_text()) == json.loads((base_dir / "config.json").read_text())
    expected = merged_tensors(zoo["paths"], base=zoo["base_path"], method="ties")
    assert set(src.entries) == set(expected)
    for key, t in expected.items():
        assert torch.equal(src.read(key), t), key
    if layout == "hf-sharded":
        index = json.loads((out / "model.safetensors.index.json").read_text())
        base_index = json.loads((base_dir / "model.safetensors.index.json").read_text())
        assert index["weight_map"] == base_index["weight_map"]
        assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in expected.values())


def test_output_dtype_follows_the_base(zoo: dict) -> None:
    half = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in zoo["base"].items()}
    save_file(half, zoo["dir"] / "base16.safetensors")
    sd = merged_tensors(zoo["paths"], base=zoo["dir"] / "base16.safetensors", method="mean")
    assert sd["fc1.weight"].dtype == torch.bfloat16
    assert sd["position_ids"].dtype == torch.int64


def test_overflow_in_the_base_dtype_is_refused_and_nothing_written(zoo: dict) -> None:
    half = {k: (v.to(torch.float16) if v.is_floating_point() else v) for k, v in zoo["base"].items()}
    save_file(half, zoo["dir"] / "base16.safetensors")
    out = zoo["dir"] / "merged.safetensors"
    with pytest.raises(
        NonFiniteError,
        match=r"base16.safetensors: tensor 'conv.bias': the merged weight is not finite in torch.float16",
    ):
        merge(
            zoo["paths"],
            base=zoo["dir"] / "base16.safetensors",
            method="task_arithmetic",
            params={"lam": 1e6},
            out=out,
        )
    assert not out.exists()
    assert [p.name for p in zoo["dir"].iterdir() if p.name.startswith(".")] == []


# ------------------------------------------------------------------------------------------- bad input


def test_missing_base_is_an_input_error(zoo: dict) -> None:
    with pytest.raises(InputError, match=r"needs the base model they were fine-tuned from; pass --base"):
        merge(zoo["paths"], method="mean", out=zoo["dir"] / "x.safetensors")
    assert not (zoo["dir"] / "x.safetensors").exists()


def test_unknown_method_lists_the_valid_ones(zoo: dict) -> None:
    with pytest.raises(ParameterError, match=r"Unknown merge method 'avg'\. Valid choices: 'dare', 'dare_ties'"):
        merge(zoo["paths"], base=zoo["base_path"], method="avg", out=zoo["dir"] / "x.safetensors")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"density": "1.5"},
            r"The 'density' parameter of merge method 'ties' must be a float in \(0, 1\]. Got 1.5",
        ),
        ({"dens": "0.5"}, r"Unknown parameter 'dens' for merge method 'ties'. Valid parameters: 'density', 'lam'"),
        ({"lam": "abc"}, r"The 'lam' parameter of merge method 'ties' must be a float"),
    ],
)
def test_bad_parameters(zoo: dict, params: dict, message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        merge(zoo["paths"], base=zoo["base_path"], method="ties", params=params, out=zoo["dir"] / "x.safetensors")
    assert not (zoo["dir"] / "x.safetensors").exists()


def test_tensor_parameters_cannot_be_set_for_a_whole_model(zoo: dict) -> None:
    with pytest.raises(ParameterError, match=r"Pass subspace= \(--basis-archive\)"):
        merged_tensors(zoo["paths"], base=zoo["base_path"], method="subspace", params={"basis": torch.eye(2)})


def test_base_of_another_architecture_is_refused(zoo: dict) -> None:
    other = {k: (torch.zeros(9, 9) if k == "fc1.weight" else v) for k, v in zoo["base"].items()}
    save_file(other, zoo["dir"] / "other.safetensors")
    out = zoo["dir"] / "x.safetensors"
    with pytest.raises(
        ShapeMismatchError, match=r"other.safetensors: tensor 'fc1.weight': the base has shape \(9, 9\)"
    ):
        merge(zoo["paths"], base=zoo["dir"] / "other.safetensors", method="mean", out=out)
    assert not out.exists()


def test_output_options_are_checked(zoo: dict) -> None:
    kw = {"base": zoo["base_path"], "method": "mean"}
    with pytest.raises(ParameterError, match=r"does not apply to full output"):
        merged_tensors(zoo["paths"], rank=2, **kw)
    with pytest.raises(InputError, match=r"--format peft needs PEFT LoRA adapters"):
        merged_tensors(zoo["paths"], format="peft", **kw)
    with pytest.raises(
        ParameterError, match=r"The 'format' parameter of merge must be one of 'auto', 'full', 'peft'\. Got 'lora'"
    ):
        merged_tensors(zoo["paths"], format="lora", **kw)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"refusing to write the merged model over one of its inputs"):
        merge(zoo["paths"], out=zoo["base_path"], **kw)
    (zoo["dir"] / "notes").mkdir()
    (zoo["dir"] / "notes" / "a.txt").write_text("keep me")
    base_dir = _write_hf_dir(zoo["dir"] / "base_dir", zoo["base"])
    with pytest.raises(InputError, match=r"did not write it as a merged model .*refusing to replace it"):
        merge(zoo["paths"], base=base_dir, method="mean", out=zoo["dir"] / "notes")
    assert (zoo["dir"] / "notes" / "a.txt").read_text() == "keep me"


def test_failed_merge_leaves_previous_output_untouched(zoo: dict) -> None:
    out = zoo["dir"] / "merged.safetensors"
    merge(zoo["paths"], base=zoo["base_path"], method="mean", out=out)
    before = out.read_bytes()

    def explode(deltas, **_):
        if deltas[0].shape == (6, 8):
            return torch.full(deltas[0].shape, float("nan"), dtype=torch.float64)
        return torch.stack(deltas).mean(0)

    with pytest.raises(NonFiniteError, match=r"tensor 'fc1\.weight'"):
        merge(zoo["paths"], base=zoo["base_path"], method=explode, out=out)
    assert out.read_bytes() == before


# ------------------------------------------------------------------------------------------- archive basis


def test_subspace_with_an_archive_basis(zoo: dict) -> None:
    from weightspace.compress import compress
    from weightspace.decompose import SharedSubspace

    coll = Collection.from_paths(zoo["paths"], base=zoo["base_path"])
    compress(coll, zoo["dir"] / "a.wsz", n_components=2, storage_dtype="float64")
    arc = SharedSubspace.load(zoo["dir"] / "a.wsz")
    summary = merge(zoo["paths"], base=zoo["base_path"], method="subspace", subspace=zoo["dir"] / "a.wsz")
    sd = summary.tensors
    assert summary.basis_archive == str(zoo["dir"] / "a.wsz")
    for key in UNITS:
        b = zoo["base"][key]
        v = view(tuple(b.shape))
        deltas = [(m[key].double() - b.double()).reshape(v) for m in zoo["models"]]
        merged = merge_deltas("subspace", deltas, basis=arc.basis_[key])
        torch.testing.assert_close(
            sd[key], (b.double().reshape(v) + merged).reshape(b.shape).float(), rtol=0, atol=0
        )
    assert {u.basis_k for u in summary.units} <= {1, 2}
    # The fitted basis of the deltas themselves gives a different merge.
    fitted = merged_tensors(zoo["paths"], base=zoo["base_path"], method="subspace", params={"k": 2})
    assert not torch.equal(fitted["fc1.weight"], sd["fc1.weight"])
    # A fitted SharedSubspace in memory gives the same merge as its archive.
    in_memory = merge(zoo["paths"], base=zoo["base_path"], method="subspace", subspace=arc)
    assert all(torch.equal(in_memory.tensors[k], sd[k]) for k in sd)
    with pytest.raises(ParameterError, match=r"--basis-archive\) applies to merge method 'subspace' only"):
        merged_tensors(zoo["paths"], base=zoo["base_path"], method="ties", subspace=zoo["dir"] / "a.wsz")
    with pytest.raises(ParameterError, match=r"must be an int or None with a shared subspace"):
        merged_tensors(
            zoo["paths"],
            base=zoo["base_path"],
            method="subspace",
            params={"k": "0.5"},
            subspace=zoo["dir"] / "a.wsz",
        )


def test_archive_missing_a_unit_is_refused(zoo: dict) -> None:
    from weightspace.compress import compress

    coll = Collection.from_paths(zoo["paths"], base=zoo["base_path"], exclude=["conv.*"])
    compress(coll, zoo["dir"] / "a.wsz", n_components=2)
    with pytest.raises(ArchiveError, match=r"tensor 'conv\.bias': the archive has no basis for this unit"):
        merged_tensors(zoo["paths"], base=zoo["base_path"], method="subspace", subspace=zoo["dir"] / "a.wsz")


# ------------------------------------------------------------------------------------------------- LoRA


MODULES = {"enc.layer.0.q": (6, 5), "enc.layer.0.v": (4, 5)}  # module -> (d_out, d_in)


def random_factors(seed: int, r: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = _g(seed)
    return {
        m: (torch.randn(r, d_in, generator=g), torch.randn(d_out, r, generator=g))
        for m, (d_out, d_in) in MODULES.items()
    }


def rotated(factors: dict, seed: int) -> dict:
    """The same updates in another gauge: (A, B) -> (Rᵀ A, B R) with a random orthogonal R per module."""
    g = _g(seed)
    out = {}
    for m, (a, b) in factors.items():
        q, _ = torch.linalg.qr(torch.randn(a.shape[0], a.shape[0], generator=g, dtype=torch.float64))
        out[m] = ((q.T @ a.double()).float(), (b.double() @ q).float())
    return out


def delta_of(factors: dict, module: str, scaling: float) -> torch.Tensor:
    a, b = factors[module]
    return scaling * b.double() @ a.double()


@pytest.fixture
def adapters(tmp_path: Path) -> dict:
    """Three rank-2 adapters (alpha 4: s = 2) and the same adapters written in a rotated gauge."""
    plain, turned = [], []
    factors = [random_factors(i, 2) for i in range(3)]
    for i, f in enumerate(factors):
        plain.append(write_adapter(tmp_path / "plain" / f"a{i}", f, r=2, alpha=4))
        turned.append(write_adapter(tmp_path / "turned" / f"a{i}", rotated(f, 50 + i), r=2, alpha=4))
    return {"dir": tmp_path, "factors": factors, "plain": plain, "turned": turned, "scaling": 2.0}


def adapter_delta(sd: dict, module: str, scaling: float) -> torch.Tensor:
    a = sd[f"base_model.model.{module}.lora_A.weight"].double()
    b = sd[f"base_model.model.{module}.lora_B.weight"].double()
    return scaling * b @ a


@pytest.mark.parametrize("method", ["mean", "ties", "subspace", "dare", "knots", "tsv"])
def test_gauge_rotated_adapters_merge_to_the_same_delta(adapters: dict, method: str) -> None:
    plain = merge(adapters["plain"], method=method, rank=6)
    a = merged_tensors(adapters["plain"], method=method, rank=6)  # rank 6 = 3 × 2: lossless
    b = merged_tensors(adapters["turned"], method=method, rank=6)
    for module in MODULES:
        deltas = [delta_of(f, module, adapters["scaling"]) for f in adapters["factors"]]
        kwargs = {"seed": unit_seed(0, f"{module}.weight")} if method == "dare" else {}
        expected = merge_deltas(method, deltas, **kwargs)
        s_out = 4 / 6  # the output keeps lora_alpha = 4 with r = 6
        torch.testing.assert_close(adapter_delta(a, module, s_out), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(adapter_delta(b, module, s_out), expected, atol=1e-5, rtol=1e-5)
    assert plain.max_truncation_error < 1e-6
    assert plain.format == plain.layout == "peft"


def test_factor_wise_merging_is_not_gauge_invariant(adapters: dict) -> None:
    """Averaging A and B separately (as popular tools do) depends on the gauge and is not the mean update."""
    module = "enc.layer.0.q"
    s = adapters["scaling"]

    def factor_wise(paths: list[Path]) -> torch.Tensor:
        srcs = [open_source(p) for p in paths]
        bs, as_ = zip(*(src.lora(f"{module}.weight")[:2] for src in srcs), strict=True)
        return s * torch.stack(bs).double().mean(0) @ torch.stack(as_).double().mean(0)

    true_mean = torch.stack([delta_of(f, module, s) for f in adapters["factors"]]).mean(0)
    fw_plain, fw_turned = factor_wise(adapters["plain"]), factor_wise(adapters["turned"])
    assert (fw_plain - fw_turned).norm() > 0.1 * true_mean.norm()
    assert (fw_plain - true_mean).norm() > 0.1 * true_mean.norm()
    ours = merged_tensors(adapters["turned"], method="mean", rank=6)
    torch.testing.assert_close(adapter_delta(ours, module, 4 / 6), true_mean, atol=1e-5, rtol=1e-5)


def test_peft_output_round_trip_and_truncation_error(tmp_path: Path) -> None:
    f0, f1 = random_factors(0, 2), random_factors(1, 3)
    paths = [
        write_adapter(tmp_path / "a0", f0, r=2, alpha=8, lora_dropout=0.1),
        write_adapter(tmp_path / "a1", f1, r=3, alpha=8),
    ]
    out = tmp_path / "merged"
    summary = merge(paths, method="mean", out=out)
    src = open_source(out)
    assert src.format == "peft"
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 3 == summary.rank  # default: the largest source rank
    assert cfg["lora_alpha"] == 8
    assert cfg["lora_dropout"] == 0.1
    worst = 0.0
    for module in MODULES:
        true = (delta_of(f0, module, 8 / 2) + delta_of(f1, module, 8 / 3)) / 2  # mean ΔW
        s = torch.linalg.svdvals(true)
        direct = float(s[3:].square().sum().sqrt() / s.square().sum().sqrt())
        unit = next(u for u in summary.units if u.name == f"{module}.weight")
        assert unit.truncation_error == pytest.approx(direct, rel=1e-9, abs=1e-12)
        assert summary.truncation_errors[unit.name] == unit.truncation_error
        worst = max(worst, direct)
        # What a reader of the adapter sees: s_out · B A is the best rank-3 approximation of the mean ΔW.
        member = Collection.from_paths([out], min_models=1).member(0, f"{module}.weight").full()
        u, sv, vh = torch.linalg.svd(true)
        torch.testing.assert_close(member, (u[:, :3] * sv[:3]) @ vh[:3], atol=1e-5, rtol=1e-5)
    assert summary.max_truncation_error == pytest.approx(worst, rel=1e-9)
    assert summary.max_truncation_error > 0.01  # rank 3 cannot hold a rank-5 mean exactly
    assert summary.truncation_errors[summary.worst_truncation_module] == summary.max_truncation_error
    d = summary.to_dict()
    assert (d["format"], d["rank"], d["adapter_config_from"]) == ("peft", 3, "a0")

    summary1 = merge(paths, method="mean", out=tmp_path / "r1", rank=1)
    assert json.loads((tmp_path / "r1" / "adapter_config.json").read_text())["r"] == 1
    assert summary1.max_truncation_error > summary.max_truncation_error


@pytest.mark.slow
def test_peft_output_loads_with_peft(tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = torch.nn.ModuleDict(
                {
                    "layer": torch.nn.ModuleList(
                        [torch.nn.ModuleDict({"q": torch.nn.Linear(5, 6), "v": torch.nn.Linear(5, 4)})]
                    )
                }
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.enc["layer"][0]["q"](x)

    paths = [write_adapter(tmp_path / f"a{i}", random_factors(i, 2), r=2, alpha=4) for i in range(2)]
    merge(paths, method="ties", out=tmp_path / "merged", rank=4)
    expected = merged_tensors(paths, method="ties", rank=4)
    model = peft.PeftModel.from_pretrained(Tiny(), tmp_path / "merged")
    layer = model.base_model.model.enc["layer"][0]["q"]
    torch.testing.assert_close(
        layer.get_delta_weight("default"),
        adapter_delta(expected, "enc.layer.0.q", 4 / 4).float(),
        atol=1e-5,
        rtol=1e-5,
    )


def test_peft_output_full_into_a_base_with_prefixed_names(tmp_path: Path) -> None:
    # PEFT names are relative to the wrapped model ("bert.encoder..."); the base was saved from the inner model.
    mods = {
        "bert.encoder.layer.0.attention.self.query": (6, 5),
        "bert.encoder.layer.0.attention.self.value": (6, 5),
    }
    factors = []
    for i in range(2):
        g = _g(i)
        factors.append(
            {
                m: (torch.randn(2, d_in, generator=g), torch.randn(d_out, 2, generator=g))
                for m, (d_out, d_in) in mods.items()
            }
        )
    paths = [write_adapter(tmp_path / f"a{i}", f, r=2, alpha=2) for i, f in enumerate(factors)]
    g = _g(9)
    base = {
        "encoder.layer.0.attention.self.query.weight": torch.randn(6, 5, generator=g),
        "encoder.layer.0.attention.self.query.bias": torch.randn(6, generator=g),
        "encoder.layer.0.attention.self.value.weight": torch.randn(6, 5, generator=g),
        "pooler.weight": torch.randn(3, 6, generator=g),
    }
    base_dir = _write_hf_dir(tmp_path / "base", base)
    out = tmp_path / "merged"
    summary = merge(paths, base=base_dir, method="mean", format="full", out=out)
    assert (summary.format, summary.layout) == ("full", "hf-dir")
    assert (out / "config.json").exists()
    got = open_source(out)
    for m in mods:
        key = m.removeprefix("bert.") + ".weight"
        mean = (delta_of(factors[0], m, 1.0) + delta_of(factors[1], m, 1.0)) / 2
        torch.testing.assert_close(got.read(key), (base[key].double() + mean).float(), rtol=0, atol=0)
    for key in ("encoder.layer.0.attention.self.query.bias", "pooler.weight"):
        assert torch.equal(got.read(key), base[key])
    assert {u.base_key for u in summary.units} == {m.removeprefix("bert.") + ".weight" for m in mods}

    with pytest.raises(InputError, match=r"needs the base model"):
        merged_tensors(paths, method="mean", format="full")
    save_file({"decoder.q.weight": torch.zeros(6, 5)}, tmp_path / "wrong.safetensors")
    with pytest.raises(
        TensorKeyError,
        match=r"adapter module weight 'bert.encoder.layer.0.attention.self.query.weight' "
        r"\(from .*a0\) has no counterpart in the base.*base keys look like 'decoder.q.weight'",
    ):
        merge(
            paths,
            base=tmp_path / "wrong.safetensors",
            method="mean",
            format="full",
            out=tmp_path / "w.safetensors",
        )
    assert not (tmp_path / "w.safetensors").exists()
    ambiguous = {
        "query.weight": torch.zeros(6, 5),
        "attention.self.query.weight": torch.zeros(6, 5),
        "encoder.layer.0.attention.self.value.weight": torch.zeros(6, 5),
    }
    save_file(ambiguous, tmp_path / "amb.safetensors")
    with pytest.raises(TensorKeyError, match=r"matches several base keys by dotted suffix"):
        merged_tensors(paths, base=tmp_path / "amb.safetensors", method="mean", format="full")
    save_file(
        {**base, "encoder.layer.0.attention.self.query.weight": torch.zeros(5, 6)}, tmp_path / "bad.safetensors"
    )
    with pytest.raises(ShapeMismatchError, match=r"the base has shape \(5, 6\) but the adapter update"):
        merged_tensors(paths, base=tmp_path / "bad.safetensors", method="mean", format="full")


def test_adapter_full_tensors_are_reported_not_merged(tmp_path: Path) -> None:
    paths = [
        write_adapter(
            tmp_path / f"a{i}",
            random_factors(i, 2),
            r=2,
            alpha=2,
            extra={"classifier.weight": torch.ones(2, 4) * i},
            modules_to_save=["classifier"],
        )
        for i in range(2)
    ]
    summary = merge(paths, method="mean")
    assert not any("classifier" in k for k in summary.tensors)
    rec = summary.not_merged[0]
    assert rec.key == "classifier.weight"
    assert rec.action.startswith("left out")
    merge(paths, method="mean", out=tmp_path / "m")
    assert json.loads((tmp_path / "m" / "adapter_config.json").read_text())["modules_to_save"] is None


# ------------------------------------------------------------------------------------------------- listing


def test_list_methods_has_every_method_with_params_and_reference() -> None:
    methods = {m["name"]: m for m in list_methods()}
    assert set(methods) == set(ALL_METHODS)
    ties = {p["name"]: p for p in methods["ties"]["params"]}
    assert ties["density"]["constraint"] == "a float in (0, 1]"
    assert ties["density"]["default"] == 0.2
    assert methods["subspace"]["reference_url"] == "https://arxiv.org/abs/2512.05117"
    assert not next(p for p in methods["subspace"]["params"] if p["name"] == "basis")["cli"]


def test_fan_in_fan_out_adapters_round_trip(tmp_path: Path) -> None:
    # GPT-2 style Conv1D: the base weight is stored (d_in, d_out) and ΔW = s · (B A)ᵀ.
    paths = [
        write_adapter(tmp_path / f"a{i}", random_factors(i, 2), r=2, alpha=2, fan_in_fan_out=True)
        for i in range(2)
    ]
    out = tmp_path / "merged"
    merge(paths, method="mean", out=out, rank=4)
    merged = Collection.from_paths([out], min_models=1)
    sources = Collection.from_paths(paths)
    for module, (d_out, d_in) in MODULES.items():
        key = f"{module}.weight"
        assert merged.unit(key).shape == (d_in, d_out)
        mean = (sources.member(0, key).full() + sources.member(1, key).full()) / 2
        torch.testing.assert_close(merged.member(0, key).full(), mean, atol=1e-5, rtol=1e-5)


def test_pickled_base_gives_a_pickled_output(zoo: dict) -> None:
    torch.save(zoo["base"], zoo["dir"] / "base.bin")
    out = zoo["dir"] / "merged.bin"
    with pytest.raises(InputError, match=r"allow.pickle"):
        merge(zoo["paths"], base=zoo["dir"] / "base.bin", method="mean", out=out)
    summary = merge(zoo["paths"], base=zoo["dir"] / "base.bin", method="mean", out=out, allow_pickle=True)
    assert summary.layout == "torch"
    got = torch.load(out, weights_only=True)
    expected = merged_tensors(zoo["paths"], base=zoo["base_path"], method="mean")
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


# ---------------------------------------------------------------------------------------------- the entry point


def test_models_are_a_collection_or_paths_normalised_at_the_boundary(zoo: dict) -> None:
    kw = {"method": "ties", "params": {"density": "0.5"}}
    from_paths = merge(zoo["paths"], base=zoo["base_path"], **kw)
    from_strings = merge([str(p) for p in zoo["paths"]], base=str(zoo["base_path"]), **kw)
    coll = Collection.from_paths(zoo["paths"], base=zoo["base_path"])
    from_coll = merge(coll, **kw)
    for other in (from_strings, from_coll):
        assert list(other.tensors) == list(from_paths.tensors)
        assert all(torch.equal(other.tensors[k], from_paths.tensors[k]) for k in from_paths.tensors)
        assert other.units == from_paths.units
    single = merge(zoo["paths"][0], base=zoo["base_path"], method="mean")  # one path is a collection of one
    assert single.models == ("m0",)
    with pytest.raises(ParameterError, match=r"base, private and exclude belong to the Collection"):
        merge(coll, base=zoo["base_path"], method="mean")


def test_result_is_frozen_and_its_dict_is_the_json_summary(zoo: dict) -> None:
    out = zoo["dir"] / "merged.safetensors"
    result = merge(zoo["paths"], base=zoo["base_path"], method="dare", params={"seed": "5"}, out=out)
    with pytest.raises(AttributeError):
        result.method = "mean"  # type: ignore[misc]
    d = result.to_dict()
    assert list(d) == [
        "method",
        "params",
        "n_models",
        "models",
        "model_paths",
        "input",
        "format",
        "layout",
        "out",
        "base",
        "basis_archive",
        "n_units",
        "units",
        "rel_diff_from_mean",
        "not_merged",
        "excluded",
        "copied_from_base",
        "wall_s",
        "weights",
        "dtype",
    ]
    assert d["params"] == {"p": 0.9, "lam": 1.0, "seed": 5}
    assert (d["input"], d["format"], d["layout"], d["out"]) == ("full", "full", "safetensors", str(out))
    assert d["base"] == str(zoo["base_path"])
    assert d["units"][0]["seed"] == unit_seed(5, d["units"][0]["name"])
    assert "truncation_error" not in d["units"][0]
    assert result.truncation_errors == {}
    json.dumps(d)


# ------------------------------------------------------- weights, raw-weight merges (no base), output dtype


def test_slerp_and_linear_merge_raw_weights_without_a_base(zoo: dict) -> None:
    from merge.test_methods import mk_linear, mk_slerp

    a, b = zoo["models"][0], zoo["models"][2]  # same head shape (5 classes): nothing private
    r = merge([zoo["paths"][0], zoo["paths"][2]], method="slerp", params={"t": "0.3"})
    assert r.base is None
    for key, got in r.tensors.items():
        expected = mk_slerp(0.3, a[key].double().numpy().reshape(-1), b[key].double().numpy().reshape(-1))
        torch.testing.assert_close(
            got, torch.from_numpy(expected).reshape(a[key].shape).float(), rtol=0, atol=1e-6
        )
    w = [0.25, 0.75]
    r = merge([zoo["paths"][0], zoo["paths"][2]], method="linear", weights=w)
    assert r.weights == (0.25, 0.75)
    for key, got in r.tensors.items():
        expected = mk_linear([a[key].double().numpy(), b[key].double().numpy()], w)
        torch.testing.assert_close(got, torch.tensor(expected).float(), rtol=0, atol=1e-6)


def test_raw_merge_keeps_the_first_models_private_tensors(zoo: dict) -> None:
    r = merge(zoo["paths"][:2], method="linear")  # heads are 5- and 3-class: private
    assert torch.equal(r.tensors["head.weight"], zoo["models"][0]["head.weight"])
    assert {p.key for p in r.not_merged} == {"head.weight", "head.bias"}
    assert all("first model" in p.action for p in r.not_merged)


def test_methods_that_need_a_base_say_so_and_name_the_base_free_ones(zoo: dict) -> None:
    with pytest.raises(
        InputError, match=r"pass --base BASE \(methods that merge raw weights without a base: linear"
    ):
        merge(zoo["paths"], method="ties")


def test_weights_reach_the_method_and_are_checked(zoo: dict) -> None:
    w = [0.5, 2.0, 1.0]
    got = merge(zoo["paths"], base=zoo["base_path"], method="task_arithmetic", weights=w).tensors
    b = zoo["base"]["fc1.weight"].double()
    expected = b + sum(wi * (m["fc1.weight"].double() - b) for wi, m in zip(w, zoo["models"], strict=True))
    torch.testing.assert_close(got["fc1.weight"], expected.float(), rtol=0, atol=1e-6)
    with pytest.raises(ParameterError, match="--weights has 2 value"):
        merge(zoo["paths"], base=zoo["base_path"], method="ties", weights=[1.0, 2.0])
    with pytest.raises(ParameterError, match="'knots' takes no per-model weights"):
        merge(zoo["paths"], base=zoo["base_path"], method="knots", weights=[1.0, 2.0, 3.0])


def test_output_dtype(zoo: dict) -> None:
    out = zoo["dir"] / "bf16.safetensors"
    r = merge(zoo["paths"], base=zoo["base_path"], method="mean", dtype="bfloat16", out=out)
    got = load_file(out)
    assert r.dtype == "bfloat16"
    assert got["fc1.weight"].dtype == torch.bfloat16
    assert got["position_ids"].dtype == zoo["base"]["position_ids"].dtype  # integer buffers keep theirs
    with pytest.raises(ParameterError, match="'dtype' parameter of merge"):
        merge(zoo["paths"], base=zoo["base_path"], method="mean", dtype="int8")
