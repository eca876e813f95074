"""LoRA archives: factored by default (no dense ΔW-sized member), full-rank round trip, the size guard for methods
that could outgrow the adapters, honest ratio words, project from factors and --add without refitting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from helpers import write_adapter
from weightspace.cli import main
from weightspace.collection import Collection
from weightspace.compress import compress, project, ratio_words, reconstruct
from weightspace.decompose import Archive, LoraTuckerUnit, PCAUnit, SharedSubspace
from weightspace.errors import InputError
from weightspace.io import open_source

D_OUT, D_IN, R = 128, 96, 4
MODULES = ("enc.q", "enc.v")


def _adapters(root: Path, n: int, seed: int = 0, r: int = R) -> list[Path]:
    """PEFT adapters (alpha = 2r) whose updates share an 8-dim span per module, plus noise."""
    g = torch.Generator().manual_seed(seed)
    spans = {m: (torch.randn(D_OUT, 8, generator=g), torch.randn(8, D_IN, generator=g)) for m in MODULES}
    paths = []
    for i in range(n):
        factors = {}
        for m, (bu, av) in spans.items():
            a = torch.randn(r, 8, generator=g) @ av + 0.01 * torch.randn(r, D_IN, generator=g)
            b = bu @ torch.randn(8, r, generator=g)
            factors[m] = (a, b)
        paths.append(write_adapter(root / f"ad{i}", factors, r=r, alpha=2 * r))
    return paths


def _delta(path: Path, key: str) -> torch.Tensor:
    b, a, mod = open_source(path).lora(key)
    return mod.scaling * (b.double() @ a.double())


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_lora_archive_holds_no_dense_update(tmp_path: Path) -> None:
    paths = _adapters(tmp_path, 6)
    res = compress([str(p) for p in paths], tmp_path / "a.wsz", n_components=8)
    assert {u.method for u in res.units} == {LoraTuckerUnit.method}
    arc = Archive(tmp_path / "a.wsz")
    for name in arc.manifest.members:
        if not name.endswith(".safetensors"):
            continue
        with safe_open(tmp_path / "a.wsz" / name, "pt") as f:
            for key in f.keys():  # noqa: SIM118
                shape = tuple(f.get_slice(key).get_shape())
                numel = torch.Size(shape).numel()
                assert numel < D_OUT * D_IN, (name, key, shape)
    assert res.archive_bytes < res.models_bytes
    assert res.ratio_words == ratio_words(res.models_bytes, res.archive_bytes)
    assert res.ratio_words.endswith("× smaller")


def test_full_rank_round_trip(tmp_path: Path) -> None:
    paths = _adapters(tmp_path, 6)
    k = min(D_IN, 6 * R)  # the span of N·r = 24 factor columns: min(d, N·r) for both modes
    compress(
        [str(p) for p in paths],
        tmp_path / "a.wsz",
        n_components=(k, k),
        storage_dtype="float64",
        allow_larger=True,
    )
    out = reconstruct(tmp_path / "a.wsz", tmp_path / "out")
    assert max(r.max_lora_truncation_error for r in out) <= 1e-6  # U (M + C_i) Vᵀ has rank ≤ r: exact at rank r
    for p in paths:
        back = tmp_path / "out" / p.name
        assert json.loads((back / "adapter_config.json").read_text())["r"] == R
        for m in MODULES:
            assert _rel(_delta(back, f"{m}.weight"), _delta(p, f"{m}.weight")) <= 1e-6


def test_archives_estimated_larger_than_the_adapters_are_refused_before_writing(tmp_path: Path) -> None:
    paths = [str(p) for p in _adapters(tmp_path, 6)]
    with pytest.raises(
        InputError, match=r"about [0-9.]+ MB of tensors for [0-9.]+ MB of adapters \([0-9.]+× larger;"
    ) as info:
        compress(paths, tmp_path / "a.wsz", method=PCAUnit.method, n_components=4)
    assert "--allow-larger" in str(info.value)
    assert not (tmp_path / "a.wsz").exists()
    res = compress(paths, tmp_path / "a.wsz", method=PCAUnit.method, n_components=4, allow_larger=True)
    assert res.archive_bytes > res.models_bytes
    assert res.ratio_words.endswith("× larger")  # never "0.2× smaller"
    assert res.estimated_bytes <= res.archive_bytes <= res.estimated_bytes + 64 * 1024  # + headers, manifest


def test_cli_compress_method_options_and_ratio_words(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = str(tmp_path / "ad*")
    _adapters(tmp_path, 6)
    with pytest.raises(SystemExit) as info:
        main(["compress", models, "-o", str(tmp_path / "p.wsz"), "--method", "pca", "--rank", "4"])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert "MB of adapters" in err
    assert "--allow-larger" in err
    assert not (tmp_path / "p.wsz").exists()
    with pytest.raises(SystemExit) as info:
        main(["compress", models, "-o", str(tmp_path / "a.wsz"), "--rank", "8", "--json"])
    out, err = capsys.readouterr()
    assert info.value.code in (0, None)
    summary = json.loads(out)
    assert summary["method"] == "auto"
    assert summary["ratio_words"] in " ".join(err.split())
    assert {u["method"] for u in summary["units"]} == {LoraTuckerUnit.method}
    with pytest.raises(SystemExit) as info:
        main(
            ["compress", models, "-o", str(tmp_path / "p.wsz"), "--method", "pca", "--rank", "4", "--allow-larger"]
        )
    assert info.value.code in (0, None)
    assert "× larger" in " ".join(capsys.readouterr().err.split())


def test_project_from_factors_and_add_without_refitting(tmp_path: Path) -> None:
    paths = _adapters(tmp_path, 7)
    compress([str(p) for p in paths[:6]], tmp_path / "a.wsz", n_components=8, storage_dtype="float64")
    before = Archive(tmp_path / "a.wsz").manifest
    res = project(tmp_path / "a.wsz", [str(paths[6])], add=True)
    held = res.models[0]
    assert held.mean_plus_basis < 0.05 < held.mean_only  # the shared span explains the unseen adapter
    after = Archive(tmp_path / "a.wsz").manifest
    assert [m.name for m in after.models] == [*[m.name for m in before.models], "ad6"]
    assert after.models[-1].added
    for name, digest in before.members.items():
        if name.startswith("units/"):
            assert after.members[name] == digest  # U, V, mean core untouched: no refit
    ss = SharedSubspace.load(tmp_path / "a.wsz")
    reconstruct(ss, tmp_path / "out", ["ad6"])
    err_sq = norm_sq = 0.0
    for m in MODULES:
        x = _delta(paths[6], f"{m}.weight")
        unit = ss.unit(f"{m}.weight")
        u, v = unit.factors()
        proj = u @ (u.T @ x @ v) @ v.T  # the dense projection, for the check only
        assert _rel(_delta(tmp_path / "out" / "ad6", f"{m}.weight"), proj) <= 1e-6
        err_sq += float(((x - proj) ** 2).sum())
        norm_sq += float((x * x).sum())
    assert held.mean_plus_basis == pytest.approx((err_sq / norm_sq) ** 0.5, rel=1e-6)


def test_mixed_adapter_ranks_round_trip(tmp_path: Path) -> None:
    paths = _adapters(tmp_path / "a", 3, r=4) + _adapters(tmp_path / "b", 3, seed=1, r=2)
    coll = Collection.from_paths([str(p) for p in paths])
    compress(coll, tmp_path / "a.wsz", n_components=(18, 18), storage_dtype="float64", allow_larger=True)
    out = reconstruct(tmp_path / "a.wsz", tmp_path / "out")
    assert max(r.max_lora_truncation_error for r in out) <= 1e-6
    for p, o in zip(paths, out, strict=True):
        _, _, mod = open_source(o.path).lora("enc.q.weight")
        assert mod.rank == open_source(p).lora("enc.q.weight")[2].rank


def test_randomized_route_archive_writes_strict_json_and_reads_back(tmp_path: Path) -> None:
    # 40 adapters of rank 4: a span 160 wide, over four blocks at k = 4, so the fit takes the randomized route,
    # which does not compute ‖μ‖² — the manifest must stay strict JSON (null) and read back as NaN.
    paths = _adapters(tmp_path, 40)
    compress([str(p) for p in paths], tmp_path / "a.wsz", n_components=4)
    text = (tmp_path / "a.wsz" / "manifest.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"manifest holds {c}"))
    arc = Archive(tmp_path / "a.wsz")
    recs = arc.manifest.units
    assert {r.solver for r in recs} == {"randomized"}
    assert all(r.mean_energy_fraction != r.mean_energy_fraction for r in recs)  # NaN: not computed
    assert all(0 < r.evr_at_k <= 1 for r in recs)
    ss = SharedSubspace.load(tmp_path / "a.wsz")
    assert ss.n_models_ == 40


def test_size_guard_advice_fits_the_method(tmp_path: Path) -> None:
    paths = [str(p) for p in _adapters(tmp_path, 2)]  # 2 adapters of rank 4: k = 8 factored is no saving
    with pytest.raises(InputError) as auto:
        compress(paths, tmp_path / "a.wsz", n_components=8)
    assert "Fewer components (--rank)" in str(auto.value)
    assert "the default method" not in str(auto.value)
    with pytest.raises(InputError) as pca:
        compress(paths, tmp_path / "p.wsz", method=PCAUnit.method, n_components=1)
    assert "the default method 'auto'" in str(pca.value)
    assert not (tmp_path / "a.wsz").exists()
    assert not (tmp_path / "p.wsz").exists()
