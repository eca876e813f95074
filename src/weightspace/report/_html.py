"""One self-contained ``report.html``: plots embedded as base64 data URIs, inline CSS, no external assets.

Read top to bottom: the headline verdict, a summary per unit type, the per-unit table, the plots, and the method
notes (what the null is, the thresholds, the held-out policy). Every number printed is read from the report.

Every column header is explained in a legend under its table, with one spelling per term ("held-out mean-only",
"held-out basis-only", "held-out mean+basis"); wide tables scroll sideways with their first column kept in view.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping
from typing import Any

from weightspace.report._plots import PLOT_CAPTIONS, VERDICT_COLORS

__all__ = ["render_html"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1200px;
color:#222;line-height:1.45;padding:0 16px}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.sub{color:#666}.headline{border-left:6px solid #888;background:#f6f7f8;padding:12px 16px;margin:16px 0;
font-size:1.1em}.chip{display:inline-block;padding:2px 10px;border-radius:12px;color:#fff;margin-right:6px;
font-size:.9em}table{border-collapse:collapse;font-size:.82em;margin:8px 0;width:100%}
th,td{border:1px solid #ddd;padding:3px 6px;text-align:right;white-space:nowrap}
th{background:#f0f1f3;position:sticky;top:0;z-index:2}td.l,th.l{text-align:left}
.tbl{max-height:640px;overflow:auto;border:1px solid #eee}figure{margin:18px 0}
.tbl td:first-child,.tbl th:first-child{position:sticky;left:0;z-index:1;background:#fff;
box-shadow:1px 0 0 #ddd}.tbl th:first-child{z-index:3;background:#f0f1f3}
dl.legend{font-size:.82em;color:#444;display:grid;grid-template-columns:max-content auto;gap:2px 12px;
margin:4px 0 16px}dl.legend dt{font-weight:600;white-space:nowrap}dl.legend dd{margin:0}
figure img{max-width:100%;border:1px solid #eee}figcaption{color:#555;font-size:.9em}
code{background:#f3f3f3;padding:0 3px;border-radius:3px}ul.notes li{margin-bottom:.4em}
"""


def _f(x: Any, digits: int = 3, sign: bool = False) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "n/a"
        return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"
    return html.escape(str(x))


def _words(x: Any) -> str:
    """A value as words: nested mappings and lists are spelled out (never a raw dict on the page)."""
    if isinstance(x, Mapping):
        return "; ".join(f"{html.escape(str(k))} = {_words(v)}" for k, v in x.items()) or "none"
    if isinstance(x, list | tuple):
        return ", ".join(_words(v) for v in x) or "none"
    return _f(x)


def _chip(verdict: str, text: str | None = None) -> str:
    color = VERDICT_COLORS.get(verdict, "#666")
    return f'<span class="chip" style="background:{color}">{html.escape(text or verdict)}</span>'


def _headline(data: Mapping[str, Any]) -> str:
    s = data["summary"]
    h = s["headline"]
    color = VERDICT_COLORS.get(h["verdict"], "#888")
    counts = " ".join(_chip(v, f"{v}: {n}") for v, n in s["verdict_counts"].items())
    return (
        f'<div class="headline" style="border-left-color:{color}"><b>{html.escape(h["text"])}</b>'
        f"<div style='margin-top:8px'>All units: {counts}</div></div>"
    )


# What every column header means (the legends under the tables); one spelling per term.
LEGEND: dict[str, str] = {
    "unit type": "units grouped by their key with layer numbers replaced by * (one row per kind of weight)",
    "unit": "the tensor key (one weight, stacked across the models); hover a row for the comparisons behind its "
    "verdict",
    "kind": "matrix: a ≥2-D weight (conv kernels flattened per output channel); vector: a bias or norm",
    "units": "how many units this type has",
    "verdicts": "how many of its units got each verdict (the rule is under Method notes)",
    "verdict": "shared-subspace, mean-dominated or null-like (the rule is under Method notes)",
    "depth": "layer index read from the key (blank where the key has none)",
    "shape": "the weight's shape",
    "N": "number of models",
    "k90 (null)": "components that hold 90 % of the centered variance, averaged over the type's units and "
    "rounded (in brackets: the same for the matched Gaussian null)",
    "k90": "components that hold 90 % of the centered variance",
    "null k90": "the same for the matched Gaussian null (mean over draws)",
    "k": "the number of components the verdict is tested at (k_ref, capped by what the folds allow)",
    "EVR@k": "in-sample cumulative explained-variance ratio of the top k components",
    "null EVR@k": "the same for the matched Gaussian null, mean over draws (in brackets: the highest draw)",
    "rank-r LoRA null EVR@k": "the same for a rank-r Gaussian ΔW null, LoRA units only (in brackets: the highest draw)",
    "spectrum excess": "largest (cumulative EVR − highest null draw) over k ≤ k_ref, and the k where it occurs",
    "MP edge": "explained-variance ratio at the Marchenko–Pastur edge of pure noise of this size",
    "top EVR": "explained-variance ratio of the first component",
    "mean energy": "‖μ‖² / (‖μ‖² + mean ‖x_i − μ‖²): the share of the models' energy in their mean",
    "held-out mean-only": "relative error ‖x − μ‖ / ‖x‖ of a held-out model rebuilt from the others' mean alone",
    "held-out basis-only": "relative error of a held-out model rebuilt from the others' top-k basis alone (no mean)",
    "held-out mean+basis": "relative error of a held-out model rebuilt from the others' mean plus top-k basis",
    "held-out EVR@k": "share of a held-out model's deviation from the others' mean that their top-k basis captures",
    "null held-out EVR@k": "the same for the matched Gaussian null (in brackets: the highest draw)",
    "overlap": "split-half stability: ‖V_A V_Bᵀ‖²_F / k between the top-k subspaces of two disjoint halves "
    "(1: the same subspace; about k/D at random), at the k in brackets",
    "null overlap": "the same on the matched Gaussian null",
}


def _legend(cols: list[str]) -> str:
    items = "".join(f"<dt>{html.escape(c)}</dt><dd>{html.escape(LEGEND[c])}</dd>" for c in cols)
    return f"<dl class='legend'>{items}</dl>"


def _group_table(data: Mapping[str, Any]) -> str:
    cols = [
        "unit type",
        "kind",
        "units",
        "verdicts",
        "k90 (null)",
        "k",
        "EVR@k",
        "null EVR@k",
        "held-out EVR@k",
        "null held-out EVR@k",
        "mean energy",
        "held-out mean-only",
        "held-out basis-only",
        "held-out mean+basis",
        "spectrum excess",
        "overlap",
        "null overlap",
    ]
    left = {"unit type", "kind", "verdicts"}
    head = "<tr>" + "".join(f"<th{' class=l' if c in left else ''}>{html.escape(c)}</th>" for c in cols) + "</tr>"
    rows = []
    for g in data["summary"]["groups"]:
        verdicts = " ".join(_chip(v, f"{n} {v}") for v, n in g["verdict_counts"].items() if n)
        rows.append(
            f"<tr><td class='l'>{html.escape(g['type'])}</td><td class='l'>{g['kind']}</td><td>{g['n_units']}</td>"
            f"<td class='l'>{verdicts}</td><td>{_f(g.get('k90'), 0)} ({_f(g.get('null_k90'), 0)})</td>"
            f"<td>{', '.join(str(k) for k in g['k_ref'])}</td>"
            f"<td>{_f(g['evr_at_k_ref'])}</td><td>{_f(g['null_evr_at_k_ref'])}</td>"
            f"<td>{_f(g['heldout_evr_at_k_ref'])}</td><td>{_f(g['null_heldout_evr_at_k_ref'])}</td>"
            f"<td>{_f(g['mean_energy_fraction'])}</td><td>{_f(g['loo_mean_only'])}</td>"
            f"<td>{_f(g['loo_basis_only_at_k_ref'])}</td><td>{_f(g['loo_mean_plus_basis_at_k_ref'])}</td>"
            f"<td>{_f(g['spectrum_excess_max'], sign=True)}</td>"
            f"<td>{_f(g['overlap'])} ({', '.join(str(k) for k in g['stability_k'])})</td>"
            f"<td>{_f(g['null_overlap'])}</td></tr>"
        )
    return f"<div class='tbl'><table>{head}{''.join(rows)}</table></div>{_legend(cols)}"


def _unit_table(data: Mapping[str, Any]) -> str:
    lora = any(u.get("lora") for u in data["units"])
    cols = ["unit", "verdict", "depth", "shape", "N", "k", "EVR@k", "null EVR@k", "spectrum excess"]
    cols += ["rank-r LoRA null EVR@k"] if lora else []
    cols += ["k90", "null k90", "MP edge", "top EVR", "mean energy", "held-out mean-only", "held-out basis-only"]
    cols += ["held-out mean+basis", "held-out EVR@k", "null held-out EVR@k", "overlap", "null overlap"]
    left = {"unit", "verdict", "shape"}
    head = "<tr>" + "".join(f"<th{' class=l' if c in left else ''}>{html.escape(c)}</th>" for c in cols) + "</tr>"
    rows = []
    for u in data["units"]:
        a = u["at_k_ref"]
        cells = [
            f"<td class='l'>{html.escape(u['name'])}</td>",
            f"<td class='l'>{_chip(u['verdict'])}</td>",
            f"<td>{_f(u['depth'])}</td>",
            f"<td class='l'>{'×'.join(str(s) for s in u['shape'])}</td>",
            f"<td>{u['n_models']}</td>",
            f"<td>{a['k']}</td>",
            f"<td>{_f(a['evr'])}</td>",
            f"<td>{_f(a['null_evr'])} ({_f(a['null_evr_hi'])})</td>",
            f"<td>{_f(a.get('spectrum_excess'), sign=True)} ({_f(a.get('spectrum_excess_k'))})</td>",
        ]
        if lora:
            cells.append(f"<td>{_f(a.get('lora_null_evr'))} ({_f(a.get('lora_null_evr_hi'))})</td>")
        cells += [
            f"<td>{u['k90']}</td>",
            f"<td>{_f(u['null_k90'])}</td>",
            f"<td>{_f(u['mp']['edge_evr'])}</td>",
            f"<td>{_f(u['mp']['top_evr'])}</td>",
            f"<td>{_f(u['mean_energy_fraction'])}</td>",
            f"<td>{_f(a['mean_only'])}</td>",
            f"<td>{_f(a['basis_only'])}</td>",
            f"<td>{_f(a['mean_plus_basis'])}</td>",
            f"<td>{_f(a['heldout_evr'])}</td>",
            f"<td>{_f(a['null_heldout_evr'])} ({_f(a['null_heldout_evr_hi'])})</td>",
            f"<td>{_f(a['overlap'])} ({_f(a.get('overlap_k'))})</td>",
            f"<td>{_f(a['null_overlap'])}</td>",
        ]
        reasons = html.escape("; ".join(u["reasons"]), quote=True)
        rows.append(f'<tr title="{reasons}">{"".join(cells)}</tr>')
    return f"<div class='tbl'><table>{head}{''.join(rows)}</table></div>{_legend(cols)}"


def _figures(plots: Mapping[str, bytes]) -> str:
    out = []
    for name, png in plots.items():
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        caption = html.escape(PLOT_CAPTIONS.get(name, name))
        out.append(
            f"<figure><img src='{uri}' alt='{html.escape(name)}' data-name='{html.escape(name)}'>"
            f"<figcaption><code>{html.escape(name)}</code> — {caption}</figcaption></figure>"
        )
    return "".join(out)


def _list(items: list[str]) -> str:
    return "<ul class='notes'>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>"


def render_html(data: Mapping[str, Any], plots: Mapping[str, bytes] | None = None) -> str:
    """The report page as one HTML string.

    Parameters
    ----------
    data : mapping
        A report (``AnalysisReport.data`` or a parsed ``report.json``).
    plots : mapping of str to bytes, optional
        File name → PNG, embedded in order as data URIs.

    Returns
    -------
    str

    Examples
    --------
    >>> page = render_html({"method": "any", "n_models": 2, "models": ["a", "b"], "units": [], "notes": [],
    ...     "summary": {"headline": {"verdict": "null-like", "text": "x"}, "verdict_counts": {}, "groups": []},
    ...     "thresholds": {"rule": []}, "folds": {"scheme": "leave-one-out", "n_folds": 2, "held_out": []},
    ...     "split": {"a": ["a"], "b": ["b"]}, "collection": {"private": [], "excluded": []}})
    >>> page.startswith("<!DOCTYPE html>"), "http" in page
    (True, False)
    """
    coll = data.get("collection", {})
    thr = data.get("thresholds", {})
    thr_rows = "".join(
        f"<tr><td class='l'>{html.escape(k)}</td><td>{_words(v)}</td></tr>" for k, v in thr.items() if k != "rule"
    )
    private = [f"{p['key']} — {p['reason']}" for p in coll.get("private", [])]
    excluded = list(coll.get("excluded", []))
    folds = data["folds"]
    split = data["split"]
    plots_html = _figures(plots) if plots else "<p class='sub'>(saved without plots)</p>"
    base = coll.get("base")
    what = (
        "task vectors W_i − W_base"
        if base
        else ("LoRA updates ΔW" if coll.get("kind") == "peft" else "raw weights")
    )
    title = f"weightspace analysis — {data['n_models']} models, {data['method']}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<div class="sub">Members analysed: {html.escape(what)}{f" (base {html.escape(str(base))})" if base else ""}.
Held-out scheme: {html.escape(folds["scheme"])}; seed {_f(data.get("seed"))}; {_f(data.get("n_null"))} null draws per
unit.</div>
{_headline(data)}
<h2>By unit type</h2>
<p class="sub">Means over the units of each type at the verdict's k. "Held-out" numbers come from models left out
of the fit ({html.escape(folds["scheme"])}); errors are relative, ‖x − x̂‖ / ‖x‖ (lower is better).</p>
{_group_table(data)}
<h2>Per unit</h2>
<p class="sub">Hover a row for the measured comparisons behind its verdict. Stability uses the largest k ≤ k_ref
the halves allow (in brackets).</p>
{_unit_table(data)}
<h2>Plots</h2>
{plots_html}
<h2>Method notes</h2>
{_list(list(data.get("notes", [])))}
<h3>Verdict thresholds</h3>
{_list(list(thr.get("rule", [])))}
<table style="width:auto"><tr><th class='l'>threshold</th><th>value</th></tr>{thr_rows}</table>
<h3>Models</h3>
<p>{html.escape(", ".join(data["models"]))}</p>
<p class="sub">Stability halves: A = {html.escape(", ".join(split["a"]))}; B = {html.escape(", ".join(split["b"]))}.
{folds["n_folds"]} folds.</p>
<h3>Private and excluded tensors</h3>
{_list(private) if private else "<p class='sub'>none private</p>"}
{_list(excluded) if excluded else "<p class='sub'>none excluded</p>"}
</body></html>
"""
