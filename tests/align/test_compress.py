"""compress --align: the archive stores the permutations, so reconstruct returns the original models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from align._nets import mlp, shuffled, state
from helpers import write_adapter
from weightspace.align import ALIGN_MEMBER, AlignOptions, align, derive_sequential
from weightspace.compress import compress, project, reconstruct
from weightspace.decompose import SharedSubspace
from weightspace.errors import InputError
from weightspace.io import open_source, save_safetensors, write_model
from weightspace.zoo import read_checkpoint


def _write_mlps(d: Path, n: int = 6, dtype: torch.dtype = torch.float32) -> list[dict[str, torch.Tensor]]:
    sds = [{k: v.to(dtype) for k, v in state(mlp(20 + i)).items()} for i in range(n)]
    for i, sd in enumerate(sds):
        save_safetensors(d / f"m{i}.safetensors", sd)
    return sds


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


@pytest.mark.parametrize("symmetries", [("permutation",), ("permutation", "scale")])
def test_reconstruct_returns_the_original_models(tmp_path: Path, symmetries: tuple[str, ...]) -> None:
    (tmp_path / "m").mkdir()
    sds = _write_mlps(tmp_path / "m")
    opts = AlignOptions(symmetries=symmetries, to="mean")
    res = compress([tmp_path / "m"], tmp_path / "a.wsz", n_components=len(sds), align=opts)
    assert res.alignment is not None
    assert sum(m["moved_units"] for m in res.alignment["models"]) > 0
    archive = tmp_path / "a.wsz"
    assert (archive / ALIGN_MEMBER).is_file()
    manifest = json.loads((archive / "manifest.json").read_text())
    assert ALIGN_MEMBER in manifest["members"]
    assert manifest["extras"]["alignment"]["symmetries"] == list(symmetries)
    rebuilt = reconstruct(archive, tmp_path / "back")
    for sd, r in zip(sds, rebuilt, strict=True):
        got, _ = read_checkpoint(r.path)
        assert list(got) == list(sd)
        for k in sd:
            assert got[k].dtype == sd[k].dtype
            assert _rel(got[k], sd[k]) <= 1e-6, k
    # --aligned: the aligned models, as align() writes them.
    direct = align([tmp_path / "m"], out=tmp_path / "direct", symmetries=symmetries, to="mean")
    kept = reconstruct(archive, tmp_path / "aligned", aligned=True)
    for r, m in zip(kept, direct.models, strict=True):
        got, _ = read_checkpoint(r.path)
        want, _ = read_checkpoint(m.output)
        for k in want:
            assert _rel(got[k], want[k]) <= 1e-6, k


def test_layouts_metadata_and_configs_survive(tmp_path: Path) -> None:
    sds = [state(mlp(30 + i)) for i in range(4)]
    for i, sd in enumerate(sds):
        write_model(
            tmp_path / "in" / f"hf{i}",
            "hf-dir",
            sd,
            metadata={"note": f"n{i}"},
            configs={"config.json": json.dumps({"i": i})},
        )
    compress([tmp_path / "in"], tmp_path / "a.wsz", n_components=8, align=True)
    for r in reconstruct(tmp_path / "a.wsz", tmp_path / "back"):
        i = int(r.name[-1])
        src = open_source(r.path)
        assert src.format == "hf-dir"
        assert src.metadata["note"] == f"n{i}"
        assert json.loads(src.configs["config.json"]) == {"i": i}
        for k, v in sds[i].items():
            assert _rel(src.read(k), v) <= 1e-6


def test_task_vectors_with_a_base(tmp_path: Path) -> None:
    base = state(mlp(0))
    spec = derive_sequential({k: tuple(v.shape) for k, v in base.items()})
    g = torch.Generator().manual_seed(3)
    save_safetensors(tmp_path / "base.safetensors", base)
    (tmp_path / "ft").mkdir()
    given = []
    for i in range(5):
        ft = shuffled({k: v + 0.02 * torch.randn(v.shape, generator=g) for k, v in base.items()}, spec, g)
        given.append(ft)
        save_safetensors(tmp_path / "ft" / f"ft{i}.safetensors", ft)
    res = compress(
        [tmp_path / "ft"], tmp_path / "a.wsz", base=tmp_path / "base.safetensors", n_components=5, align=True
    )
    assert res.alignment["reference"] == "<base>"
    for sd, r in zip(given, reconstruct(tmp_path / "a.wsz", tmp_path / "back"), strict=True):
        got, _ = read_checkpoint(r.path)
        for k in sd:
            assert _rel(got[k], sd[k]) <= 1e-6, k
    # Aligned to the base, the task vectors are small again: the k=1 archive holds most of their variance.
    unaligned = compress([tmp_path / "ft"], tmp_path / "u.wsz", base=tmp_path / "base.safetensors", n_components=1)
    aligned = compress(
        [tmp_path / "ft"], tmp_path / "b.wsz", base=tmp_path / "base.safetensors", n_components=1, align=True
    )
    ss_u, ss_a = SharedSubspace.load(tmp_path / "u.wsz"), SharedSubspace.load(tmp_path / "b.wsz")
    norm = {k: float(ss_u.mean_[k].norm()) for k in ss_u.mean_}
    norm_a = {k: float(ss_a.mean_[k].norm()) for k in ss_a.mean_}
    assert aligned.alignment is not None
    assert unaligned.alignment is None
    assert norm_a["0.weight"] < norm["0.weight"]


def test_saved_again_and_added_models_keep_the_alignment(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    sds = _write_mlps(tmp_path / "m", n=5)
    compress([tmp_path / "m"], tmp_path / "a.wsz", n_components=5, align=True)
    SharedSubspace.load(tmp_path / "a.wsz").save(tmp_path / "copy.wsz")
    assert (tmp_path / "copy.wsz" / ALIGN_MEMBER).is_file()
    new = state(mlp(99))
    save_safetensors(tmp_path / "new.safetensors", new)
    project(tmp_path / "copy.wsz", [str(tmp_path / "new.safetensors")], add=True)
    out = {r.name: r for r in reconstruct(tmp_path / "copy.wsz", tmp_path / "back")}
    for i, sd in enumerate(sds):
        got, _ = read_checkpoint(out[f"m{i}"].path)
        assert all(_rel(got[k], sd[k]) <= 1e-6 for k in sd)
    got, _ = read_checkpoint(out["new"].path)  # projected as given (not aligned): rebuilt as given
    assert set(got) == set(new)


def test_lora_adapters_need_no_alignment(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    for i in range(3):
        write_adapter(
            tmp_path / f"a{i}",
            {"layers.0.q_proj": (torch.randn(2, 8, generator=g), torch.randn(8, 2, generator=g))},
            r=2,
            alpha=4,
        )
    with pytest.raises(InputError, match="need no alignment"):
        compress([tmp_path / f"a{i}" for i in range(3)], tmp_path / "x.wsz", align=True)
    with pytest.raises(InputError, match="need no alignment"):
        align([tmp_path / f"a{i}" for i in range(3)])
    assert not (tmp_path / "x.wsz").exists()
