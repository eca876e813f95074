"""``project``: residuals of unseen models against a saved subspace, beside the mean-only baseline.

``project(archive, models)`` is ``SharedSubspace.load(archive).project(models)``; see
:meth:`weightspace.decompose.SharedSubspace.project` for the residuals it reports.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from weightspace._progress import Progress
from weightspace.decompose import ProjectResult, SharedSubspace

__all__ = ["project"]


def project(
    archive: str | os.PathLike[str] | SharedSubspace,
    models: Sequence[str | os.PathLike[str]],
    *,
    add: bool = False,
    base: str | os.PathLike[str] | None = None,
    allow_pickle: bool = False,
    progress: Progress | None = None,
    threads: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
) -> ProjectResult:
    """Residuals of unseen models against an archive's subspace (and optionally store them in it).

    Parameters
    ----------
    archive : path or SharedSubspace
    models : sequence of path-like
        MODELS as on the command line (files, dirs, globs, ``@list``).
    add : bool, default False
        Append the projected models to the archive.
    base : path, optional
        Base model for task-vector archives (default: the recorded path; sha256 checked).
    threads, scheduler, client
        Where the units run (see :class:`~weightspace.backends.RunOptions`).

    Returns
    -------
    ProjectResult
    """
    ss = archive if isinstance(archive, SharedSubspace) else SharedSubspace.load(archive)
    return ss.project(
        models,
        add=add,
        base=base,
        allow_pickle=allow_pickle,
        progress=progress,
        threads=threads,
        scheduler=scheduler,
        client=client,
    )
