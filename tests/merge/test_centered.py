"""Summing the centered task vectors' PCA coefficients is the mean (``weightspace.merge._centered``)."""

from __future__ import annotations

import torch

from weightspace.merge import centered_coefficient_sum


def test_centered_coefficient_sum_is_the_mean_on_random_deltas() -> None:
    g = torch.Generator().manual_seed(0)
    deltas = [torch.randn(5, 7, generator=g, dtype=torch.float64) for _ in range(4)]
    torch.testing.assert_close(centered_coefficient_sum(deltas), torch.stack(deltas).mean(0), atol=1e-12, rtol=0)
