"""Write a report directory atomically: ``report.json``, the PNGs and ``report.html``."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from weightspace._atomic import atomic_dir, check_output
from weightspace.errors import InputError
from weightspace.report._html import render_html
from weightspace.report._plots import make_plots
from weightspace.report._schema import validate_report

__all__ = ["load_report", "write_report"]


def write_report(
    data: Mapping[str, Any], report_dir: str | os.PathLike[str], *, plots: bool = True, overwrite: bool = False
) -> Path:
    """Validate ``data``, render everything in memory, then swap ``report_dir`` into place in one step.

    Parameters
    ----------
    data : mapping
        A report (``AnalysisReport.data`` or a parsed ``report.json``).
    report_dir : path
        Created, or replaced as a whole; nothing appears there until every file is complete.
    plots : bool, default True
        Render the PNGs (needs matplotlib: a :class:`~weightspace.errors.DependencyError` is raised before
        anything is written when it is missing).
    overwrite : bool, default False
        Replace an existing ``report_dir`` that is not a weightspace report (refused otherwise, see
        :func:`weightspace._atomic.check_output`).

    Returns
    -------
    Path
        ``report_dir``.
    """
    validate_report(data)
    check_output(report_dir, "report", overwrite=overwrite)
    pngs = make_plots(dict(data)) if plots else {}
    page = render_html(data, pngs)
    text = json.dumps(data, indent=1, allow_nan=False, ensure_ascii=False)
    out = Path(report_dir)
    with atomic_dir(out, kind="report") as tmp:
        (tmp / "report.json").write_text(text + "\n", encoding="utf-8")
        for name, png in pngs.items():
            (tmp / name).write_bytes(png)
        (tmp / "report.html").write_text(page, encoding="utf-8")
    return out


def load_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a ``report.json`` (or the ``report.json`` inside a report directory).

    Parameters
    ----------
    path : path

    Returns
    -------
    dict
    """
    from weightspace._json import parse_json
    from weightspace.io import read_regular

    p = Path(path)
    if p.is_dir():
        p = p / "report.json"
    try:
        raw = read_regular(p, limit=1 << 28, what="report", missing=InputError, error=InputError)
        data = parse_json(raw, path=p, what="report", error=InputError)
    except InputError as err:
        raise InputError(f"cannot read the report ({err.message})", path=p) from None
    validate_report(data, path=p)
    return data
