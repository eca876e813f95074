"""Intervals for the demo's accuracy comparisons: a Bayesian bootstrap over models (or tasks), paired."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["paired_interval"]


def paired_interval(rows: Sequence[dict[str, Any]], a: str, b: str | float, seed: int) -> dict[str, Any]:
    """Mean over rows of ``row[a] − row[b]`` (``b`` a column or a constant), with its 90 % bootstrap interval.

    The same model (or task) appears on both sides, so the differences are resampled, not the two columns
    separately. Weights are Bayesian-bootstrap weights (:func:`weightspace.analyze.bootstrap_weights`) and the
    interval is the normal one of :func:`weightspace.analyze.bootstrap_interval`, like every interval of the
    analysis.

    Examples
    --------
    >>> rows = [{"x": 0.9, "y": 0.5}, {"x": 0.8, "y": 0.5}, {"x": 0.7, "y": 0.6}]
    >>> iv = paired_interval(rows, "x", "y", seed=0)
    >>> round(iv["point"], 3), iv["lo"] < iv["point"] < iv["hi"], iv["n"]
    (0.267, True, 3)
    """
    from weightspace.analyze import N_BOOT, bootstrap_interval, bootstrap_weights

    diffs = torch.tensor(
        [float(r[a]) - (float(b) if isinstance(b, int | float) else float(r[b])) for r in rows],
        dtype=torch.float64,
    )
    point = float(diffs.mean())
    if diffs.numel() < 2:
        return {"point": point, "lo": float("nan"), "hi": float("nan"), "n": int(diffs.numel())}
    w = bootstrap_weights(diffs.numel(), N_BOOT, generator=torch.Generator().manual_seed(seed))
    samples = (w * diffs).sum(dim=1) / w.sum(dim=1)
    return {**bootstrap_interval(samples, point=point), "n": int(diffs.numel())}
