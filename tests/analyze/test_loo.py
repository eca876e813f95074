"""Held-out evaluation from Gram entries equals refitting PCA without the held-out models."""

from __future__ import annotations

import pytest
import torch

from weightspace.analyze import heldout_evr_from_gram, heldout_from_gram, make_folds
from weightspace.decompose import pca_basis, pca_spectrum
from weightspace.errors import ParameterError
from weightspace.units import UnitStack


def _brute_force(x: torch.Tensor, folds: list[torch.Tensor], ks: list[int]) -> dict[str, torch.Tensor]:
    """Refit with pca_basis on the training models, project every held-out model explicitly."""
    n = x.shape[0]
    mo = torch.zeros(n, dtype=torch.float64)
    bo = torch.zeros(n, len(ks), dtype=torch.float64)
    mb = torch.zeros(n, len(ks), dtype=torch.float64)
    for held in folds:
        train = [i for i in range(n) if i not in held.tolist()]
        fit = pca_basis([x[i] for i in train], max(ks), svd_solver="tsqr")
        mean, basis = fit.mean.reshape(-1), fit.basis  # (D,), (k, D)
        for h in held.tolist():
            xh = x[h]
            z = xh - mean
            mo[h] = z.norm() / xh.norm()
            for j, k in enumerate(ks):
                v = basis[:k]
                mb[h, j] = (z - v.T @ (v @ z)).norm() / xh.norm()
                bo[h, j] = (xh - v.T @ (v @ xh)).norm() / xh.norm()
    return {"mean_only": mo, "basis_only": bo, "mean_plus_basis": mb}


def _gram_route(x: torch.Tensor, folds: list[torch.Tensor], ks: list[int]):
    sp = pca_spectrum(UnitStack.from_tensors(list(x)), 1)
    return heldout_from_gram(sp.gram.gram, sp.gram.mean_cross, sp.gram.mean_sq_norm, folds, ks)


@pytest.mark.parametrize(
    ("n", "d", "offset", "n_folds"),
    [(7, 30, 0.0, None), (9, 25, 0.0, 3), (8, 40, 50.0, None), (6, 4, 1.0, None)],
)
def test_gram_loo_matches_brute_force(n: int, d: int, offset: float, n_folds: int | None) -> None:
    g = torch.Generator().manual_seed(n * 100 + d)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) + offset * torch.randn(
        d, generator=g, dtype=torch.float64
    )
    folds = make_folds(n, n_folds, generator=torch.Generator().manual_seed(0))
    n_train = n - max(len(f) for f in folds)
    ks = sorted({1, 2, min(3, n_train - 1, d - 1), min(d - 1, n_train - 1)})
    got = _gram_route(x, folds, ks)
    want = _brute_force(x, folds, ks)
    for key in ("mean_only", "basis_only", "mean_plus_basis"):
        torch.testing.assert_close(getattr(got, key), want[key], atol=1e-8, rtol=0)


def test_exact_fit_reaches_the_gram_precision_floor() -> None:
    # D = 4 < N − 1: a 4-component training basis spans everything, the true mean+basis residual is 0. The Gram
    # route computes ‖r‖² as a difference of Gram entries, so a zero residual comes out at ~sqrt(eps)·‖x‖.
    g = torch.Generator().manual_seed(11)
    x = torch.randn(7, 4, generator=g, dtype=torch.float64)
    got = _gram_route(x, make_folds(7), [4])
    assert float(got.mean_plus_basis.max()) < 1e-7
    assert float(got.basis_only.max()) < 1e-7


def test_heldout_evr_is_pooled_energy_and_null_helper_agrees() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 50, generator=g, dtype=torch.float64)
    y = x - x.mean(0)
    folds = make_folds(8)
    res = heldout_from_gram(y @ y.T, y @ x.mean(0), float(x.mean(0) @ x.mean(0)), folds, [1, 3])
    want = 1 - res.mean_plus_basis_sq.sum(0) / res.mean_only_sq.sum()
    torch.testing.assert_close(res.heldout_evr, want)
    torch.testing.assert_close(heldout_evr_from_gram(y @ y.T, folds, [1, 3]), want)
    assert bool(((want >= 0) & (want <= 1)).all())


def test_identical_models_give_zero_errors_and_nan_heldout_evr() -> None:
    x = torch.ones(5, 6, dtype=torch.float64)
    sp = pca_spectrum(UnitStack.from_tensors(list(x)), 1)
    res = heldout_from_gram(sp.gram.gram, sp.gram.mean_cross, sp.gram.mean_sq_norm, make_folds(5), [1, 2])
    assert float(res.mean_only.abs().max()) == 0.0
    assert bool(torch.isnan(res.heldout_evr).all())


def test_folds_partition_and_are_seeded() -> None:
    folds = make_folds(23, 5, generator=torch.Generator().manual_seed(7))
    assert sorted(torch.cat(folds).tolist()) == list(range(23))
    assert {len(f) for f in folds} <= {4, 5}
    again = make_folds(23, 5, generator=torch.Generator().manual_seed(7))
    assert all(torch.equal(a, b) for a, b in zip(folds, again, strict=True))
    with pytest.raises(ParameterError, match=r"'folds' parameter must be an int in \[2, 23\]"):
        make_folds(23, 1, generator=torch.Generator())
