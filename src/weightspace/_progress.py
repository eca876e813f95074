"""Progress reporting shared by long-running library calls: ``progress(stage, done, total)``.

Library code only calls a ``progress`` callback (:func:`report`). How progress is shown is the caller's choice; the
CLI shows rich bars on a terminal and, when stderr is not a terminal (a pipe, a log file, CI), periodic plain lines
written by :class:`ProgressLines`:

.. code-block:: text

    compress: units 3/12 (25%), 0:04 elapsed, ETA 0:12

Examples
--------
>>> lines = []
>>> ticks = iter([0.0, 1.0, 2.0, 30.0, 31.0])
>>> p = ProgressLines(lines.append, prefix="compress", interval=10, clock=lambda: next(ticks))
>>> for done in range(5):
...     p("units", done, 4)
>>> lines  # the start, one line every 10 s, and the end
['compress: units 0/4 (0%), 0:00 elapsed', 'compress: units 3/4 (75%), 0:30 elapsed, ETA 0:10', \
'compress: units 4/4 (100%), 0:31 elapsed, done']
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Progress", "ProgressLines", "format_duration", "report"]

Progress = Callable[[str, int, int], None]

#: Seconds between two plain progress lines of one stage (the start and the end of a stage are always printed).
DEFAULT_INTERVAL = 10.0


def report(progress: Progress | None, stage: str, done: int, total: int) -> None:
    """Call ``progress`` if one was given."""
    if progress is not None:
        progress(stage, done, total)


def format_duration(seconds: float) -> str:
    """``m:ss`` (or ``h:mm:ss``) for a duration in seconds.

    Examples
    --------
    >>> format_duration(5.2), format_duration(75), format_duration(3725)
    ('0:05', '1:15', '1:02:05')
    """
    s = max(0, round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


@dataclass
class _Stage:
    start: float
    last_line: float
    finished: bool = False


class ProgressLines:
    """A ``progress(stage, done, total)`` callback that writes plain lines: stage, done/total, elapsed, ETA.

    A line is written when a stage is first reported, then at most every ``interval`` seconds, and when the stage
    completes (``done >= total``). The ETA extrapolates the stage's elapsed time linearly over what is left.

    Parameters
    ----------
    write : callable
        Receives one line (without a newline), e.g. ``console.print`` or ``list.append``.
    prefix : str, optional
        What the command is doing (``"compress"``), put before the stage name.
    interval : float, default 10
        Minimum seconds between two lines of one stage.
    clock : callable, optional
        Monotonic seconds (for tests); default :func:`time.monotonic`.
    """

    def __init__(
        self,
        write: Callable[[str], object],
        *,
        prefix: str = "",
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.write = write
        self.prefix = prefix
        self.interval = float(interval)
        self.clock = clock
        self._stages: dict[str, _Stage] = {}

    def _line(self, stage: str, done: int, total: int, elapsed: float) -> str:
        head = f"{self.prefix}: {stage}" if self.prefix else stage
        if total > 0:
            pct = 100.0 * min(done, total) / total
            text = f"{head} {done}/{total} ({pct:.0f}%), {format_duration(elapsed)} elapsed"
        else:
            text = f"{head} {done}, {format_duration(elapsed)} elapsed"
        if total > 0 and done >= total:
            return text + ", done"
        if total > 0 and 0 < done < total and elapsed > 0:
            return text + f", ETA {format_duration(elapsed * (total - done) / done)}"
        return text

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = self.clock()
        st = self._stages.get(stage)
        if st is None or (st.finished and done < total):
            # A new stage, or a stage name reused after it finished (a new round of the same work).
            st = self._stages[stage] = _Stage(start=now, last_line=now)
            self.write(self._line(stage, done, total, 0.0))
            if total > 0 and done >= total:
                st.finished = True
            return
        if st.finished:
            return
        complete = total > 0 and done >= total
        if complete or now - st.last_line >= self.interval:
            st.last_line = now
            st.finished = complete
            self.write(self._line(stage, done, total, now - st.start))
