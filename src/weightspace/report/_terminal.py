"""A short rich summary of a report for the terminal (stderr by default, so ``--json`` keeps stdout clean)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["print_summary"]

_ABBR = {"shared-subspace": "S", "mean-dominated": "M", "null-like": "N"}
_STYLE = {"shared-subspace": "bold green", "mean-dominated": "bold yellow", "null-like": "dim"}


def _f(x: Any) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def _fs(x: Any) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:+.3f}"


def _f0(x: Any) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.0f}"


#: What every column of the summary means (printed under the table).
LEGEND = (
    "verdicts: units per verdict, S shared-subspace, M mean-dominated, N null-like; (vec): biases and norms",
    "k90/null: components holding 90 % of the centered variance (mean over units, rounded), and on the matched "
    "Gaussian null",
    "excess: largest cumulative EVR above the highest null draw for k ≤ k; k: components the verdict tests",
    "held-out EVR/null: share of a held-out model's deviation from the others' mean that their top-k basis "
    "captures, and on the null",
    "mean E: mean energy fraction ‖μ‖² / (‖μ‖² + mean ‖x − μ‖²)",
    "held-out err mean/m+b: relative error of a held-out model rebuilt from the others' mean only, and from "
    "their mean+basis (lower is better)",
)


def print_summary(data: Mapping[str, Any], console: Any = None) -> None:
    """Print the headline and one row per unit type.

    Parameters
    ----------
    data : mapping
        A report (``AnalysisReport.data`` or a parsed ``report.json``).
    console : rich.console.Console, optional
        Default: a console on stderr.
    """
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console(stderr=True, highlight=False)
    s = data["summary"]
    verdict = s["headline"]["verdict"]
    console.print(
        Text(s["headline"]["text"], style=_STYLE.get(verdict, "bold"))
    )  # Text objects: unit names and shapes are never parsed as markup, whatever the console's setting
    t = Table(
        title=f"{data['n_models']} models, {data['method']}, {data['folds']['scheme']}; means at k",
        box=None,
        title_justify="left",
    )
    # Numbers never wrap or get cut; the unit type folds onto more lines when the terminal is narrow.
    t.add_column("unit type", overflow="fold", ratio=1, min_width=10)
    t.add_column("verdicts", no_wrap=True)
    for col in ("k90\n/null", "excess", "k", "held-out\nEVR/null", "mean E", "held-out err\nmean/m+b"):
        t.add_column(col, justify="right", no_wrap=True)
    for g in s["groups"]:
        verdicts = Text(" ").join(
            Text(f"{n}{_ABBR[v]}", style=_STYLE[v]) for v, n in g["verdict_counts"].items() if n
        )
        t.add_row(
            Text(g["type"] + (" (vec)" if g["kind"] == "vector" else "")),
            verdicts,
            f"{_f0(g.get('k90'))}/{_f0(g.get('null_k90'))}",
            _fs(g.get("spectrum_excess_max")),
            ",".join(str(k) for k in g["k_ref"]),
            f"{_f(g['heldout_evr_at_k_ref'])}/{_f(g['null_heldout_evr_at_k_ref'])}",
            _f(g["mean_energy_fraction"]),
            f"{_f(g['loo_mean_only'])}/{_f(g['loo_mean_plus_basis_at_k_ref'])}",
        )
    console.print(t)
    for line in LEGEND:
        console.print(Text(line, style="dim"))
