"""Factored LoRA HOSVD (``lora-hosvd``): equal to a dense float64 HOSVD of the materialised ΔW stack, gauge
invariant, rank rules with true EVR, both routes, projection from factors, and method selection by registry."""

from __future__ import annotations

import pytest
import torch

from weightspace.decompose import (
    UNIT_FITS,
    AutoUnit,
    FitParams,
    LoraTuckerUnit,
    MemoryStore,
    PCAUnit,
    SharedSubspace,
    TuckerUnit,
    hosvd,
    lora_hosvd,
    unit_fit_for,
)
from weightspace.errors import ParameterError
from weightspace.units import TensorMember, UnitSpec, UnitStack

F64 = torch.float64


def _pairs(
    n: int = 7, rows: int = 30, cols: int = 25, r: int = 3, seed: int = 0
) -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(rows, r, generator=g, dtype=F64), torch.randn(r, cols, generator=g, dtype=F64))
        for _ in range(n)
    ]


def _planted(
    n: int, rows: int, cols: int, r: int, s: int, noise: float, seed: int = 0
) -> list[tuple[torch.Tensor, ...]]:
    """Updates whose column/row spaces lie in one s-dim span (plus noise on B)."""
    g = torch.Generator().manual_seed(seed)
    u0 = torch.linalg.qr(torch.randn(rows, s, generator=g, dtype=F64)).Q
    v0 = torch.linalg.qr(torch.randn(cols, s, generator=g, dtype=F64)).Q
    return [
        (
            u0 @ torch.randn(s, r, generator=g, dtype=F64) + noise * torch.randn(rows, r, generator=g, dtype=F64),
            torch.randn(r, s, generator=g, dtype=F64) @ v0.T,
        )
        for _ in range(n)
    ]


def _dense(pairs: list[tuple[torch.Tensor, ...]]) -> list[torch.Tensor]:
    return [left @ right for left, right in pairs]


@pytest.mark.parametrize("ranks", [(5, 4), 4, 0.9, (0.8, 6), (21, 21)])
@pytest.mark.parametrize("center", [True, False])
def test_equals_dense_float64_hosvd(ranks: int | float | tuple, center: bool) -> None:
    pairs = _pairs()
    fit = lora_hosvd(pairs, ranks, center=center, solver="exact")
    ref = hosvd(_dense(pairs), ranks, center=False)  # the subspace holds the mean: uncentered mode scatters
    assert (fit.k1, fit.k2) == (ref.k1, ref.k2)
    torch.testing.assert_close(fit.u, ref.u, atol=1e-8, rtol=0)  # both sign-fixed; distinct singular values
    torch.testing.assert_close(fit.v, ref.v, atol=1e-8, rtol=0)
    m = fit.mode1_values.numel()
    torch.testing.assert_close(fit.mode1_values, ref.mode1_values[:m], atol=1e-8, rtol=0)
    ref_cores = ref.cores - ref.cores.mean(0) if center else ref.cores
    torch.testing.assert_close(fit.cores, ref_cores, atol=1e-8, rtol=0)
    for i in range(len(pairs)):
        torch.testing.assert_close(fit.reconstruct(i), ref.reconstruct(i), atol=1e-8, rtol=0)
    assert fit.captured_fraction == pytest.approx(ref.captured_fraction, abs=1e-10)


def test_projectors_agree_when_singular_values_repeat() -> None:
    # Two identical orthogonal updates: every mode singular value is repeated, vectors are only defined up to a
    # rotation within the pair; the projector and the reconstructions are still unique.
    e = torch.eye(6, dtype=F64)
    pairs = [(e[:, :2], e[:2, :]), (e[:, 2:4], e[2:4, :])] * 2
    fit = lora_hosvd(pairs, 4, solver="exact")
    ref = hosvd(_dense(pairs), 4, center=False)
    torch.testing.assert_close(fit.u @ fit.u.T, ref.u @ ref.u.T, atol=1e-10, rtol=0)
    for i in range(4):
        torch.testing.assert_close(fit.reconstruct(i), ref.reconstruct(i), atol=1e-10, rtol=0)


def test_gauge_rotations_give_identical_results() -> None:
    pairs = _pairs()
    g = torch.Generator().manual_seed(7)
    rotated = []
    for left, right in pairs:
        q = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=F64)).Q
        rotated.append((left @ q, q.T @ right))  # B R, Rᵀ A: the same ΔW
    for solver in ("exact", "randomized"):
        a = lora_hosvd(pairs, (5, 4), solver=solver)
        b = lora_hosvd(rotated, (5, 4), solver=solver)
        torch.testing.assert_close(a.u, b.u, atol=1e-10, rtol=0)
        torch.testing.assert_close(a.v, b.v, atol=1e-10, rtol=0)
        torch.testing.assert_close(a.cores, b.cores, atol=1e-10, rtol=0)
        torch.testing.assert_close(a.mean_core, b.mean_core, atol=1e-10, rtol=0)


def test_randomized_route_equals_exact_on_a_planted_span() -> None:
    pairs = _planted(40, 300, 260, 6, 5, noise=0.0)
    exact = lora_hosvd(pairs, 5, solver="exact")
    auto = lora_hosvd(pairs, 5)
    assert auto.solver == "randomized"  # the span (240 wide) is over four blocks of 21
    assert (auto.k1, auto.k2) == (exact.k1, exact.k2) == (5, 5)
    torch.testing.assert_close(auto.u, exact.u, atol=1e-8, rtol=0)
    torch.testing.assert_close(auto.cores, exact.cores, atol=1e-8, rtol=0)
    assert auto.captured_fraction == pytest.approx(1.0, abs=1e-12)
    assert torch.isnan(torch.tensor(auto.mean_sq_norm))  # not computed on the randomized route
    assert 0 < exact.mean_energy_fraction < 1


def test_variance_fraction_uses_the_true_energy_on_both_routes() -> None:
    pairs = _planted(24, 100, 90, 6, 5, noise=0.02)
    ref = hosvd(_dense(pairs), 0.95, center=False)
    for solver in ("exact", "randomized"):
        fit = lora_hosvd(pairs, 0.95, solver=solver)
        evr = fit.mode1_values**2 / fit.energy  # against Σ‖ΔW_i‖², never the truncated spectrum
        assert float(evr[: fit.k1].sum()) >= 0.95 - 1e-12
        assert float(evr[: fit.k1 - 1].sum()) < 0.95
        if solver == "exact":
            assert (fit.k1, fit.k2) == (ref.k1, ref.k2)
        else:  # leading Ritz values are lower bounds: k holds at least the fraction, maybe one component more
            assert ref.k1 <= fit.k1 <= ref.k1 + 1
            assert ref.k2 <= fit.k2 <= ref.k2 + 1
    assert float(fit.energy) == pytest.approx(sum(float((w * w).sum()) for w in _dense(pairs)), rel=1e-12)


def test_identical_adapters_have_the_adapter_rank() -> None:
    left, right = _pairs(1, r=3)[0]
    fit = lora_hosvd([(left, right)] * 5, 16, solver="exact")
    assert (fit.k1, fit.k2) == (3, 3)  # the shared zero tolerance: rounding noise is not structure
    assert float(fit.cores.abs().max()) < 1e-10  # every adapter is the mean


def test_mixed_ranks_and_uncompressed_mode() -> None:
    g = torch.Generator().manual_seed(3)
    pairs = [
        (torch.randn(12, r, generator=g, dtype=F64), torch.randn(r, 9, generator=g, dtype=F64))
        for r in (2, 5, 3, 4)
    ]
    fit = lora_hosvd(pairs, (4, 3), modes=(1,))
    ref = hosvd(_dense(pairs), (4, 3), center=False, modes=(1,))
    assert (fit.k1, fit.k2) == (4, 9)
    torch.testing.assert_close(fit.v, torch.eye(9, dtype=F64))
    for i in range(4):
        torch.testing.assert_close(fit.reconstruct(i), ref.reconstruct(i), atol=1e-10, rtol=0)


def test_parameter_errors() -> None:
    with pytest.raises(ParameterError, match="'solver' parameter of lora_hosvd must be one of"):
        lora_hosvd(_pairs(), 2, solver="qr")
    with pytest.raises(ParameterError, match="'modes' parameter of lora_hosvd"):
        lora_hosvd(_pairs(), 2, modes=(3,))


# ---------------------------------------------------------------------------------------------- the unit fit


def _unit(pairs: list[tuple[torch.Tensor, ...]], k: int | tuple = (5, 4)) -> LoraTuckerUnit:
    unit = LoraTuckerUnit.fit(UnitStack.from_factors(pairs, name="w"), FitParams(n_components=k), MemoryStore())
    assert isinstance(unit, LoraTuckerUnit)
    return unit


def test_stored_layout_holds_no_dense_update() -> None:
    unit = _unit(_pairs())
    assert unit.stored_layout() == {"U": (30, 5), "V": (25, 4), "mean_core": (5, 4)}
    assert (30, 25) not in unit.stored_layout().values()


def test_projection_from_factors_equals_the_dense_projection() -> None:
    pairs = _pairs()
    unit = _unit(pairs[:6])
    left, right = pairs[6]
    x = left @ right
    member = TensorMember(factors=(left, right), name="w")
    factored = unit.residuals(member)
    dense = unit.residuals(x)  # the base class's dense path
    torch.testing.assert_close(factored.coefficients, dense.coefficients, atol=1e-10, rtol=0)
    torch.testing.assert_close(unit.transform_member(member), unit.transform(x), atol=1e-10, rtol=0)
    for name in ("x_sq", "mean_plus_basis_sq", "mean_only_sq", "basis_only_sq"):
        assert getattr(factored, name) == pytest.approx(getattr(dense, name), rel=1e-9, abs=1e-9), name
    assert factored.mean_plus_basis_sq < factored.mean_only_sq


def test_member_svd_and_shared_factors_rebuild_the_members() -> None:
    pairs = _pairs()
    unit = _unit(pairs, (8, 8))
    u, cores, v = unit.shared_factors()
    for i in range(len(pairs)):
        left, s, right = unit.inverse_transform_svd(unit.coefficients[i])
        torch.testing.assert_close(left * s @ right.T, unit.member(i), atol=1e-10, rtol=0)
        torch.testing.assert_close(u @ cores[i] @ v.T, unit.member(i), atol=1e-10, rtol=0)
    assert unit.explained_variance_ratio.sum() <= 1 + 1e-12


def test_registry_picks_the_factored_fit_for_lora_units_only() -> None:
    lora, dense, vec = UnitSpec("w", (8, 6), lora=True), UnitSpec("w", (8, 6)), UnitSpec("b", (8,), lora=False)
    assert unit_fit_for(TuckerUnit.method, lora) is LoraTuckerUnit
    assert unit_fit_for(AutoUnit.method, lora) is LoraTuckerUnit
    assert unit_fit_for(AutoUnit.method, dense) is PCAUnit
    assert unit_fit_for(AutoUnit.method, vec) is PCAUnit
    assert unit_fit_for(TuckerUnit.method, dense) is TuckerUnit
    assert unit_fit_for(LoraTuckerUnit.method, dense) is TuckerUnit  # its fallback
    assert unit_fit_for(PCAUnit.method, lora) is PCAUnit  # pca stays available for analysis
    assert UNIT_FITS.get(LoraTuckerUnit.method) is LoraTuckerUnit


def test_shared_subspace_fits_lora_units_factored_by_default() -> None:
    pairs = _pairs()
    models = [{"q": TensorMember(factors=p, name="q").full()} for p in pairs]
    ss = SharedSubspace(n_components=4).fit(models)  # dense in-memory tensors: PCA, as before
    assert ss.method_ == {"q": PCAUnit.method}
    stack = UnitStack.from_factors(pairs, name="q")
    unit = unit_fit_for(SharedSubspace().method, stack.spec)
    assert unit is LoraTuckerUnit


def test_analysis_under_hosvd_treats_lora_units_as_tucker_units() -> None:
    from weightspace.analyze._methods import analyzer_for

    lora = UnitSpec("w", (8, 6), lora=True)
    assert analyzer_for(TuckerUnit.method, lora).method == TuckerUnit.method
    assert analyzer_for(PCAUnit.method, lora).method == PCAUnit.method
