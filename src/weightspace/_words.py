"""Numbers in words a reader cannot misread: size ratios as "N× smaller" / "N× larger", never "0.05× smaller".

Examples
--------
>>> ratio_words(100, 25), ratio_words(100, 2100), ratio_words(100, 100)
('4.0× smaller', '21× larger', 'the same size')
"""

from __future__ import annotations

import math

__all__ = ["ratio_words"]


def _times(x: float) -> str:
    return f"{x:.1f}×" if x < 10 else f"{x:,.0f}×"


def ratio_words(reference_bytes: float, new_bytes: float) -> str:
    """How ``new_bytes`` compares with ``reference_bytes``: ``"4.0× smaller"``, ``"21× larger"``.

    Parameters
    ----------
    reference_bytes : float
        What is being replaced (e.g. the checkpoints on disk).
    new_bytes : float
        What replaces it (e.g. the archive).

    Returns
    -------
    str
        ``"R× smaller"`` with ``R = reference / new`` when new is smaller, ``"R× larger"`` with
        ``R = new / reference`` when it is larger, ``"the same size"`` within 0.5 %; one decimal below 10×.
    """
    if reference_bytes <= 0 and new_bytes <= 0:
        return "the same size"
    if new_bytes <= 0:
        return "∞× smaller"
    if reference_bytes <= 0:
        return "∞× larger"
    r = reference_bytes / new_bytes
    if math.isclose(r, 1.0, rel_tol=5e-3):
        return "the same size"
    return f"{_times(r)} smaller" if r > 1 else f"{_times(1 / r)} larger"
