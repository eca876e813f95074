"""PNG figures of an analysis report (matplotlib, Agg canvas, imported lazily).

Figures are drawn on ``matplotlib.figure.Figure`` with an Agg canvas directly, so no global backend is switched
and nothing needs a display. Each figure has one panel per unit type (matrix types first), so a person can
compare a layer type across depths at a glance:

* ``scree.png`` — per-component EVR of every unit of the type (colour = depth) over the null band;
* ``cumulative_evr.png`` — cumulative EVR vs k on a log axis, one panel per unit type (matrix types: attention
  q/k/v/o, MLP in/out, conv …), one curve per unit over the null's 5–95 % band (:func:`spectrum_figure`; the demo
  draws the same figure once per zoo);
* ``loo.png`` — held-out relative error vs k: mean-only, basis-only, mean + basis (mean over the type's units);
* ``heldout_evr.png`` — held-out EVR vs k beside the null band;
* ``stability.png`` — split-half overlap vs k beside the null;
* ``verdicts.png`` — the verdict heat-map, depth × unit type.

Every plotted value is read from the report (itself measured); nothing is interpolated.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from typing import Any

from weightspace.errors import DependencyError

__all__ = ["PLOT_CAPTIONS", "VERDICT_COLORS", "make_plots", "require_matplotlib", "spectrum_figure"]

VERDICT_COLORS = {
    "shared-subspace": "#2b8a3e",
    "mean-dominated": "#e8890c",
    "null-like": "#9aa0a6",
    "inconclusive": "#5c7cfa",
}
MAX_PANELS = 24
_LOG_FLOOR = 1e-12

PLOT_CAPTIONS = {
    "verdicts.png": "Verdict per unit: layer depth (rows) × unit type (columns).",
    "scree.png": "Per-component explained-variance ratio of each unit (colour = depth) over the matched Gaussian "
    "null (grey band: min–max over draws and units of the type; dashed: null mean).",
    "cumulative_evr.png": "Cumulative EVR vs k (log axis), one panel per unit type, one line per unit (colour = "
    "depth), over the matched null's 5–95 % band of draws (grey) and its mean (dashed); dotted: the tested k.",
    "loo.png": "Held-out relative error vs k, averaged over the type's units: mean-only (the control), "
    "basis-only and mean + basis. A shared subspace shows mean + basis well below mean-only.",
    "heldout_evr.png": "Held-out EVR (share of a held-out model's deviation from the training mean captured by the "
    "training basis) vs k, beside the same statistic on the null (band: min–max over draws and units).",
    "stability.png": "Split-half stability: mean squared cosine of the principal angles between the top-k "
    "subspaces of two disjoint halves, beside the null.",
}


def require_matplotlib() -> Any:
    """Import matplotlib's Figure and Agg canvas, or raise :class:`DependencyError` naming the extra."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise DependencyError(
            "plots need matplotlib, which is not installed; install it with `pip install 'weightspace[plot]'` "
            "(or save without plots)"
        ) from err
    return Figure, FigureCanvasAgg


def _finite(values: Sequence[Any]) -> list[float]:
    return [float("nan") if v is None else float(v) for v in values]


def _groups(data: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for u in data["units"]:
        by.setdefault((u["kind"], u["type"]), []).append(u)
    ordered = sorted(by.items(), key=lambda kv: kv[0][0] != "matrix")
    return [(f"{typ}" + (" (vector)" if kind == "vector" else ""), units) for (kind, typ), units in ordered]


def _grid(figure_cls: Any, n: int, width: float = 4.0, height: float = 3.0) -> tuple[Any, list[Any]]:
    ncols = min(4, max(1, n))
    nrows = math.ceil(n / ncols)
    fig_w, fig_h = width * ncols, height * nrows + 0.6
    fig = figure_cls(figsize=(fig_w, fig_h))
    # Fixed margins (in inches) instead of a layout engine: constrained layout measures every tick label, which
    # costs seconds per figure.
    fig.subplots_adjust(
        left=0.95 / fig_w,
        right=1 - 0.15 / fig_w,
        bottom=0.5 / fig_h,
        top=1 - 0.75 / fig_h,
        wspace=0.35,
        hspace=0.5,
    )
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(n)]
    return fig, axes


def _png(fig: Any, canvas_cls: Any) -> bytes:
    canvas_cls(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return buf.getvalue()


def _depth_colors(units: Sequence[dict[str, Any]]) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    depths = [u["depth"] for u in units]
    known = [d for d in depths if d is not None]
    lo, hi = (min(known), max(known)) if known else (0, 0)
    return [cmap(0.5 if d is None or hi == lo else (d - lo) / (hi - lo)) for d in depths]


def _band_envelope(
    units: Sequence[dict[str, Any]], get: Callable[[dict[str, Any]], tuple[list, list, list]]
) -> Any:
    """Null mean (mean over units) and the min/max envelope of the units' bands, on a common x."""
    rows = [get(u) for u in units]
    length = min((len(r[0]) for r in rows), default=0)
    if not length:
        return [], [], []
    mean = [sum(_finite([r[0][i]])[0] for r in rows) / len(rows) for i in range(length)]
    lo = [min(_finite([r[1][i] for r in rows])) for i in range(length)]
    hi = [max(_finite([r[2][i] for r in rows])) for i in range(length)]
    return mean, lo, hi


def _panels(
    data: dict[str, Any], figure_cls: Any, title: str, draw: Callable[[Any, list[dict[str, Any]]], None]
) -> Any:
    groups = _groups(data)
    shown = groups[:MAX_PANELS]
    fig, axes = _grid(figure_cls, len(shown))
    for ax, (label, units) in zip(axes, shown, strict=True):
        draw(ax, units)
        ax.set_title(label, fontsize=9)
        ax.grid(True, alpha=0.3)
    more = f" (first {MAX_PANELS} of {len(groups)} unit types)" if len(groups) > MAX_PANELS else ""
    fig.suptitle(title + more, fontsize=11)
    return fig


def _scree(ax: Any, units: list[dict[str, Any]], cumulative: bool) -> None:
    import numpy as np

    def shown(y: Any) -> Any:
        # Exact zeros (rank below N − 1, e.g. D < N) have no place on a log axis: leave them out.
        return y if cumulative else np.where(np.asarray(y) > _LOG_FLOOR, y, np.nan)

    for u, color in zip(units, _depth_colors(units), strict=True):
        y = np.array(_finite(u["spectrum"]["evr"]))
        if cumulative:
            y = np.cumsum(y)
        ax.plot(np.arange(1, len(y) + 1), shown(y), color=color, lw=1.2, alpha=0.85)

    def get(u: dict[str, Any]) -> tuple[list, list, list]:
        s = u["spectrum"]
        m, lo, hi = (_finite(s.get(k) or []) for k in ("null_evr", "null_evr_lo", "null_evr_hi"))
        if cumulative:
            m, lo, hi = (list(np.cumsum(v)) for v in (m, lo, hi))
        return m, lo, hi

    mean, lo, hi = _band_envelope(units, get)
    if mean:
        x = np.arange(1, len(mean) + 1)
        ax.fill_between(x, shown(lo), shown(hi), color="grey", alpha=0.3, lw=0, label="null band")
        ax.plot(x, shown(mean), color="black", ls="--", lw=1, label="null mean")
    if not cumulative:
        ax.set_yscale("log")
        ax.set_ylabel("EVR per component", fontsize=8)
    else:
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("cumulative EVR", fontsize=8)
    ax.set_xlabel("component", fontsize=8)
    ax.legend(fontsize=7, loc="best")


def _mean_curve(units: list[dict[str, Any]], get: Callable[[dict[str, Any]], tuple[list, list]]) -> Any:
    """Mean over units of y(k) on the ks every unit has."""
    curves = [dict(zip(*get(u), strict=True)) for u in units]
    ks = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    ys = []
    for k in ks:
        vals = [v for c in curves if (v := c[k]) is not None and math.isfinite(v)]
        ys.append(sum(vals) / len(vals) if vals else float("nan"))
    return ks, ys


def _k_axis(ax: Any, ks: Sequence[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(ks), [str(k) for k in ks])
    ax.minorticks_off()


def _loo(ax: Any, units: list[dict[str, Any]]) -> None:
    ks, mb = _mean_curve(units, lambda u: (u["loo"]["k"], u["loo"]["mean_plus_basis"]))
    _, bo = _mean_curve(units, lambda u: (u["loo"]["k"], u["loo"]["basis_only"]))
    mo = [u["loo"]["mean_only"] for u in units if u["loo"]["mean_only"] is not None]
    if ks:
        ax.plot(ks, mb, "o-", color="#1f5fbf", label="mean + basis")
        ax.plot(ks, bo, "s-", color="#9b59b6", label="basis only")
        _k_axis(ax, ks)
    if mo:
        ax.axhline(sum(mo) / len(mo), color="#c0392b", ls="--", label="mean only")
    ax.set_xlabel("k", fontsize=8)
    ax.set_ylabel("held-out ‖x − x̂‖ / ‖x‖", fontsize=8)
    top = max([v for v in [*mb, *bo, *mo] if v is not None and math.isfinite(v)], default=1.0)
    ax.set_ylim(0, max(1.0, top) * 1.1)
    ax.legend(fontsize=7, loc="best")


def _vs_null(
    ax: Any, units: list[dict[str, Any]], block: str, key: str, null: str, null_hi: str, label: str
) -> None:
    ks, y = _mean_curve(units, lambda u: (u[block]["k"], u[block][key]))
    ks_n, yn = _mean_curve(units, lambda u: (u[block]["k"], u[block][null]))
    _, yh = _mean_curve(units, lambda u: (u[block]["k"], [max(_finite([v])) for v in u[block][null_hi]]))
    if ks:
        ax.plot(ks, y, "o-", color="#1f5fbf", label=label)
        _k_axis(ax, ks)
    if ks_n:
        ax.plot(ks_n, yn, "--", color="black", lw=1, label="null mean")
        ax.fill_between(ks_n, yn, yh, color="grey", alpha=0.3, lw=0, label="null (to highest draw)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("k", fontsize=8)
    ax.legend(fontsize=7, loc="best")


def _verdict_map(data: dict[str, Any], figure_cls: Any) -> Any:
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    groups = _groups(data)
    types = [label for label, _ in groups]
    depths = sorted({u["depth"] for u in data["units"]}, key=lambda d: (d is None, d if d is not None else 0))
    order = list(VERDICT_COLORS)
    grid = [[math.nan] * len(types) for _ in depths]
    for col, (_label, units) in enumerate(groups):
        for u in units:
            grid[depths.index(u["depth"])][col] = order.index(u["verdict"])
    width = min(24.0, 2.0 + 0.9 * len(types))
    height = min(24.0, 1.8 + 0.35 * len(depths))
    fig = figure_cls(figsize=(width, height), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    cmap = ListedColormap([VERDICT_COLORS[v] for v in order]).with_extremes(bad="white")
    import numpy as np

    ax.imshow(
        np.ma.masked_invalid(np.array(grid, dtype=float)),
        cmap=cmap,
        vmin=-0.5,
        vmax=len(order) - 0.5,
        aspect="auto",
    )
    for r, row in enumerate(grid):
        for c, v in enumerate(row):
            if not math.isnan(v):
                ax.text(c, r, order[int(v)][0].upper(), ha="center", va="center", fontsize=8, color="white")
    ax.set_xticks(range(len(types)), types, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(depths)), ["—" if d is None else str(d) for d in depths], fontsize=8)
    ax.set_ylabel("depth (layer index)")
    ax.legend(
        handles=[Patch(color=VERDICT_COLORS[v], label=v) for v in order],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
    )
    ax.set_title("verdict per unit", fontsize=11)
    return fig


def _cumulative_panel(ax: Any, units: list[dict[str, Any]]) -> None:
    """Cumulative EVR of every unit of one type vs k (log axis) over the null's 5–95 % band."""
    import numpy as np

    top = 1
    for u, color in zip(units, _depth_colors(units), strict=True):
        y = np.cumsum(np.array(_finite(u["spectrum"]["evr"])))
        if not len(y):
            continue
        x = np.arange(1, len(y) + 1)
        top = max(top, len(y))
        label = f"depth {u['depth']}" if u["depth"] is not None and len(units) <= 6 else None
        ax.plot(x, y, color=color, lw=1.3, alpha=0.9, label=label)
    s = [u["spectrum"] for u in units]
    lo_rows = [_finite(v.get("null_cum_evr_p05") or []) for v in s]
    hi_rows = [_finite(v.get("null_cum_evr_p95") or []) for v in s]
    mean_rows = [list(np.cumsum(_finite(v.get("null_evr") or []))) for v in s]
    length = min((len(r) for r in lo_rows + hi_rows + mean_rows), default=0)
    if length:
        x = np.arange(1, length + 1)
        lo = np.nanmin(np.array([r[:length] for r in lo_rows]), axis=0)
        hi = np.nanmax(np.array([r[:length] for r in hi_rows]), axis=0)
        mean = np.nanmean(np.array([r[:length] for r in mean_rows]), axis=0)
        ax.fill_between(x, lo, hi, color="grey", alpha=0.35, lw=0, label="null 5–95 %")
        ax.plot(x, mean, color="black", ls="--", lw=1, label="null mean")
    ks = sorted({int(u["k_ref"]) for u in units if u.get("k_ref")})
    for k in ks:
        ax.axvline(k, color="#c0392b", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlim(1, max(2, top))
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("k (components, log scale)", fontsize=8)
    ax.set_ylabel("cumulative EVR", fontsize=8)
    ax.legend(fontsize=7, loc="lower right")


def spectrum_figure(data: dict[str, Any], title: str | None = None) -> bytes:
    """One PNG: cumulative EVR vs k (log axis) per unit type against the null's 5–95 % band.

    Matrix unit types get a panel each (vector units only when there is no matrix unit); every unit of the type
    is a line (colour = depth); the band is the envelope of the units' 5th–95th percentiles over null draws.

    Parameters
    ----------
    data : dict
        A report (``AnalysisReport.data`` or a parsed ``report.json``).
    title : str, optional
        Figure title (default: the report's model count and tested k).

    Returns
    -------
    bytes
        PNG content.
    """
    figure_cls, canvas_cls = require_matplotlib()
    groups = _groups(data)
    matrix = [(label, units) for label, units in groups if not label.endswith("(vector)")]
    shown = (matrix or groups)[:MAX_PANELS]
    fig, axes = _grid(figure_cls, len(shown), width=3.6, height=2.9)
    for ax, (label, units) in zip(axes, shown, strict=True):
        _cumulative_panel(ax, units)
        ax.set_title(label, fontsize=9)
        ax.grid(True, which="both", alpha=0.25)
    ks = sorted({int(u["k_ref"]) for u in data["units"] if u.get("k_ref")})
    fig.suptitle(
        title
        or f"Cumulative EVR vs k against the matched null (N = {data['n_models']}, tested k = "
        f"{'/'.join(map(str, ks))})",
        fontsize=11,
    )
    return _png(fig, canvas_cls)


def make_plots(data: dict[str, Any]) -> dict[str, bytes]:
    """Render every figure of a report.

    Parameters
    ----------
    data : dict
        A report (``AnalysisReport.data`` or a parsed ``report.json``).

    Returns
    -------
    dict of str to bytes
        File name → PNG content, in reading order.
    """
    figure_cls, canvas_cls = require_matplotlib()
    scree_title = "Spectrum vs matched null" + str(data.get("spectrum_label") or "")
    figs = {
        "verdicts.png": _verdict_map(data, figure_cls),
        "scree.png": _panels(data, figure_cls, scree_title, lambda ax, u: _scree(ax, u, cumulative=False)),
        "cumulative_evr.png": None,
        "loo.png": _panels(data, figure_cls, f"Held-out error ({data['folds']['scheme']})", _loo),
        "heldout_evr.png": _panels(
            data,
            figure_cls,
            "Held-out EVR vs null",
            lambda ax, u: _vs_null(ax, u, "loo", "heldout_evr", "null_heldout_evr", "null_heldout_evr_hi", "data"),
        ),
        "stability.png": _panels(
            data,
            figure_cls,
            "Split-half stability vs null",
            lambda ax, u: _vs_null(ax, u, "stability", "overlap", "null_overlap", "null_overlap_hi", "data"),
        ),
    }
    return {name: spectrum_figure(data) if fig is None else _png(fig, canvas_cls) for name, fig in figs.items()}
