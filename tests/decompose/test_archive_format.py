"""The archive is the saved form of SharedSubspace: format-1 archives stay readable, save/load round-trips,
``fit(out=)`` equals ``fit().save()``, and a crafted manifest cannot name members outside the archive."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from helpers import mlp_like, write_models
from weightspace.collection import Collection
from weightspace.compress import reconstruct_tensors
from weightspace.decompose import Archive, SharedSubspace
from weightspace.errors import ArchiveError
from weightspace.io import SafetensorsFile

DATA = Path(__file__).parent / "data"


def _expected(kind: str) -> dict[str, torch.Tensor]:
    f = SafetensorsFile(DATA / f"v1-{kind}-expected.safetensors")
    return {k: f.read(k) for k in f}


@pytest.mark.parametrize("kind", ["pca", "hosvd", "peft"])
def test_format_1_archives_stay_readable(kind: str, tmp_path: Path) -> None:
    src = DATA / f"v1-{kind}-archive"
    ss = SharedSubspace.load(src)
    assert ss.manifest_ is not None
    assert ss.manifest_.version == 1
    expected = _expected(kind)
    for i, name in enumerate(ss.model_names_):
        got, _ = reconstruct_tensors(ss, i, None)
        if kind == "peft":
            # SVD re-factoring fixes B·A only up to signs: compare the updates.
            a = got["base_model.model.enc.q.lora_A.weight"].double()
            b = got["base_model.model.enc.q.lora_B.weight"].double()
            a0 = expected[f"{name}/base_model.model.enc.q.lora_A.weight"].double()
            b0 = expected[f"{name}/base_model.model.enc.q.lora_B.weight"].double()
            torch.testing.assert_close(b @ a, b0 @ a0, rtol=1e-10, atol=1e-10)
            continue
        for key, value in got.items():
            torch.testing.assert_close(value, expected[f"{name}/{key}"], rtol=1e-12, atol=1e-12)
    # Saving a format-1 fit writes format 2 with the same maths.
    out = ss.save(tmp_path / "v2.wsz")
    again = SharedSubspace.load(out)
    assert again.manifest_ is not None
    assert again.manifest_.version == 2
    for key in ss.units_:
        torch.testing.assert_close(again.units_[key].mean(), ss.units_[key].mean())
        torch.testing.assert_close(again.units_[key].coefficients, ss.units_[key].coefficients)
        for i in range(ss.n_models_):
            torch.testing.assert_close(again.units_[key].member(i), ss.units_[key].member(i), rtol=0, atol=1e-12)


@pytest.mark.parametrize(("method", "k"), [("pca", 3), ("hosvd", (3, 2))])
def test_fit_out_equals_fit_then_save(tmp_path: Path, gen: torch.Generator, method: str, k: object) -> None:
    write_models(tmp_path / "m", [mlp_like(gen) for _ in range(6)])
    coll = Collection.from_paths([str(tmp_path / "m")])
    params = {"n_components": k, "method": method, "storage_dtype": "float64"}
    streamed = SharedSubspace(**params).fit(coll, out=tmp_path / "a.wsz")
    held = SharedSubspace(**params).fit(coll)
    assert held.path_ is None
    held.save(tmp_path / "b.wsz")
    assert streamed.n_components_ == held.n_components_
    for key, unit in streamed.units_.items():
        other = held.units_[key]
        for name in unit.stored_layout():
            torch.testing.assert_close(unit.tensor(name), other.tensor(name), rtol=0, atol=1e-12)
        torch.testing.assert_close(unit.coefficients, other.coefficients, rtol=0, atol=1e-12)
    a, b = Archive(tmp_path / "a.wsz").manifest, Archive(tmp_path / "b.wsz").manifest
    assert [u.model_dump(exclude={"member"}) for u in a.units] == [
        u.model_dump(exclude={"member"}) for u in b.units
    ]
    assert sorted(a.members) == sorted(b.members)
    assert all(not name.startswith("basis") for name in a.members)  # one member per unit, format 2


def test_one_member_per_unit_and_typed_manifest(tmp_path: Path, gen: torch.Generator) -> None:
    write_models(tmp_path / "m", [mlp_like(gen) for _ in range(4)])
    ss = SharedSubspace(n_components=2).fit(Collection.from_paths([str(tmp_path / "m")]), out=tmp_path / "a.wsz")
    m = Archive(tmp_path / "a.wsz").manifest
    assert [u.member for u in m.units] == [f"units/{i:05d}.safetensors" for i in range(len(m.units))]
    assert {type(u).__name__ for u in m.units} == {"PCARecord"}
    assert m.units[0].k == 2  # type: ignore[attr-defined]
    assert ss.models_[0].source_format == "safetensors"


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (
            lambda m: m["members"].update({"../x.safetensors": m["members"]["private.safetensors"]}),
            "not an archive member name",
        ),
        (
            lambda m: m["members"].update({"/etc/passwd": m["members"]["private.safetensors"]}),
            "not an archive member name",
        ),
        (lambda m: m["units"][0].update(member="units/99999.safetensors"), "which 'members' does not list"),
        (lambda m: m["models"][0].update(name="../../escape"), "must be one plain file name"),
        (lambda m: m.update(version=True), "version True is not supported"),
    ],
)
def test_manifest_cannot_point_outside(tmp_path: Path, gen: torch.Generator, edit: object, match: str) -> None:
    write_models(tmp_path / "m", [mlp_like(gen) for _ in range(3)])
    SharedSubspace(n_components=2).fit(Collection.from_paths([str(tmp_path / "m")]), out=tmp_path / "a.wsz")
    mpath = tmp_path / "a.wsz" / "manifest.json"
    manifest = json.loads(mpath.read_text())
    edit(manifest)  # type: ignore[operator]
    mpath.write_text(json.dumps(manifest))
    with pytest.raises(ArchiveError, match=match):
        Archive(tmp_path / "a.wsz")


def test_member_symlink_is_refused(tmp_path: Path, gen: torch.Generator) -> None:
    write_models(tmp_path / "m", [mlp_like(gen) for _ in range(3)])
    SharedSubspace(n_components=2).fit(Collection.from_paths([str(tmp_path / "m")]), out=tmp_path / "a.wsz")
    member = tmp_path / "a.wsz" / "units" / "00000.safetensors"
    outside = tmp_path / "outside.safetensors"
    shutil.move(member, outside)
    member.symlink_to(outside)  # same bytes, so the hash would still match
    with pytest.raises(ArchiveError, match="symbolic link"):
        Archive(tmp_path / "a.wsz")
