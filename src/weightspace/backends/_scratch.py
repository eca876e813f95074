"""Per-thread scratch buffers reused from one unit to the next inside a run.

A fresh multi-megabyte tensor costs a page fault per 4 KiB page on first touch (allocations this large bypass
malloc's free lists), which for a float64 chunk stream is several times the cost of filling it. Inside a
:func:`scratch_scope` (every executor opens one per worker thread, and around each Dask task), :func:`take` hands
out this thread's previous buffer when it is large enough and :func:`give` returns it; outside a scope they
allocate and drop, so library calls made directly keep no memory behind. A buffer is owned by one taker at a time.

Examples
--------
>>> with scratch_scope():
...     a = take(1000)
...     give(a)
...     b = take(500)
...     b.data_ptr() == a.data_ptr()
True
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

__all__ = ["give", "scratch_for_thread", "scratch_scope", "take"]

_LOCAL = threading.local()


@contextlib.contextmanager
def scratch_scope() -> Iterator[None]:
    """Reuse scratch buffers in this thread inside the block; they are released when the outermost block ends."""
    outer = getattr(_LOCAL, "pool", None)
    if outer is None:
        _LOCAL.pool = {}
    try:
        yield
    finally:
        if outer is None:
            _LOCAL.pool = None


def scratch_for_thread() -> None:
    """Reuse scratch buffers in this thread until it exits (for pool threads that live for one run)."""
    if getattr(_LOCAL, "pool", None) is None:
        _LOCAL.pool = {}


def take(numel: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A flat buffer of at least ``numel`` entries (contents undefined); slice ``[:numel]`` to use it."""
    pool = getattr(_LOCAL, "pool", None)
    if pool is not None:
        buf = pool.pop(dtype, None)
        if buf is not None and buf.numel() >= numel:
            return buf
    return torch.empty(max(numel, 1), dtype=dtype)


def give(buf: torch.Tensor) -> None:
    """Return a buffer from :func:`take` for the next taker in this thread (kept only inside a scope)."""
    pool = getattr(_LOCAL, "pool", None)
    if pool is None:
        return
    held = pool.get(buf.dtype)
    if held is None or held.numel() < buf.numel():
        pool[buf.dtype] = buf
