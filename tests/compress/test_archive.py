"""Archive round trips in every source format, LoRA gauge invariance, project/--add, verification."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from helpers import mlp_like, write_adapter, write_models
from weightspace.collection import Collection
from weightspace.compress import compress, project, reconstruct
from weightspace.decompose import Archive
from weightspace.errors import ArchiveError, ShapeMismatchError
from weightspace.io import open_source


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def _load(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


@pytest.mark.parametrize("method", ["pca", "hosvd"])
def test_full_rank_round_trip_restores_keys_dtypes_metadata(
    tmp_path: Path, gen: torch.Generator, method: str
) -> None:
    models = []
    for i in range(6):
        sd = mlp_like(gen)
        sd["fc2.weight"] = sd["fc2.weight"].bfloat16()
        sd["head.weight"] = torch.randn(2 + i % 3, 6, generator=gen)  # private
        models.append(sd)
    paths = write_models(tmp_path / "m", models)
    save_file(_load(paths[0]), paths[0], metadata={"task": "zero"})
    coll = Collection.from_paths([str(tmp_path / "m")])
    n_comp = 5 if method == "pca" else (12, 12)  # every mode at full rank
    summary = compress(coll, tmp_path / "a.wsz", method=method, n_components=n_comp, storage_dtype="float64")
    assert summary.n_private == 1
    reconstruct(tmp_path / "a.wsz", tmp_path / "out")
    for i, sd in enumerate(models):
        got_path = tmp_path / "out" / f"m{i}.safetensors"
        got = _load(got_path)
        assert list(got) == list(_load(paths[i]))  # key order of the source file
        for k, v in sd.items():
            assert got[k].dtype == v.dtype
            assert _rel(got[k], v) <= (1e-2 if v.dtype == torch.bfloat16 else 1e-6), k
    with safe_open(tmp_path / "out" / "m0.safetensors", "pt") as f:
        assert f.metadata()["task"] == "zero"


def test_float32_storage_meets_the_1e6_bound(tmp_path: Path, gen: torch.Generator) -> None:
    models = [mlp_like(gen) for _ in range(9)]
    write_models(tmp_path / "m", models)
    coll = Collection.from_paths([str(tmp_path / "m")])
    compress(coll, tmp_path / "a.wsz", n_components=8)  # N − 1 with centering: lossless up to storage precision
    reconstruct(tmp_path / "a.wsz", tmp_path / "out")
    worst = max(
        _rel(_load(tmp_path / "out" / f"m{i}.safetensors")[k], v)
        for i, sd in enumerate(models)
        for k, v in sd.items()
    )
    assert worst <= 1e-6


def test_hf_dir_and_sharded_round_trip(tmp_path: Path, gen: torch.Generator) -> None:
    for i in range(3):
        d = tmp_path / "hf" / f"model{i}"
        d.mkdir(parents=True)
        sd = mlp_like(gen)
        save_file({k: sd[k] for k in ("fc1.weight", "fc1.bias")}, d / "model-00001-of-00002.safetensors")
        save_file({k: sd[k] for k in ("fc2.weight", "fc2.bias")}, d / "model-00002-of-00002.safetensors")
        wm = {k: f"model-0000{1 if k.startswith('fc1') else 2}-of-00002.safetensors" for k in sd}
        (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
        (d / "config.json").write_text(json.dumps({"model_type": "toy", "id": i}))
    coll = Collection.from_paths([str(tmp_path / "hf")])
    compress(coll, tmp_path / "a.wsz", n_components=2)
    reconstruct(tmp_path / "a.wsz", tmp_path / "out")
    src = open_source(tmp_path / "out" / "model1")
    assert src.format == "hf-sharded"
    assert json.loads(src.configs["config.json"])["id"] == 1
    assert sorted(p.name for p in (tmp_path / "out" / "model1").iterdir()) == [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ]


def _rotated_adapters(root: Path, n: int, r: int = 8, seed: int = 0) -> list[Path]:
    """Adapters whose ΔW lie in one 4-dim span, with factors hidden behind random rotations (B R, Rᵀ A)."""
    g = torch.Generator().manual_seed(seed)
    d_out, d_in = 24, 20
    b0 = torch.randn(d_out, 4, generator=g, dtype=torch.float64)
    a0 = torch.randn(4, d_in, generator=g, dtype=torch.float64)
    paths = []
    for i in range(n):
        c = torch.randn(4, generator=g, dtype=torch.float64)
        b = torch.zeros(d_out, r, dtype=torch.float64)
        a = torch.zeros(r, d_in, dtype=torch.float64)
        b[:, :4] = b0 * c  # ΔW = s · B A = Σ_j c_j b_j a_jᵀ (s = 1)
        a[:4] = a0
        rot, _ = torch.linalg.qr(torch.randn(r, r, generator=g, dtype=torch.float64))
        paths.append(
            write_adapter(root / f"ad{i}", {"enc.q": ((rot.T @ a).float(), (b @ rot).float())}, r=r, alpha=r)
        )
    return paths


def test_lora_gauge_rotations_do_not_hide_the_shared_span(tmp_path: Path) -> None:
    paths = _rotated_adapters(tmp_path, 10)
    coll = Collection.from_paths([str(p) for p in paths[:9]])
    compress(coll, tmp_path / "a.wsz", n_components=4)
    held_out = project(tmp_path / "a.wsz", [str(paths[9])]).models[0]
    assert held_out.mean_plus_basis <= 1e-6
    assert held_out.mean_only > 0.1  # the mean alone does not explain it

    # The same held-out test factor-wise (PCA of flattened [B; A] factors) fails: rotations scramble factors.
    def factors(p: Path) -> torch.Tensor:
        t = _load(p / "adapter_model.safetensors")
        return torch.cat(
            [
                t["base_model.model.enc.q.lora_A.weight"].reshape(-1),
                t["base_model.model.enc.q.lora_B.weight"].reshape(-1),
            ]
        ).double()

    x = torch.stack([factors(p) for p in paths[:9]])
    mu = x.mean(0)
    v = torch.linalg.svd(x - mu, full_matrices=False).Vh[:4]
    h = factors(paths[9])
    err = float((h - mu - (h - mu) @ v.T @ v).norm() / h.norm())
    assert err > 0.3


def test_peft_reconstruct_keeps_rank_and_alpha(tmp_path: Path) -> None:
    paths = _rotated_adapters(tmp_path, 5)
    coll = Collection.from_paths([str(p) for p in paths])
    compress(coll, tmp_path / "a.wsz", n_components=4)
    out = reconstruct(tmp_path / "a.wsz", tmp_path / "out")
    assert max(r.max_lora_truncation_error for r in out) < 1e-6
    for p in paths:
        src, back = open_source(p), open_source(tmp_path / "out" / p.name)
        assert back.adapter_config["lora_alpha"] == src.adapter_config["lora_alpha"]
        b, a, mod = back.lora("enc.q.weight")
        assert a.shape[0] == mod.rank == 8
        b0, a0, mod0 = src.lora("enc.q.weight")
        assert _rel(mod.scaling * (b.double() @ a.double()), mod0.scaling * (b0.double() @ a0.double())) < 1e-6


def test_project_add_then_reconstruct(tmp_path: Path, gen: torch.Generator) -> None:
    base = mlp_like(gen)
    save_file(base, tmp_path / "base.safetensors")
    write_models(
        tmp_path / "m",
        [{k: v + 0.1 * torch.randn(v.shape, generator=gen) for k, v in base.items()} for _ in range(5)],
    )
    compress(
        Collection.from_paths([str(tmp_path / "m")], base=tmp_path / "base.safetensors"),
        tmp_path / "a.wsz",
        n_components=4,
    )
    new = {k: v + 0.1 * torch.randn(v.shape, generator=gen) for k, v in base.items()}
    save_file(new, tmp_path / "new.safetensors")
    res = project(tmp_path / "a.wsz", [str(tmp_path / "new.safetensors")], add=True)
    assert res.models[0].mean_plus_basis <= res.models[0].mean_only + 1e-12
    arc = Archive(tmp_path / "a.wsz")
    assert arc.model_names[-1] == "new"
    assert arc.manifest.models[-1].added
    reconstruct(tmp_path / "a.wsz", tmp_path / "out", ["new"])
    got = _load(tmp_path / "out" / "new.safetensors")
    delta_err = (sum(float(((got[k] - new[k]).double() ** 2).sum()) for k in new)) ** 0.5
    delta_norm = (sum(float(((new[k] - base[k]).double() ** 2).sum()) for k in new)) ** 0.5
    assert abs(delta_err / delta_norm - res.models[0].mean_plus_basis) < 1e-5


def test_project_rejects_incompatible_model(tmp_path: Path, gen: torch.Generator) -> None:
    write_models(tmp_path / "m", [mlp_like(gen) for _ in range(3)])
    compress(Collection.from_paths([str(tmp_path / "m")]), tmp_path / "a.wsz", n_components=2)
    save_file(mlp_like(gen, hidden=5), tmp_path / "odd.safetensors")
    with pytest.raises(ShapeMismatchError, match=r"odd\.safetensors: tensor 'fc1\.bias': shape \(5,\) differs"):
        project(tmp_path / "a.wsz", [str(tmp_path / "odd.safetensors")])


def test_corrupted_or_incomplete_archives_are_refused(tmp_path: Path, gen: torch.Generator) -> None:
    write_models(tmp_path / "m", [mlp_like(gen) for _ in range(3)])
    compress(Collection.from_paths([str(tmp_path / "m")]), tmp_path / "a.wsz", n_components=2)
    member = tmp_path / "a.wsz" / "units" / "00000.safetensors"
    raw = bytearray(member.read_bytes())
    raw[-3] ^= 0xFF
    member.write_bytes(bytes(raw))
    with pytest.raises(ArchiveError, match=r"units/00000\.safetensors: member is corrupted"):
        reconstruct(tmp_path / "a.wsz", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "a.wsz" / "manifest.json").unlink()
    with pytest.raises(ArchiveError, match=r"no manifest\.json"):
        Archive(tmp_path / "a.wsz")


def test_base_identity_is_checked(tmp_path: Path, gen: torch.Generator) -> None:
    base = mlp_like(gen)
    save_file(base, tmp_path / "base.safetensors")
    write_models(tmp_path / "m", [mlp_like(gen) for _ in range(3)])
    compress(
        Collection.from_paths([str(tmp_path / "m")], base=tmp_path / "base.safetensors"),
        tmp_path / "a.wsz",
        n_components=2,
    )
    save_file(mlp_like(gen), tmp_path / "other.safetensors")
    with pytest.raises(ArchiveError, match="base model differs"):
        reconstruct(tmp_path / "a.wsz", tmp_path / "out", base=tmp_path / "other.safetensors")


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m.pop("units"), r"manifest is malformed at units: Field required"),
        (
            lambda m: m["units"][0].pop("k"),
            r"manifest is malformed at units: Value error, unit 0 is not a valid 'pca' record: k: Field required",
        ),
        (lambda m: m["models"].append(dict(m["models"][0])), "model names must be unique"),
        (lambda m: m.update(kind="tensorflow"), r"manifest is malformed at kind"),
    ],
)
def test_malformed_manifest_is_an_archive_error(
    tmp_path: Path, gen: torch.Generator, edit: Callable[[dict], object], match: str
) -> None:
    write_models(tmp_path / "m", [mlp_like(gen) for _ in range(3)])
    compress(Collection.from_paths([str(tmp_path / "m")]), tmp_path / "a.wsz", n_components=2)
    mpath = tmp_path / "a.wsz" / "manifest.json"
    manifest = json.loads(mpath.read_text())
    edit(manifest)
    mpath.write_text(json.dumps(manifest))
    with pytest.raises(ArchiveError, match=match) as info:
        Archive(tmp_path / "a.wsz")
    assert "manifest.json" in str(info.value)
