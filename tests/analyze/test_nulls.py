"""The Wishart/Bartlett null Gram has the distribution of explicit Gaussian Grams, and is seeded."""

from __future__ import annotations

import pytest
import torch

from weightspace.analyze import (
    gaussian_null_gram,
    lora_null_gram,
    matched_gram,
    mp_edge_evr,
    spectrum_evr,
    wishart_gram,
)
from weightspace.errors import ParameterError

DRAWS = 400


def _explicit_null_top_evr(norms: torch.Tensor, d: int, g: torch.Generator) -> float:
    z = torch.randn(norms.numel(), d, generator=g, dtype=torch.float64)  # (n, d)
    z = z / z.norm(dim=1, keepdim=True) * norms[:, None]
    z = z - z.mean(0)
    return float(spectrum_evr(z @ z.T)[0])


def test_bartlett_matches_direct_moments() -> None:
    n, d = 6, 40
    gb, gd = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    wb = torch.stack([wishart_gram(n, d, generator=gb, method="bartlett") for _ in range(DRAWS)])
    wd = torch.stack([wishart_gram(n, d, generator=gd, method="direct") for _ in range(DRAWS)])
    off = ~torch.eye(n, dtype=torch.bool)
    for w in (wb, wd):
        # Wishart(d, I): E W = d I, Var W_ij = d (i ≠ j), Var W_ii = 2d
        assert abs(float(w.diagonal(dim1=1, dim2=2).mean()) / d - 1) < 0.02
        assert abs(float(w[:, off].mean())) < 0.3
        assert abs(float(w[:, off].var()) / d - 1) < 0.1
        assert abs(float(w.diagonal(dim1=1, dim2=2).var()) / (2 * d) - 1) < 0.2


def test_matched_null_top_evr_matches_explicit_gaussians() -> None:
    norms = torch.tensor([1.0, 2.0, 0.5, 1.5, 1.0, 3.0, 1.2], dtype=torch.float64)
    d = 60
    g1, g2 = torch.Generator().manual_seed(2), torch.Generator().manual_seed(3)
    fast = [float(spectrum_evr(gaussian_null_gram(norms, d, generator=g1))[0]) for _ in range(DRAWS)]
    slow = [_explicit_null_top_evr(norms, d, g2) for _ in range(DRAWS)]
    assert abs(sum(fast) / DRAWS - sum(slow) / DRAWS) < 0.01


def test_null_gram_is_deterministic_and_centered() -> None:
    norms = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    a = gaussian_null_gram(norms, 10_000, generator=torch.Generator().manual_seed(5))
    b = gaussian_null_gram(norms, 10_000, generator=torch.Generator().manual_seed(5))
    c = gaussian_null_gram(norms, 10_000, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    torch.testing.assert_close(a.sum(dim=1), torch.zeros(4, dtype=torch.float64), atol=1e-9, rtol=0)
    # before centering the rows have exactly the matched norms
    w = wishart_gram(4, 10_000, generator=torch.Generator().manual_seed(5))
    scaled = w / torch.outer(w.diagonal().sqrt(), w.diagonal().sqrt()) * torch.outer(norms, norms)
    torch.testing.assert_close(scaled.diagonal(), norms**2)
    torch.testing.assert_close(matched_gram(w, norms), a)


def test_lora_null_matches_explicit_rank_r_updates() -> None:
    n, r, rows, cols = 5, 2, 12, 9
    norms = torch.ones(n, dtype=torch.float64)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(8)
    draws = 200
    fast = [float(spectrum_evr(lora_null_gram(norms, [r] * n, rows, cols, generator=g1))[0]) for _ in range(draws)]
    slow = []
    for _ in range(draws):
        dw = torch.stack(
            [
                (
                    torch.randn(rows, r, generator=g2, dtype=torch.float64)
                    @ torch.randn(r, cols, generator=g2, dtype=torch.float64)
                ).reshape(-1)
                for _ in range(n)
            ]
        )  # (n, rows * cols)
        dw = dw / dw.norm(dim=1, keepdim=True)
        dw = dw - dw.mean(0)
        slow.append(float(spectrum_evr(dw @ dw.T)[0]))
    assert abs(sum(fast) / draws - sum(slow) / draws) < 0.012


def test_lora_null_skips_huge_rank_sums() -> None:
    assert (
        lora_null_gram(torch.ones(3, dtype=torch.float64), [2000] * 3, 8, 8, generator=torch.Generator()) is None
    )


def test_mp_edge_evr() -> None:
    # N − 1 = 16 components of isotropic noise: the edge sits just above 1/16 when D ≫ N
    assert 1 / 16 < mp_edge_evr(17, 100_000) < 1 / 16 * 1.03
    assert mp_edge_evr(2, 10) == 1.0
    assert mp_edge_evr(101, 100) == pytest.approx(4 / 100)


def test_wishart_parameter_errors() -> None:
    with pytest.raises(ParameterError, match="Bartlett decomposition needs dof >= n"):
        wishart_gram(5, 3, generator=torch.Generator(), method="bartlett")
    with pytest.raises(ParameterError, match="must be one of 'auto', 'bartlett', 'direct'"):
        wishart_gram(5, 30, generator=torch.Generator(), method="qr")  # type: ignore[arg-type]
