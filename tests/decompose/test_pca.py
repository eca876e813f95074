"""Model-axis PCA: exactness, solvers, conditioning fallback, zero rank, LoRA-factored Gram, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from weightspace.decompose import pca_basis, pca_spectrum
from weightspace.decompose._gram import centered_gram, factored_gram
from weightspace.units import UnitStack

SOLVERS = ["auto", "gram", "tsqr"]


def _random(
    n: int, shape: tuple[int, ...], seed: int = 0, dtype: torch.dtype = torch.float32
) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g).to(dtype) for _ in range(n)]


def _numpy_sv(ws: list[torch.Tensor], center: bool = True) -> np.ndarray:
    x = np.stack([w.double().numpy().ravel() for w in ws])
    if center:
        x = x - x.mean(0)
    return np.linalg.svd(x, compute_uv=False)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("center", [True, False])
def test_singular_values_match_numpy_svd(solver: str, center: bool) -> None:
    ws = _random(9, (17, 13), seed=3)
    fit = pca_basis(ws, 8, center=center, svd_solver=solver, chunk_bytes=4096)  # small chunks: many passes
    want = _numpy_sv(ws, center)
    got = fit.singular_values.numpy()[: want.size]
    kept = want > 1e-12 * want[0]
    np.testing.assert_allclose(got[kept], want[kept], rtol=1e-8)


@pytest.mark.parametrize("solver", SOLVERS)
def test_full_rank_reconstructs_exactly(solver: str) -> None:
    ws = _random(7, (11, 5), seed=1)
    fit = pca_basis(ws, 6, svd_solver=solver)
    assert fit.k == 6
    for i, w in enumerate(ws):
        recon = fit.mean.reshape(-1) + fit.coefficients[i] @ fit.basis
        assert float((recon - w.double().reshape(-1)).norm() / w.double().norm()) < 1e-12
    torch.testing.assert_close(fit.basis @ fit.basis.T, torch.eye(6, dtype=torch.float64), atol=1e-10, rtol=0)


def test_solvers_agree_up_to_tolerance() -> None:
    ws = _random(10, (8, 9), seed=5)
    fits = [pca_basis(ws, 5, svd_solver=s) for s in ("gram", "tsqr")]
    torch.testing.assert_close(fits[0].singular_values, fits[1].singular_values, rtol=1e-10, atol=1e-12)
    # same sign convention on both routes
    torch.testing.assert_close(fits[0].basis, fits[1].basis, rtol=0, atol=1e-9)


def test_ill_conditioned_request_switches_to_tsqr() -> None:
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(400, 6, generator=g, dtype=torch.float64))
    scales = torch.tensor([1.0, 0.5, 0.2, 1e-4, 1e-9, 1e-10], dtype=torch.float64)
    coef = torch.randn(12, 6, generator=g, dtype=torch.float64)
    coef -= coef.mean(0)
    coef, _ = torch.linalg.qr(coef)  # orthonormal centered columns: singular values = scales
    ws = [(coef[i] * scales) @ q.T for i in range(12)]
    fit = pca_basis(ws, 5)
    assert fit.solver == "tsqr"
    np.testing.assert_allclose(fit.singular_values.numpy()[:6], scales.numpy(), rtol=1e-6)
    assert pca_basis(ws, 3).solver == "gram"  # well-conditioned request stays on the cheap route


def test_identical_models_have_rank_zero() -> None:
    w = torch.randn(6, 7)
    fit = pca_basis([w.clone() for _ in range(5)], 3)
    assert fit.k == 0
    assert float(fit.singular_values.abs().max()) == 0.0
    torch.testing.assert_close(fit.mean, w.double())
    assert fit.mean_energy_fraction == 1.0


def test_variance_fraction_picks_smallest_k() -> None:
    g = torch.Generator().manual_seed(2)
    basis = torch.linalg.qr(torch.randn(50, 3, generator=g, dtype=torch.float64))[0].T  # (3, 50)
    ws = [
        torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)
        * torch.randn(3, generator=g, dtype=torch.float64)
        @ basis
        for _ in range(40)
    ]
    fit = pca_basis(ws, 0.999999)
    assert fit.k == 3
    evr = fit.explained_variance_ratio
    assert abs(float(evr.sum()) - 1.0) < 1e-12
    assert pca_basis(ws, float(evr[0]) - 1e-6).k == 1


def test_lora_factored_gram_equals_dense_gram() -> None:
    g = torch.Generator().manual_seed(4)
    factors = [
        (torch.randn(9, 2, generator=g, dtype=torch.float64), torch.randn(2, 7, generator=g, dtype=torch.float64))
        for _ in range(6)
    ]
    stack = UnitStack.from_factors(factors)
    dense = UnitStack.from_tensors([left @ right for left, right in factors])
    for center in (True, False):
        a = factored_gram(stack, center=center)
        b = centered_gram(dense, center=center, chunk_bytes=1 << 20)
        torch.testing.assert_close(a.gram, b.gram, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(a.mean_cross, b.mean_cross, rtol=1e-10, atol=1e-10)
        assert abs(a.mean_sq_norm - b.mean_sq_norm) < 1e-9
    assert pca_spectrum(stack, 3).solver == "factored-gram"


def test_bf16_and_fp16_inputs() -> None:
    ws = _random(5, (4, 6), seed=9, dtype=torch.bfloat16)
    fit = pca_basis(ws, 4)
    np.testing.assert_allclose(fit.singular_values.numpy()[:4], _numpy_sv(ws)[:4], rtol=1e-8)
    fit16 = pca_basis([w.half() for w in _random(5, (4, 6))], 2)
    assert fit16.k == 2


def test_same_input_same_signs_and_largest_coefficient_positive() -> None:
    ws = _random(8, (5, 5), seed=11)
    a, b = pca_basis(ws, 4), pca_basis(ws, 4)
    assert torch.equal(a.basis, b.basis)
    idx = a.coefficients.abs().argmax(0)
    assert bool((a.coefficients[idx, torch.arange(4)] > 0).all())


def test_non_finite_member_names_the_tensor() -> None:
    from weightspace.errors import NonFiniteError

    ws = _random(3, (2, 2))
    ws[1][0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="tensor 'layer': 1 non-finite"):
        pca_basis(UnitStack.from_tensors(ws, name="layer"), 1)
