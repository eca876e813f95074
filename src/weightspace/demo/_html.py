"""demo.html and its plots, rendered from the demo.json dict alone.

Every numeric table cell carries ``data-src="<JSON Pointer>"`` naming the demo.json value it shows, so a test (or
a reader) can check that the page shows only measured numbers.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

from weightspace._words import ratio_words

__all__ = ["format_value", "pointer", "render_html", "render_plots", "resolve"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1200px;color:#222;padding:0 1rem}
h1{margin-bottom:.2rem}h2{margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.3rem}
.sub{color:#666}table{border-collapse:collapse;margin:.8rem 0;font-size:.88rem}
td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:right}th{background:#f4f4f4}
td.l,th.l{text-align:left}.badge{border-radius:1rem;padding:.1rem .6rem;color:#fff;font-size:.8rem;white-space:nowrap}
.holds{background:#2e7d32}.mean{background:#ef6c00}.null{background:#757575}.partial{background:#1565c0}
.fails{background:#c62828}.inconclusive{background:#5c7cfa}.untestable{background:#b0b0b0;color:#222}
.scroll{overflow-x:auto}img{max-width:100%;border:1px solid #eee}.cite{color:#444;font-size:.82rem}
.note{color:#555;font-size:.9rem}code{background:#f4f4f4;padding:0 .2rem}
"""

_BADGE = {
    "holds": "holds",
    "explained by the mean": "mean",
    "null-like": "null",
    "partial": "partial",
    "fails": "fails",
    "explained by the head": "mean",
    "inconclusive": "inconclusive",
}


def _e(x: Any) -> str:
    return html.escape(str(x))


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "—"
    if isinstance(value, list):
        return "/".join(_fmt(v, spec) for v in value)
    if spec == "pct":
        return f"{float(value) * 100:.1f}"
    if spec == "ratio":
        return ratio_words(float(value), 1)
    if spec == "bytes":
        return f"{float(value) / 1e6:.3f} MB"
    if spec == "int":
        return f"{int(value)}"
    return format(float(value), spec)


def pointer(*parts: object) -> str:
    """An RFC 6901 JSON Pointer to a demo.json value (keys may contain dots, e.g. task ``noise-0.5``)."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def resolve(data: Any, ptr: str) -> Any:
    """The demo.json value a JSON Pointer names."""
    cur = data
    for raw in ptr.split("/")[1:]:
        part = raw.replace("~1", "/").replace("~0", "~")
        cur = cur[int(part)] if isinstance(cur, list) else cur[part]
    return cur


def cell(data: dict[str, Any], path: tuple[object, ...], spec: str) -> str:
    """A table cell showing the demo.json value at ``path`` (JSON Pointer parts) formatted with ``spec``."""
    ptr = pointer(*path)
    return f'<td data-src="{_e(ptr)}" data-fmt="{_e(spec)}">{_e(_fmt(resolve(data, ptr), spec))}</td>'


def format_value(value: Any, spec: str) -> str:
    """The text a cell with ``data-fmt=spec`` shows for ``value`` (exposed for tests)."""
    return _fmt(value, spec)


def _badge(verdict: str) -> str:
    cls = "untestable" if verdict.startswith("not testable") else _BADGE.get(verdict, "fails")
    return f'<span class="badge {cls}">{_e(verdict)}</span>'


def _png(plots: dict[str, bytes], name: str, caption: str) -> str:
    if name not in plots:
        return ""
    b64 = base64.b64encode(plots[name]).decode()
    img = f'<img alt="{_e(caption)}" src="data:image/png;base64,{b64}">'
    return f'<figure>{img}<figcaption class="note">{_e(caption)}</figcaption></figure>'


def render_plots(data: dict[str, Any]) -> dict[str, bytes]:
    """PNG plots (file name → bytes): accuracy per zoo and EVR vs null per zoo."""
    from weightspace.report import require_matplotlib

    figure_cls, canvas_cls = require_matplotlib()
    out: dict[str, bytes] = {}
    zoos = data["zoos"]
    if not zoos:
        return out
    cols = [
        ("original", "original"),
        ("rebuilt_k90", "rebuilt @k90"),
        ("rebuilt_k16", "rebuilt @k16"),
        ("rebuilt_full", "rebuilt @full rank"),
        ("mean_in_sample", "mean alone"),
        ("heldout_mean_only", "held-out: mean-only"),
        ("heldout_basis_only", "held-out: basis-only"),
        ("heldout_mean_plus_basis", "held-out: mean+basis"),
        ("base_own_head", "base + own head"),
    ]
    fig = figure_cls(figsize=(3.2 * len(zoos) + 1, 3.6))
    axes = fig.subplots(1, len(zoos), squeeze=False)
    for ax, z in zip(axes[0], zoos, strict=True):
        rows = z["accuracy"]["models"]
        for j, (key, _label) in enumerate(cols):
            if z["accuracy"]["mean"].get(key) is None:
                continue
            vals = [r[key] for r in rows]
            ax.bar(j, z["accuracy"]["mean"][key], color=f"C{j}", alpha=0.75)
            ax.scatter([j] * len(vals), vals, s=6, color="k", zorder=3)
        ax.axhline(z["accuracy"]["chance"], color="grey", ls=":", lw=1)
        ax.set_xticks(range(len(cols)), [c[1] for c in cols], rotation=60, ha="right", fontsize=7)
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{z['zoo']} (N={z['n_models']})", fontsize=9)
    axes[0][0].set_ylabel("held-out test accuracy")
    fig.suptitle("Task accuracy: bars = mean over models, dots = models, dotted = chance", fontsize=10)
    fig.tight_layout()
    out["demo-accuracy.png"] = _fig_bytes(fig, canvas_cls)

    fig = figure_cls(figsize=(1.6 * len(zoos) + 3, 3.4))
    ax = fig.subplots()
    xs = range(len(zoos))
    ax.bar([x - 0.2 for x in xs], [z["spectrum"]["evr"] for z in zoos], width=0.4, label="collection")
    ax.bar(
        [x + 0.2 for x in xs],
        [z["spectrum"].get("null_evr_p95") or z["spectrum"]["null_evr_hi"] for z in zoos],
        width=0.4,
        label="null (95th percentile of draws)",
    )
    ax.set_xticks(list(xs), [f"{z['zoo']}\nk={z['spectrum']['k']}" for z in zoos], fontsize=8)
    ax.set_ylabel("EVR at k (matrix units, param-weighted)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    ax.set_title("Variance captured by the top-k directions vs a matched Gaussian null", fontsize=10)
    fig.tight_layout()
    out["demo-spectrum.png"] = _fig_bytes(fig, canvas_cls)
    return out


def _fig_bytes(fig: Any, canvas_cls: Any) -> bytes:
    canvas_cls(fig)  # attach an Agg canvas: no pyplot global state
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _claim_rows(data: dict[str, Any], zoos_key: str = "zoos") -> list[str]:
    out = []
    for zi, z in enumerate(data.get(zoos_key) or []):
        for ci, c in enumerate(z["claims"]):
            pre = (zoos_key, zi, "claims", ci)
            out.append(
                f"<tr><td class='l'>{_e(z['zoo'])}</td><td class='l'>{_e(c['claim'])}</td>"
                + cell(data, (*pre, "n_models"), "int")
                + cell(data, (*pre, "k"), "int")
                + f"<td class='l'>{_badge(c['verdict'])}</td>"
                f"<td class='l' data-src='{pointer(*pre, 'evidence')}'>{_e(c['evidence'])}</td></tr>"
            )
    for section in ("merge", "adapt"):
        sec = data.get(section)
        if zoos_key == "zoos" and sec and sec.get("claim"):
            c = sec["claim"]
            out.append(
                f"<tr><td class='l'>{_e(sec.get('zoo', ''))}</td><td class='l'>{_e(c['claim'])}</td>"
                + cell(data, (section, "claim", "n_models"), "int")
                + cell(data, (section, "claim", "k"), "int")
                + f"<td class='l'>{_badge(c['verdict'])}</td>"
                f"<td class='l' data-src='{pointer(section, 'claim', 'evidence')}'>{_e(c['evidence'])}</td></tr>"
            )
    return out


def _paper_section(data: dict[str, Any]) -> list[str]:
    rows = data.get("paper_table") or []
    if not rows:
        return []
    p = [
        "<h2>The paper, the public replication, and this run</h2><p class='note'>Quoted numbers are constants "
        "with their source (the paper: Kaushik et al., arXiv:2512.05117; the replication: "
        "cahlen/universal-subspace-stress-test); the right-hand column is measured by this run, with 90 % "
        "intervals, on much smaller models than the paper's (read it for the shape of the evidence, not the "
        "magnitudes).</p><div class='scroll'><table><tr><th class='l'>claim</th><th class='l'>paper reports</th>"
        "<th class='l'>public replication</th><th class='l'>this run (verdict, evidence)</th></tr>"
    ]
    for ri, r in enumerate(rows):
        cites = []
        for who in ("paper", "replication"):
            c = r[who]
            cites.append(
                f"<td class='l'><span data-src='{pointer('paper_table', ri, who, 'text')}'>{_e(c['text'])}</span>"
                f"<br><span class='cite' data-src='{pointer('paper_table', ri, who, 'source')}'>"
                f"{_e(c['source'])}</span></td>"
            )
        ours = []
        for o in r["ours"]:
            claim = resolve(data, o["pointer"])
            ours.append(
                f"<b>{_e(o['where'])}</b> {_badge(claim['verdict'])} "
                f"<span data-src='{_e(o['pointer'])}/evidence'>{_e(claim['evidence'])}</span>"
            )
        p.append(
            f"<tr><td class='l'>{_e(r['claim'])}</td>{''.join(cites)}<td class='l'>"
            + ("<br>".join(ours) or "not run")
            + "</td></tr>"
        )
    p.append("</table></div>")
    return p


def _seed_section(data: dict[str, Any]) -> list[str]:
    sv = data.get("seed_verdicts")
    if not sv:
        return []
    seeds = sv["seeds"]
    p = [
        "<h2>A second seed</h2><p class='note'>Every zoo rebuilt with another seed (other initialisations, "
        "batches and heads) and every claim tested again; "
        f"<span data-src='/seed_verdicts/agreeing_claims' data-fmt='int'>{_e(sv['agreeing_claims'])}</span> of "
        f"<span data-src='/seed_verdicts/claims' data-fmt='int'>{_e(sv['claims'])}</span> verdicts agree.</p>",
        "<table><tr><th class='l'>zoo</th><th class='l'>claim</th>"
        + "".join(f"<th class='l'>seed {_e(x)}</th>" for x in seeds)
        + "</tr>",
    ]
    for zoo, per in sv["verdicts"].items():
        for key, verdicts in per.items():
            p.append(
                f"<tr><td class='l'>{_e(zoo)}</td><td class='l'>{_e(key)}</td>"
                + "".join(f"<td class='l'>{_badge(v)}</td>" for v in verdicts)
                + "</tr>"
            )
    p.append("</table>")
    seed_runs = data.get("seed_runs") or {}
    for s_key in seed_runs:
        p.append(
            f"<h3>Seed {_e(s_key)}: claims</h3><div class='scroll'><table><tr><th class='l'>zoo</th>"
            "<th class='l'>claim</th><th>N</th><th>k</th><th class='l'>verdict</th>"
            "<th class='l'>evidence (measured)</th></tr>"
        )
        sub = {"seed_runs": seed_runs}
        for zi, z in enumerate(seed_runs[s_key]):
            for ci, c in enumerate(z["claims"]):
                pre = ("seed_runs", s_key, zi, "claims", ci)
                p.append(
                    f"<tr><td class='l'>{_e(z['zoo'])}</td><td class='l'>{_e(c['claim'])}</td>"
                    + cell(sub, (*pre, "n_models"), "int")
                    + cell(sub, (*pre, "k"), "int")
                    + f"<td class='l'>{_badge(c['verdict'])}</td>"
                    f"<td class='l' data-src='{pointer(*pre, 'evidence')}'>{_e(c['evidence'])}</td></tr>"
                )
        p.append("</table></div>")
    return p


def render_html(data: dict[str, Any], plots: dict[str, bytes]) -> str:
    """One self-contained page (plots embedded) from the demo.json dict."""

    p: list[str] = []
    p.append(
        f"<!doctype html><html><head><meta charset='utf-8'><title>weightspace demo</title><style>{_CSS}</style></head><body>"
    )
    p.append("<h1>weightspace demo — the shared-subspace claims, with controls and intervals</h1>")
    p.append(
        f'<p class="sub">scale {_e(data.get("scale", "quick" if data["quick"] else "default"))}, '
        f"{len(data['zoos'])} zoos, seed {_e(data['seed'])}, torch threads {_e(data['torch_threads'])}; wall time "
        f'<span data-src="/wall_s" data-fmt=".0f">{_e(_fmt(data["wall_s"], ".0f"))}</span> s, CPU time '
        f'<span data-src="/cpu_s" data-fmt=".0f">{_e(_fmt(data.get("cpu_s"), ".0f"))}</span> s. '
        "All numbers are measured by this run unless marked as quoted; held-out means the model was left out of "
        "the fit; intervals are 90 % bootstrap intervals over models (over tasks for merging).</p>"
    )
    p.append(
        "<h2>Claims</h2><p class='note'>A claim about k = 16 directions needs N ≥ 96 models (N ≥ 6 k): with fewer, "
        "the top 16 directions of any collection hold nearly all of its variance, so the test could not fail, and "
        "the row says so. A verdict needs its interval to clear the threshold; otherwise it is inconclusive.</p>"
        "<div class='scroll'><table><tr><th class='l'>zoo</th><th class='l'>claim</th><th>N</th><th>k</th>"
        "<th class='l'>verdict</th><th class='l'>evidence (measured)</th></tr>"
    )
    p.extend(_claim_rows(data))
    p.append("</table></div>")
    p.extend(_paper_section(data))
    p.extend(_seed_section(data))

    p.append(
        "<h2>Per zoo</h2><p class='note'>EVR at k: parameter-weighted over matrix units, at each unit's "
        "tested k (16, or ⌊N/6⌋ when N < 96). Ratio: bytes of the N checkpoints on disk ÷ bytes of the archive "
        "(task-vector zoos also need their base, listed separately). Accuracy in %, means over models.</p>"
    )
    p.append(
        "<div class='scroll'><table><tr><th class='l'>zoo</th><th>N</th><th>k</th><th>EVR@k</th>"
        "<th>null EVR@k (95 %)</th><th>k90</th><th>null k90</th><th>mean energy</th><th>size @k90</th>"
        "<th>size @full</th><th>original</th><th>rebuilt @k90</th><th>rebuilt @full</th><th>mean alone</th>"
        "<th>held-out mean-only</th><th>held-out mean+basis</th><th>base + own head</th><th>chance</th></tr>"
    )
    for zi, z in enumerate(data["zoos"]):
        pre = ("zoos", zi)
        p.append(
            f"<tr><td class='l'><a href='{_e(z['analysis_report'])}'>{_e(z['zoo'])}</a></td>"
            + cell(data, (*pre, "n_models"), "int")
            + cell(data, (*pre, "spectrum", "k"), "int")
            + cell(data, (*pre, "spectrum", "evr"), ".3f")
            + cell(data, (*pre, "spectrum", "null_evr_p95"), ".3f")
            + cell(data, (*pre, "spectrum", "k90"), ".1f")
            + cell(data, (*pre, "spectrum", "null_k90"), ".1f")
            + cell(data, (*pre, "spectrum", "mean_energy_fraction"), ".3f")
            + cell(data, (*pre, "archives", "k90", "ratio"), "ratio")
            + cell(data, (*pre, "archives", "full", "ratio"), "ratio")
            + cell(data, (*pre, "accuracy", "mean", "original"), "pct")
            + cell(data, (*pre, "accuracy", "mean", "rebuilt_k90"), "pct")
            + cell(data, (*pre, "accuracy", "mean", "rebuilt_full"), "pct")
            + cell(data, (*pre, "accuracy", "mean", "mean_in_sample"), "pct")
            + cell(data, (*pre, "accuracy", "mean", "heldout_mean_only"), "pct")
            + cell(data, (*pre, "accuracy", "mean", "heldout_mean_plus_basis"), "pct")
            + cell(data, (*pre, "accuracy", "mean", "base_own_head"), "pct")
            + cell(data, (*pre, "accuracy", "chance"), "pct")
            + "</tr>"
        )
    p.append("</table></div>")
    p.append(
        _png(plots, "demo-spectrum.png", "EVR at the tested k vs the matched Gaussian null (95th percentile)")
    )
    p.append(_png(plots, "demo-accuracy.png", "Task accuracy of originals, rebuilt and held-out models"))
    p.append("<h2>Spectra per unit type</h2>")
    for z in data["zoos"]:
        p.append(
            _png(
                plots,
                z.get("spectrum_plot", ""),
                f"{z['zoo']}: cumulative EVR vs k (log axis) per unit type against the null's 5–95 % band",
            )
        )

    for zi, z in enumerate(data["zoos"]):
        pre = ("zoos", zi)
        p.append(f"<h2>{_e(z['zoo'])}</h2>")
        p.append(
            f"<p class='note'>{_e(z['kind'])} zoo, {_e(z['n_models'])} models, {_e(z['n_units'])} units"
            + (f", private (per model): {_e(', '.join(z['private']))}" if z["private"] else "")
            + (", members are task vectors (W − W_base)" if z["delta"] else ", members are raw weights")
            + f". Full analysis: <a href='{_e(z['analysis_report'])}'>{_e(z['analysis_report'])}</a>. Held-out fits "
            f"use k = <span data-src='{pointer(*pre, 'accuracy', 'k_heldout')}' data-fmt='int'>"
            f"{_e(z['accuracy']['k_heldout'])}</span>"
            ".</p>"
        )
        p.append(
            "<p>k is the number of components a unit keeps (for a LoRA unit stored factored, the larger of its two "
            "mode ranks k1, k2); mean and max are over the units.</p>"
        )
        p.append(
            "<table><tr><th class='l'>archive</th><th>mean k</th><th>max k</th><th>archive</th>"
            "<th>N checkpoints</th><th>base</th><th>archive vs checkpoints</th></tr>"
        )
        for label in z["archives"]:
            ap = (*pre, "archives", label)
            p.append(
                f"<tr><td class='l'>{_e(label)}</td>"
                + cell(data, (*ap, "k_mean"), ".1f")
                + cell(data, (*ap, "k_max"), "int")
                + cell(data, (*ap, "archive_bytes"), "bytes")
                + cell(data, (*ap, "models_bytes"), "bytes")
                + cell(data, (*ap, "base_bytes"), "bytes")
                + cell(data, (*ap, "ratio"), "ratio")
                + "</tr>"
            )
        p.append("</table>")
        rows = z["accuracy"]["models"]
        keys = [k for k in rows[0] if k not in ("name", "task")]
        p.append(
            "<div class='scroll'><table><tr><th class='l'>model</th><th class='l'>task</th>"
            + "".join(f"<th>{_e(k.replace('_', ' '))}</th>" for k in keys)
            + "</tr>"
        )
        for ri, r in enumerate(rows):
            p.append(
                f"<tr><td class='l'>{_e(r['name'])}</td><td class='l'>{_e(r['task'])}</td>"
                + "".join(cell(data, (*pre, "accuracy", "models", ri, k), "pct") for k in keys)
                + "</tr>"
            )
        p.append("</table></div>")

    merge = data.get("merge")
    if merge:
        p.append(f"<h2>Merging ({_e(merge.get('zoo', ''))})</h2>")
        p.append(
            "<p class='note'>All task models merged into one backbone in ΔW space; each task evaluated with its "
            "own head. Rows marked “tuned on validation” picked their parameter on a split of the tasks' "
            "training data, never on the test set; all other rows use defaults. Accuracy in %.</p>"
        )
        cols = merge["columns"]
        p.append(
            "<div class='scroll'><table><tr><th class='l'>method</th>"
            + "".join(f"<th>{_e(c['task'])}</th>" for c in cols)
            + "<th>average</th></tr>"
        )
        for ri, r in enumerate(merge["rows"]):
            p.append(
                f"<tr><td class='l'>{_e(r['label'])}</td>"
                + "".join(cell(data, ("merge", "rows", ri, "accuracy", c["model"]), "pct") for c in cols)
                + cell(data, ("merge", "rows", ri, "average"), "pct")
                + "</tr>"
            )
        p.append("</table></div>")
        cc = merge.get("centered_coefficients")
        if cc:
            p.append(f"<p class='note'>Centered-coefficient summation vs the mean (measured): {_e(_summ(cc))}</p>")

    adapt = data.get("adapt")
    if adapt:
        p.append(f"<h2>Adaptation ({_e(adapt.get('zoo', ''))}, held-out task {_e(adapt.get('task', ''))})</h2>")
        p.append(
            "<p class='note'>Same data, steps and seed for every variant; the task's own model was left out of "
            "the archive. Accuracy in %, trainable parameters counted exactly; every row also trains the task head "
            "(its own column). Learning rates were chosen per row on a validation split of the task's training "
            "data, never on the test set.</p>"
        )
        p.append(
            "<table><tr><th class='l'>variant</th><th>k</th><th>test accuracy</th><th>trainable (adapter)</th>"
            "<th>trainable (head)</th><th>learning rate</th><th>train wall s</th></tr>"
        )
        for ri, r in enumerate(adapt["rows"]):
            p.append(
                f"<tr><td class='l'>{_e(r['name'])}</td>"
                + (cell(data, ("adapt", "rows", ri, "k"), "int") if r.get("k") is not None else "<td>—</td>")
                + cell(data, ("adapt", "rows", ri, "test_accuracy"), "pct")
                + cell(data, ("adapt", "rows", ri, "trainable_adapter"), "int")
                + cell(data, ("adapt", "rows", ri, "trainable_head"), "int")
                + cell(data, ("adapt", "rows", ri, "lr"), "g")
                + cell(data, ("adapt", "rows", ri, "train_wall_s"), ".2f")
                + "</tr>"
            )
        p.append("</table>")
        if adapt.get("task_choice"):
            p.append(f"<p class='note'>Why this task: {_e(adapt['task_choice'])}.</p>")
        notes = adapt.get("notes") or []
        if notes:
            p.append("<ul class='note'>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")

    p.append("<h2>How the verdicts are decided</h2><ul class='note'>")
    for name, rule in data["rules"].items():
        p.append(f"<li><b>{_e(name)}</b>: {_e(rule)}</li>")
    p.append("</ul></body></html>")
    return "\n".join(p)


def _summ(obj: Any) -> str:
    if isinstance(obj, dict):
        return "; ".join(f"{k}: {_summ(v)}" for k, v in obj.items() if not isinstance(v, dict | list))
    return str(obj)
