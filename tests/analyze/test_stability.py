"""Split-half overlap from Gram entries: 1 for a shared subspace, ≈ null for noise, equal to explicit bases."""

from __future__ import annotations

import torch

from weightspace.analyze import gaussian_null_gram, split_halves, subspace_overlap
from weightspace.decompose import pca_basis


def _centered_gram(x: torch.Tensor) -> torch.Tensor:
    y = x - x.mean(0)
    return y @ y.T


def test_identical_subspace_gives_one() -> None:
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(4, 300, generator=g, dtype=torch.float64)
    x = torch.randn(14, 4, generator=g, dtype=torch.float64) @ basis + 5.0  # exactly rank 4 around a mean
    a, b = split_halves(14, generator=g)
    over = subspace_overlap(_centered_gram(x), a, b, [4])
    torch.testing.assert_close(over, torch.ones(1, dtype=torch.float64))


def test_noise_overlap_matches_null() -> None:
    g = torch.Generator().manual_seed(1)
    d = 2000
    x = torch.randn(16, d, generator=g, dtype=torch.float64)
    gram = _centered_gram(x)
    a, b = split_halves(16, generator=g)
    data = subspace_overlap(gram, a, b, [1, 2, 4])
    norms = gram.diagonal().sqrt()
    null = torch.stack(
        [subspace_overlap(gaussian_null_gram(norms, d, generator=g), a, b, [1, 2, 4]) for _ in range(20)]
    ).mean(0)
    assert bool((data < 0.02).all())
    assert bool((null < 0.02).all())
    torch.testing.assert_close(data, null, atol=0.01, rtol=0)


def test_overlap_equals_explicit_principal_angles() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(10, 3, generator=g, dtype=torch.float64) @ torch.randn(3, 40, generator=g, dtype=torch.float64)
    x = x + 0.3 * torch.randn(10, 40, generator=g, dtype=torch.float64)
    a, b = split_halves(10, generator=g)
    got = subspace_overlap(_centered_gram(x), a, b, [1, 2, 3])
    va = pca_basis([x[i] for i in a.tolist()], 3).basis  # (3, 40)
    vb = pca_basis([x[i] for i in b.tolist()], 3).basis
    want = torch.tensor([float((va[:k] @ vb[:k].T).pow(2).sum()) / k for k in (1, 2, 3)], dtype=torch.float64)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=0)


def test_split_is_seeded_partition() -> None:
    a, b = split_halves(9, generator=torch.Generator().manual_seed(3))
    a2, b2 = split_halves(9, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, a2)
    assert torch.equal(b, b2)
    assert (len(a), len(b)) == (4, 5)
    assert sorted(torch.cat([a, b]).tolist()) == list(range(9))
