"""Threads change nothing but speed: same archives (≤ 1e-10), same reports and verdicts, same merges; bounded
units in flight; and the read-once paths (kept units, batched projection, unit-outer reconstruction)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from weightspace.analyze import analyze
from weightspace.collection import Collection
from weightspace.compress import compress, project, reconstruct, reconstruct_tensors
from weightspace.decompose import (
    Archive,
    ChunkStream,
    FitParams,
    MemoryStore,
    PCAUnit,
    SharedSubspace,
    TuckerUnit,
    pca_components,
    pca_spectrum,
)
from weightspace.io import open_source
from weightspace.merge import merge
from weightspace.units import UnitMember, UnitStack


def assert_same_archive(a: Path, b: Path, tol: float = 1e-10) -> None:
    """Every stored tensor and coefficient of two archives agrees to ``tol``; the manifests' unit records match."""
    ma, mb = Archive(a).manifest, Archive(b).manifest
    for x, y in zip(ma.units, mb.units, strict=True):
        assert (x.name, x.method, x.member) == (y.name, y.method, y.member)
        assert abs(x.evr_at_k - y.evr_at_k) < tol
    sa, sb = SharedSubspace.load(a), SharedSubspace.load(b)
    assert sa.n_components_ == sb.n_components_
    for name, ua in sa.units_.items():
        ub = sb.units_[name]
        for tensor in ua.stored_layout():
            torch.testing.assert_close(ua.tensor(tensor), ub.tensor(tensor), atol=tol, rtol=0)
        torch.testing.assert_close(ua.coefficients, ub.coefficients, atol=tol, rtol=0)
        torch.testing.assert_close(ua.singular_values, ub.singular_values, atol=tol, rtol=0)
    assert [m.source_sha256 for m in ma.models] == [m.source_sha256 for m in mb.models]


@pytest.mark.parametrize("method", ["pca", "hosvd"])
def test_threads_give_the_same_archive(models_dir: Path, tmp_path: Path, method: str) -> None:
    compress([models_dir], tmp_path / "one.wsz", method=method, n_components=3, threads=1)
    compress([models_dir], tmp_path / "two.wsz", method=method, n_components=3, threads=2)
    assert_same_archive(tmp_path / "one.wsz", tmp_path / "two.wsz")


def _numbers(obj: object) -> list[float]:
    if isinstance(obj, dict):
        return [x for k in sorted(obj) if k != "wall_s" for x in _numbers(obj[k])]
    if isinstance(obj, list | tuple):
        return [x for v in obj for x in _numbers(v)]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return []
    return [float(obj)] if isinstance(obj, int | float) else []


@pytest.mark.parametrize("method", ["pca", "hosvd"])
def test_threads_give_the_same_report(models_dir: Path, method: str) -> None:
    one = analyze([models_dir], method=method, n_null=2, threads=1)
    two = analyze([models_dir], method=method, n_null=2, threads=2)
    assert one.verdicts == two.verdicts
    assert one.summary["verdict_counts"] == two.summary["verdict_counts"]
    a, b = _numbers(one.to_dict()), _numbers(two.to_dict())
    assert len(a) == len(b)
    torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=1e-10, rtol=1e-10, equal_nan=True)


@pytest.mark.parametrize("method", ["ties", "knots", "tsv"])
def test_threads_give_the_same_merge(tmp_path: Path, method: str) -> None:
    from backends.conftest import shared_models
    from helpers import write_models

    models = shared_models(5)
    base = {k: torch.zeros_like(v) for k, v in models[0].items()}
    paths = write_models(tmp_path / "m", models)
    write_models(tmp_path / "b", [base], prefix="base")
    kw = {"base": tmp_path / "b" / "base0.safetensors", "method": method}
    one = merge(paths, threads=1, **kw)
    two = merge(paths, threads=2, **kw)
    assert one.tensors is not None
    assert two.tensors is not None
    for key, t in one.tensors.items():
        torch.testing.assert_close(t, two.tensors[key], atol=1e-6, rtol=0)  # fp32 outputs of float64 merges
    assert [u.rel_diff_from_mean for u in one.units] == pytest.approx([u.rel_diff_from_mean for u in two.units])


def test_units_in_flight_are_bounded(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory is per unit in flight: with threads=N at most N units are being fitted at once."""
    lock = threading.Lock()
    state = {"now": 0, "peak": 0, "calls": 0}
    fit = PCAUnit.fit.__func__  # type: ignore[attr-defined]

    def counting(cls, stack, params, store, tick=None):  # type: ignore[no-untyped-def]
        with lock:
            state["now"] += 1
            state["calls"] += 1
            state["peak"] = max(state["peak"], state["now"])
        try:
            return fit(cls, stack, params, store, tick)
        finally:
            with lock:
                state["now"] -= 1

    monkeypatch.setattr(PCAUnit, "fit", classmethod(counting))
    coll = Collection.from_paths([models_dir])
    for threads in (1, 2, 3):
        state.update(peak=0, calls=0)
        SharedSubspace(n_components=2).fit(coll, threads=threads)
        assert state["calls"] == len(coll.units)
        assert 1 <= state["peak"] <= threads


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    count = {"rows": 0}
    rows_into = UnitMember.rows_into

    def counting(self, r0, r1, out, *, subtract_base=True):  # type: ignore[no-untyped-def]
        count["rows"] += r1 - r0
        return rows_into(self, r0, r1, out, subtract_base=subtract_base)

    monkeypatch.setattr(UnitMember, "rows_into", counting)
    return count


def test_a_kept_unit_is_read_once_and_fits_the_same(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    coll = Collection.from_paths([models_dir])
    stack = coll.stack("b.weight")  # 8 × 12, ten models
    count = _count_reads(monkeypatch)
    kept = PCAUnit.fit(stack, FitParams(n_components=3, chunk_bytes=2048, cache_bytes=1 << 20), MemoryStore())
    assert count["rows"] == stack.n * stack.spec.rows
    count["rows"] = 0
    streamed = PCAUnit.fit(stack, FitParams(n_components=3, chunk_bytes=2048, cache_bytes=0), MemoryStore())
    assert count["rows"] == 2 * stack.n * stack.spec.rows
    assert torch.equal(kept.basis(), streamed.basis())
    assert torch.equal(kept.coefficients, streamed.coefficients)
    s = ChunkStream(stack, center=True, chunk_bytes=2048, cache_bytes=1 << 20)
    for _ in range(3):
        list(s)
    assert s.reads == 1


def test_hosvd_reads_a_kept_unit_once(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stack = Collection.from_paths([models_dir]).stack("a.weight")
    count = _count_reads(monkeypatch)
    kept = TuckerUnit.fit(stack, FitParams(n_components=(3, 2), cache_bytes=1 << 20), MemoryStore())
    assert count["rows"] == stack.n * stack.spec.rows
    count["rows"] = 0
    streamed = TuckerUnit.fit(stack, FitParams(n_components=(3, 2), cache_bytes=0), MemoryStore())
    assert count["rows"] == (2 * stack.n + 1) * stack.spec.rows  # the shift, the scatters, the cores
    torch.testing.assert_close(kept.coefficients, streamed.coefficients, atol=1e-12, rtol=0)
    count["rows"] = 0
    coll = Collection.from_paths([models_dir])
    rep = analyze(coll, method="hosvd", n_null=1, threads=1)
    assert set(rep.verdicts) == {u.name for u in coll.units}
    # Every member of every unit is read once (the folds and the halves reuse the kept members).
    assert count["rows"] == sum(u.rows * coll.n_models for u in coll.units)


def test_covariance_route_equals_the_gram_route() -> None:
    """More models than features: the D × D route gives the Gram route's spectrum, basis and coefficients."""
    g = torch.Generator().manual_seed(3)
    mean, dirs = torch.randn(4, 3, generator=g), torch.randn(3, 4, 3, generator=g)
    ws = [mean + (torch.randn(3, generator=g)[:, None, None] * dirs).sum(0) for _ in range(40)]
    stack = UnitStack.from_tensors(ws, name="w")
    unit = PCAUnit.fit(stack, FitParams(n_components=3), MemoryStore())
    assert unit.solver == "covariance"
    sp = pca_spectrum(stack, 3)  # needs the Gram: the N × N route
    _, basis = pca_components(stack, sp)
    assert sp.solver == "gram"
    torch.testing.assert_close(unit.singular_values[:3], sp.singular_values[:3], atol=1e-10, rtol=0)
    # Past the rank both routes hold squared-route rounding noise (≲ √eps · σ_1), not the same noise.
    noise = 1e-7 * float(sp.singular_values[0])
    assert float(unit.singular_values[3:].max()) < noise
    assert float(sp.singular_values[3:].max()) < noise
    torch.testing.assert_close(unit.basis(), basis, atol=1e-10, rtol=0)
    torch.testing.assert_close(unit.coefficients, sp.coefficients, atol=1e-10, rtol=0)


def test_device_cpu_is_plumbed_through(models_dir: Path, tmp_path: Path) -> None:
    coll = Collection.from_paths([models_dir])
    a = SharedSubspace(n_components=3).fit(coll, threads=1)
    b = SharedSubspace(n_components=3).fit(coll, threads=1, device="cpu")
    for name in a.units_:
        torch.testing.assert_close(a.basis_.get(name), b.basis_.get(name), atol=0, rtol=0)
    assert analyze(coll, n_null=1, device="cpu").verdicts == analyze(coll, n_null=1).verdicts


def test_project_batched_equals_one_model_at_a_time(models_dir: Path, tmp_path: Path) -> None:
    from backends.conftest import shared_models
    from helpers import write_models

    compress([models_dir], tmp_path / "a.wsz", n_components=3)
    new = write_models(tmp_path / "new", shared_models(3, seed=9))
    res = project(tmp_path / "a.wsz", new, threads=2)
    ss = SharedSubspace.load(tmp_path / "a.wsz")
    for j, path in enumerate(new):
        src = open_source(path)
        for ur in res.models[j].units:
            r = ss.unit(ur.name).residuals(UnitMember(src, ss.unit(ur.name).spec))
            norm = r.x_sq**0.5
            assert ur.mean_plus_basis == pytest.approx(r.mean_plus_basis_sq**0.5 / norm, rel=1e-9, abs=1e-12)
            assert ur.mean_only == pytest.approx(r.mean_only_sq**0.5 / norm, rel=1e-9)
            assert ur.basis_only == pytest.approx(r.basis_only_sq**0.5 / norm, rel=1e-9)


def test_reconstruct_reads_each_basis_once(
    models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compress([models_dir], tmp_path / "a.wsz", n_components=3)
    ss = SharedSubspace.load(tmp_path / "a.wsz")
    expected = {name: reconstruct_tensors(ss, i, None)[0] for i, name in enumerate(ss.model_names_)}
    reads: dict[tuple[str, str], int] = {}
    read_member = Archive.read_member

    def counting(self, member, key):  # type: ignore[no-untyped-def]
        reads[(member, key)] = reads.get((member, key), 0) + 1
        return read_member(self, member, key)

    monkeypatch.setattr(Archive, "read_member", counting)
    out = reconstruct(SharedSubspace.load(tmp_path / "a.wsz"), tmp_path / "rec")
    assert {k: v for k, v in reads.items() if k[1] in ("basis", "mean")} == {
        k: 1 for k in reads if k[1] in ("basis", "mean")
    }
    assert len([k for k in reads if k[1] == "basis"]) == len(ss.units_)
    for r in out:
        got = open_source(r.path)
        for key, t in expected[r.name].items():
            assert torch.equal(got.read(key), t)
