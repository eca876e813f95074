"""The demo's alignment section: from-scratch zoos before and after removing permutation symmetry.

For a zoo of independently trained (or untrained) nets, the same measurements are made twice — on the models as
trained, and after weight matching (Git Re-Basin, :mod:`weightspace.align`) to their mean:

* the spectrum against its null (parameter-weighted EVR at each matrix unit's reference k, the headline verdict,
  k90) — the aligned collection against a Gaussian null **aligned by the same procedure**, since alignment alone
  pulls unrelated models together;
* held-out task accuracy of models rebuilt from a subspace fitted without them: mean-only and mean + basis;
* the accuracy of the merged model (the plain mean of all N models).

``digits-mlp-init`` (untrained nets) is the control: whatever alignment does to it, it does without any learned
structure. The claim row "after alignment, from-scratch nets share a subspace" is decided by
:func:`~weightspace.demo._claims.alignment_claim` from these numbers only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from weightspace.align import AlignOptions, align_collection
from weightspace.analyze import analyze
from weightspace.collection import Collection
from weightspace.demo._claims import alignment_claim
from weightspace.demo._heldout import heldout_states, member_matrix, state_from_members

__all__ = ["ALIGN_KINDS", "alignment_html", "alignment_section"]

ALIGN_KINDS = ("scratch", "init")  # zoos of independently initialised nets: their units are in arbitrary order
K_HELDOUT = 16

Say = Callable[[str], None]
Progress = Callable[[str, int, int], None]


def _mean(xs: list[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else float("nan")


def _spectrum(report: dict[str, Any]) -> dict[str, Any]:
    units = [u for u in report["units"] if u["kind"] == "matrix"] or report["units"]
    weights = [float(u["n_features"]) for u in units]
    total = sum(weights)

    def wmean(key: str) -> float:
        return sum(w * float(u["at_k_ref"][key]) for w, u in zip(weights, units, strict=True)) / total

    ks = sorted({int(u["at_k_ref"]["k"]) for u in units})
    head = report["summary"]["headline"]
    return {
        "k": max(ks),
        "evr": wmean("evr"),
        "null_evr_hi": wmean("null_evr_hi"),
        "heldout_evr": wmean("heldout_evr"),
        "null_heldout_evr_hi": wmean("null_heldout_evr_hi"),
        "k90": _mean([float(u["k90"]) for u in units]),
        "null_k90": _mean([float(u["null_k90"]) for u in units if u["null_k90"] is not None]),
        "verdict": head["verdict"],
        "param_share": head["param_share"],
        "verdict_counts": report["summary"]["verdict_counts"],
    }


def _accuracy(zoo: Any, coll: Collection, tasks: list[str], progress: Callable[[], None]) -> dict[str, float]:
    """Held-out (mean-only, mean+basis) and merged-mean accuracy, means over models."""
    n = coll.n_models
    stacks = {u.name: member_matrix(coll, u.name) for u in coll.units}
    k = min(K_HELDOUT, n - 2)
    mean_only, mean_plus_basis, merged = [], [], []
    mean_members = {name: x.mean(dim=0) for name, x in stacks.items()}
    for h in range(n):
        states = heldout_states(coll, stacks, h, k, None)
        mean_only.append(zoo.accuracy(states["mean_only"], task=tasks[h]))
        mean_plus_basis.append(zoo.accuracy(states["mean_plus_basis"], task=tasks[h]))
        merged.append(zoo.accuracy(state_from_members(coll, h, mean_members, None), task=tasks[h]))
        progress()
    return {
        "k_heldout": k,
        "heldout_mean_only": _mean(mean_only),
        "heldout_mean_plus_basis": _mean(mean_plus_basis),
        "merged_mean": _mean(merged),
    }


def alignment_section(
    zoo: Any,
    info: Any,
    coll: Collection,
    *,
    seed: int,
    originals: float,
    chance: float,
    say: Say,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Unaligned vs aligned rows for one from-scratch zoo, and the claim they decide.

    Parameters
    ----------
    zoo : Zoo
        Its evaluator.
    info : ZooInfo
        The built zoo (tasks per model).
    coll : Collection
        The zoo's models (raw weights).
    seed : int
        Seeds the analyses, the nulls and the alignment.
    originals, chance : float
        Mean accuracy of the models as trained, and of guessing.

    Returns
    -------
    dict
        ``{"options", "distance", "rows": {"unaligned", "aligned"}, "claim"}`` for demo.json.
    """
    opts = AlignOptions(to="mean", seed=seed)
    tasks = [m.task for m in info.models]
    n = coll.n_models
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress:
            progress(f"{info.zoo}: align", done, 2 * n)

    rows: dict[str, dict[str, Any]] = {}
    say(f"[{info.zoo}] alignment: the models as trained, against the Gaussian null")
    raw = analyze(coll, seed=seed).to_dict()
    rows["unaligned"] = {"spectrum": _spectrum(raw), "accuracy": _accuracy(zoo, coll, tasks, tick)}
    say(f"[{info.zoo}] alignment: weight matching to the mean, against a null aligned the same way")
    report = analyze(coll, seed=seed, align=opts).to_dict()
    aligned, result = align_collection(coll, opts)
    rows["aligned"] = {"spectrum": _spectrum(report), "accuracy": _accuracy(zoo, aligned, tasks, tick)}
    alignment = report["alignment"]
    return {
        "options": {
            "to": opts.to,
            "symmetries": list(opts.symmetries),
            "seed": seed,
            "spec": alignment["spec_text"],
        },
        "distance": {
            "before": result.mean_distance_before,
            "after": result.mean_distance_after,
            "rounds": result.rounds,
            "moved_units": sum(m.moved_units for m in result.models),
        },
        "originals": originals,
        "chance": chance,
        "rows": rows,
        "claim": alignment_claim(rows["unaligned"], rows["aligned"], originals, chance),
    }


def alignment_html(data: dict[str, Any]) -> str:
    """The before/after table of every zoo with an alignment record (empty string if none)."""
    from weightspace.demo._html import _badge, _e, cell

    zoos = [(zi, z) for zi, z in enumerate(data["zoos"]) if z.get("alignment")]
    if not zoos:
        return ""
    p = [
        "<h2>Alignment (from-scratch zoos)</h2><p class='note'>Independently trained nets differ by a permutation "
        "of their hidden units. Each zoo is measured as trained and after weight matching to the mean of the "
        "aligned models (Git Re-Basin); the aligned rows are compared with a Gaussian null aligned by the same "
        "procedure. EVR at k: parameter-weighted over matrix units. Accuracy in %: held-out models rebuilt from "
        "a subspace fitted without them, and the merged model (the mean of all N).</p>",
        "<div class='scroll'><table><tr><th class='l'>zoo</th><th class='l'>models</th><th>k</th><th>EVR@k</th>"
        "<th>null EVR@k (hi)</th><th class='l'>verdict</th><th>k90</th><th>null k90</th>"
        "<th>held-out mean-only</th><th>held-out mean+basis</th><th>merged mean model</th><th>originals</th>"
        "<th>distance to the mean</th></tr>",
    ]
    for zi, z in zoos:
        for label in ("unaligned", "aligned"):
            pre = ("zoos", zi, "alignment", "rows", label)
            p.append(
                f"<tr><td class='l'>{_e(z['zoo'])}</td><td class='l'>{_e(label)}</td>"
                + cell(data, (*pre, "spectrum", "k"), "int")
                + cell(data, (*pre, "spectrum", "evr"), ".3f")
                + cell(data, (*pre, "spectrum", "null_evr_hi"), ".3f")
                + f"<td class='l'>{_badge(z['alignment']['rows'][label]['spectrum']['verdict'])}</td>"
                + cell(data, (*pre, "spectrum", "k90"), ".1f")
                + cell(data, (*pre, "spectrum", "null_k90"), ".1f")
                + cell(data, (*pre, "accuracy", "heldout_mean_only"), "pct")
                + cell(data, (*pre, "accuracy", "heldout_mean_plus_basis"), "pct")
                + cell(data, (*pre, "accuracy", "merged_mean"), "pct")
                + cell(data, ("zoos", zi, "alignment", "originals"), "pct")
                + cell(
                    data,
                    ("zoos", zi, "alignment", "distance", "before" if label == "unaligned" else "after"),
                    ".3g",
                )
                + "</tr>"
            )
    p.append("</table></div>")
    return "\n".join(p)
