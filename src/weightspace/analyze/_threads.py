"""Run N × N algebra on one intra-op thread.

After the streamed data pass, everything ``analyze`` does is on N × N matrices (N = number of models, usually
≤ a few hundred): hundreds of eigendecompositions and small products. For such sizes torch's intra-op thread pool
costs more than it gains (each small op pays a fork/join, and on a busy machine a descheduled worker stalls
the op for a whole time slice), so these sections run single-threaded and restore the setting afterwards. The
data pass itself (large ``addmm``) keeps every thread.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["single_thread"]


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Limit torch to one intra-op thread inside the block (process-wide; restored on exit)."""
    previous = torch.get_num_threads()
    if previous > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if previous > 1:
            torch.set_num_threads(previous)
