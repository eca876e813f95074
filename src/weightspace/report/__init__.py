"""Reports of an analysis: ``report.json`` (stable keys), matplotlib PNGs, one self-contained HTML page, and a
short terminal summary.

The renderers take the report as plain data (``AnalysisReport.data`` or a parsed ``report.json``), so a saved
report can be re-rendered without the models.
"""

from weightspace.report._html import render_html
from weightspace.report._plots import (
    PLOT_CAPTIONS,
    VERDICT_COLORS,
    make_plots,
    require_matplotlib,
    spectrum_figure,
)
from weightspace.report._schema import (
    LOO_KEYS,
    REPORT_KEYS,
    STABILITY_KEYS,
    SUMMARY_KEYS,
    UNIT_KEYS,
    validate_report,
)
from weightspace.report._terminal import print_summary
from weightspace.report._write import load_report, write_report

__all__ = [
    "LOO_KEYS",
    "PLOT_CAPTIONS",
    "REPORT_KEYS",
    "STABILITY_KEYS",
    "SUMMARY_KEYS",
    "UNIT_KEYS",
    "VERDICT_COLORS",
    "load_report",
    "make_plots",
    "print_summary",
    "render_html",
    "require_matplotlib",
    "spectrum_figure",
    "validate_report",
    "write_report",
]
