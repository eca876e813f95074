"""Summing the coefficients of *centered* task vectors in their PCA basis is identically the mean.

The merge benchmark (:func:`weightspace.bench.merge_benchmark`) runs :func:`centered_coefficient_sum` as a
merge method to *measure* that identity on real task vectors (DESIGN §4).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["centered_coefficient_sum"]


def centered_coefficient_sum(deltas: Sequence[Tensor]) -> Tensor:
    """The "merge" that sums the coefficients of the centered task vectors in their PCA basis.

    With :math:`\\mu = \\frac1N\\sum_i \\delta_i`, the centered PCA
    :math:`\\delta_i - \\mu = \\sum_j c_{ij} v_j` and the merge :math:`\\mu + \\sum_j (\\sum_i c_{ij}) v_j`: since
    :math:`\\sum_i (\\delta_i - \\mu) = 0`, every :math:`\\sum_i c_{ij}` is zero and the result is the mean, up to
    rounding. Kept to *measure* that identity.

    Parameters
    ----------
    deltas : sequence of Tensor
        N task vectors of one unit, each ``(d,)`` or ``(d_out, d_in)``.

    Returns
    -------
    Tensor
        float64, same shape as one delta.

    Examples
    --------
    >>> import torch
    >>> ds = [torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 3.0, 1.0]), torch.tensor([2.0, 0.0, -1.0])]
    >>> torch.allclose(centered_coefficient_sum(ds), torch.stack(ds).double().mean(0))
    True
    """
    x = torch.stack([d.reshape(-1).to(torch.float64) for d in deltas])  # (n_models, numel)
    mu = x.mean(dim=0)
    u, s, vh = torch.linalg.svd(x - mu, full_matrices=False)  # (n, r), (r,), (r, numel)
    coefficients = u * s  # (n_models, r): row i holds model i's coordinates in the centered basis
    return (mu + coefficients.sum(dim=0) @ vh).reshape(deltas[0].shape)
