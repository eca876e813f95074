"""Honest words for a measured size ratio: "21.3× smaller" or "21.3× larger", never "0.05× smaller"."""

from __future__ import annotations

__all__ = ["ratio_words"]


def _times(x: float) -> str:
    if x < 10:
        return f"{x:.2f}"
    if x < 100:
        return f"{x:.1f}"
    return f"{x:.0f}"


def ratio_words(models_bytes: float, archive_bytes: float) -> str:
    """How an archive's size compares with the models it stores, in words.

    Parameters
    ----------
    models_bytes : int or float
        Size of the source checkpoints (or adapters).
    archive_bytes : int or float
        Size of the archive (``ratio_words(ratio, 1)`` words a ratio ``models / archive``).

    Returns
    -------
    str
        ``"<x>× smaller"`` or ``"<x>× larger"`` with ``x ≥ 1`` (or ``"the same size"``).

    Examples
    --------
    >>> ratio_words(1_850_000, 86_900)
    '21.3× smaller'
    >>> ratio_words(1_850_000, 42_500_000)
    '23.0× larger'
    >>> ratio_words(10, 10)
    'the same size'
    >>> ratio_words(0.05, 1)
    '20.0× larger'
    """
    if models_bytes <= 0 or archive_bytes <= 0:
        return f"{archive_bytes} bytes for {models_bytes} bytes of models"
    if archive_bytes < models_bytes:
        return f"{_times(models_bytes / archive_bytes)}× smaller"
    if archive_bytes > models_bytes:
        return f"{_times(archive_bytes / models_bytes)}× larger"
    return "the same size"
