"""Progress reporting shared by long-running library calls: ``progress(stage, done, total)``."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Progress", "report"]

Progress = Callable[[str, int, int], None]


def report(progress: Progress | None, stage: str, done: int, total: int) -> None:
    """Call ``progress`` if one was given."""
    if progress is not None:
        progress(stage, done, total)
