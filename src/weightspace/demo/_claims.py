"""One-line verdicts on the paper's claims, derived from measured numbers and their intervals only.

Every number a verdict uses is an interval (90 %, normal bootstrap: over models for the zoo claims, over tasks for
merging, a binomial approximation over test examples for the single adaptation task). A comparison passes when
the whole interval clears its threshold, fails when the whole interval lies on the other side, and otherwise the
verdict is ``inconclusive`` with the interval in the evidence. A claim about k = 16 directions is only tested
when N ≥ 6 · 16 = 96 models: at smaller N the top 16 directions of *any* collection hold nearly all of its
variance, so the test could not fail, and the row says ``not testable at N = …``.

Verdict words: ``holds``; ``explained by the mean`` / ``explained by the head`` (the claimed effect is equal to
what its control achieves); ``null-like`` (accuracy at chance, or the spectrum no different from noise);
``partial``; ``fails`` (worse than its control, or clearly losing what the claim promises); ``inconclusive``;
``not testable at N = …``. The rule that produced a verdict and the numbers it used are returned with it.
"""

from __future__ import annotations

import math
from typing import Any

from weightspace._words import ratio_words

__all__ = [
    "ACC_TOL",
    "ALIGN_RULE",
    "K_CLAIM",
    "MIN_MODELS_PER_K",
    "MIN_RATIO",
    "RULES",
    "adapt_claim",
    "alignment_claim",
    "compression_claim",
    "fmt_interval",
    "heldout_claim",
    "merge_claim",
    "not_testable",
    "ratio_words",
    "spectrum_claim",
]

ACC_TOL = 0.02  # two accuracy points: differences below this are treated as no difference
MIN_RATIO = 2.0  # compression below 2× is not "compression" in the paper's sense
K_CLAIM = 16  # the paper's number of directions
MIN_MODELS_PER_K = 6  # a k-direction claim needs N ≥ 6 k models

Iv = dict[str, Any]  # an interval record: point, lo, hi (and se, level, n_boot ...)

ALIGN_RULE = (
    f"after alignment (the aligned collection against a null aligned the same way), with N ≥ "
    f"{MIN_MODELS_PER_K * K_CLAIM} for k = {K_CLAIM}: null-like when the originals are within {ACC_TOL * 100:g} pt "
    f"of chance; holds if the aligned spectrum is shared-subspace and held-out mean+basis is within "
    f"{ACC_TOL * 100:g} pt of the originals and beats mean-only by > {ACC_TOL * 100:g} pt; partial if the basis "
    f"adds > {ACC_TOL * 100:g} pt otherwise; explained by the mean if the basis adds ≤ {ACC_TOL * 100:g} pt while "
    f"alignment raised held-out mean-only by > {ACC_TOL * 100:g} pt (what alignment uncovers is a shared mean, not "
    f"a subspace); null-like if the basis adds ≤ {ACC_TOL * 100:g} pt and the aligned spectrum is null-like; fails "
    "otherwise (all gains as 90 % intervals over models)"
)

RULES = {
    "intervals": "every number a verdict uses carries a 90 % interval (normal bootstrap over models, paired with "
    "null draws where a null is involved; over tasks for merging; binomial over test examples for adaptation); "
    "a comparison counts only when its whole interval clears the threshold, otherwise the verdict is "
    "'inconclusive' and says so with the interval",
    "testable": f"claims about k = {K_CLAIM} directions need N ≥ {MIN_MODELS_PER_K}·{K_CLAIM} = "
    f"{MIN_MODELS_PER_K * K_CLAIM} models; rows with fewer say 'not testable at N = …' (the analysis itself then "
    f"tests k = ⌊N/{MIN_MODELS_PER_K}⌋, shown in the evidence)",
    "spectrum": "the analysis rule applied to the parameter-weighted intervals of all matrix units: held-out EVR at "
    "k = 16 minus the null's ≥ 0.10 and in-sample EVR at k = 16 minus the null's ≥ 0.02 → holds; else mean energy "
    "≥ 0.5 and held-out mean-only error ≤ 0.75 → explained by the mean; else null-like",
    "chance": f"accuracy claims are null-like when the originals are within {ACC_TOL * 100:g} pt of chance "
    "(accuracy cannot tell the variants apart); this rule comes first",
    "head": f"for task-vector zoos, accuracy claims are explained by the head when the base model with each "
    f"model's own private tensors (its head) and no task vector is within {ACC_TOL * 100:g} pt of the originals; "
    "this rule comes second",
    "compression": f"at k = {K_CLAIM}: explained by the mean if the mean alone (μ + own private tensors) loses "
    f"≤ {ACC_TOL * 100:g} pt; holds if the archive is ≥ {MIN_RATIO:g}× smaller than the checkpoints, loses ≤ "
    f"{ACC_TOL * 100:g} pt and the mean alone loses more; fails if the archive is not {MIN_RATIO:g}× smaller or "
    f"loses more than {ACC_TOL * 100:g} pt",
    "heldout": f"at k = {K_CLAIM}, each model left out of the fit: holds if mean+basis is within "
    f"{ACC_TOL * 100:g} pt of the originals and beats mean-only by > {ACC_TOL * 100:g} pt; explained by the mean if "
    f"mean-only keeps the accuracy and the basis adds ≤ {ACC_TOL * 100:g} pt; partial if the basis helps but "
    "accuracy is lost; fails if the basis adds nothing and accuracy is lost",
    "merge": f"holds if the untuned subspace merge beats the mean and the best other untuned method by > "
    f"{ACC_TOL * 100:g} pt (over tasks); explained by the mean if it is within ±{ACC_TOL * 100:g} pt of the mean; "
    "fails if it is worse than the mean or than the best other method",
    "adapt": f"fails if the best coefficient-only row (chosen on validation) is worse than a control (head only, "
    f"mean only); explained by the head / the mean if it beats that control by ≤ {ACC_TOL * 100:g} pt; else holds "
    f"if within {ACC_TOL * 100:g} pt of full fine-tuning, partial if within {ACC_TOL * 100:g} pt of LoRA, fails "
    "if below LoRA",
    "alignment": ALIGN_RULE,
}


def _ok(iv: Iv | None) -> bool:
    return iv is not None and all(
        isinstance(iv.get(k), int | float) and math.isfinite(iv[k]) for k in ("lo", "hi")
    )


def fmt_interval(iv: Iv | None, *, pt: bool = False, signed: bool = True) -> str:
    """``+0.105 [+0.095, +0.114]`` (or in accuracy points with ``pt``; ``signed=False`` for levels, not differences).

    Examples
    --------
    >>> fmt_interval({"point": 0.1, "lo": 0.05, "hi": 0.15})
    '+0.100 [+0.050, +0.150]'
    >>> fmt_interval({"point": -0.02, "lo": -0.03, "hi": -0.01}, pt=True)
    '-2.0 pt [-3.0, -1.0]'
    """
    if iv is None or not isinstance(iv.get("point"), int | float):
        return "n/a"
    scale, unit = (100.0, " pt") if pt else (1.0, "")
    spec = f"{'+' if signed else ''}.{1 if pt else 3}f"
    text = f"{iv['point'] * scale:{spec}}{unit}"
    if _ok(iv):
        text += f" [{iv['lo'] * scale:{spec}}, {iv['hi'] * scale:{spec}}]"
    return text


def _above(iv: Iv | None, threshold: float) -> bool | None:
    """True if the interval lies entirely above ``threshold``, False if entirely at or below, None if it straddles."""
    if not _ok(iv):
        return None
    if iv["lo"] > threshold:  # type: ignore[index]
        return True
    if iv["hi"] <= threshold:  # type: ignore[index]
        return False
    return None


def _within(iv: Iv | None, tol: float) -> bool:
    return _ok(iv) and iv["lo"] >= -tol and iv["hi"] <= tol  # type: ignore[index]


def not_testable(n: int, k: int = K_CLAIM) -> str | None:
    """The ``not testable at N = …`` verdict when ``n < MIN_MODELS_PER_K · k``, else None.

    Examples
    --------
    >>> not_testable(20), not_testable(96)
    ('not testable at N = 20', None)
    """
    return f"not testable at N = {n}" if n < MIN_MODELS_PER_K * k else None


def _row(claim: str, key: str, verdict: str, evidence: str, n: int, k: int, numbers: dict[str, Any]) -> dict:
    return {
        "claim": claim,
        "key": key,
        "verdict": verdict,
        "evidence": evidence,
        "n_models": n,
        "k": k,
        "testable": not verdict.startswith("not testable"),
        "numbers": numbers,
    }


def spectrum_claim(aggregate: dict[str, Any], headline: dict[str, Any], n: int, k: int = K_CLAIM) -> dict:
    """A few directions per layer hold most of the variance (beyond a matched null), at k = 16."""
    claim = "a few directions per layer hold most of the variance"
    evr, excess, gap = aggregate.get("evr"), aggregate.get("spectrum_excess"), aggregate.get("heldout_gap")
    null = evr["point"] - excess["point"] if evr and excess else float("nan")
    k_tested = aggregate.get("k")
    text = (
        f"EVR@{k_tested} {fmt_interval(evr, signed=False)} vs null {null:.3f}; excess {fmt_interval(excess)} "
        f"(needs ≥ 0.02); held-out gain over the null {fmt_interval(gap)} (needs ≥ 0.10); "
        f"{headline['param_share'] * 100:.0f}% of matrix parameters are {headline['verdict']}"
    )
    numbers = {"evr": evr, "null_evr": null, "spectrum_excess": excess, "heldout_gap": gap, "k_tested": k_tested}
    untestable = not_testable(n, k)
    if untestable:
        return _row(
            claim,
            "spectrum",
            untestable,
            f"needs N ≥ {MIN_MODELS_PER_K * k} for k = {k}; measured at the testable k: {text}",
            n,
            k,
            numbers,
        )
    verdict = {
        "shared-subspace": "holds",
        "mean-dominated": "explained by the mean",
        "null-like": "null-like",
        "inconclusive": "inconclusive",
    }[aggregate.get("verdict", "inconclusive")]
    return _row(claim, "spectrum", verdict, text, n, k, numbers)


def _head_or_chance(above_chance: Iv, d_head: Iv | None) -> str | None:
    if _above(above_chance, ACC_TOL) is False:
        return "null-like"
    if d_head is not None and _ok(d_head) and d_head["lo"] >= -ACC_TOL:
        return "explained by the head"
    return None


def compression_claim(
    n: int,
    ratio: float,
    d_rebuilt: Iv,
    d_mean: Iv,
    above_chance: Iv,
    d_head: Iv | None = None,
    k: int = K_CLAIM,
) -> dict:
    """The shared basis at k compresses the collection without losing accuracy.

    ``d_*`` are intervals of mean per-model accuracy differences from the originals (rebuilt from the k archive,
    the mean alone, the base with the model's own head); ``above_chance`` of originals minus chance.
    """
    claim = "the shared basis compresses the collection"
    text = (
        f"archive at k = {min(k, n - 1)} is {ratio_words(ratio, 1)} than the {n} checkpoints; accuracy "
        f"{fmt_interval(d_rebuilt, pt=True)} (rebuilt) vs {fmt_interval(d_mean, pt=True)} (mean alone)"
    )
    if d_head is not None:
        text += f" vs {fmt_interval(d_head, pt=True)} (base + own head, no task vector)"
    numbers = {"ratio": ratio, "d_rebuilt": d_rebuilt, "d_mean": d_mean, "d_head": d_head}
    verdict = not_testable(n, k) or _head_or_chance(above_chance, d_head)
    if verdict is None:
        if _ok(d_mean) and d_mean["lo"] >= -ACC_TOL:
            verdict = "explained by the mean"
        elif ratio < MIN_RATIO or (_ok(d_rebuilt) and d_rebuilt["hi"] < -ACC_TOL):
            verdict = "fails"
        elif _ok(d_rebuilt) and d_rebuilt["lo"] >= -ACC_TOL and _ok(d_mean) and d_mean["hi"] < -ACC_TOL:
            verdict = "holds"
        else:
            verdict = "inconclusive"
    return _row(claim, "compression", verdict, text, n, k, numbers)


def heldout_claim(
    n: int,
    d_mb: Iv,
    d_mo: Iv,
    gain: Iv,
    above_chance: Iv,
    d_head: Iv | None = None,
    k: int = K_CLAIM,
    k_used: int | None = None,
) -> dict:
    """Unseen models (left out of the fit) are reconstructed with their accuracy by mean + basis at k."""
    claim = "unseen models are reconstructed with their accuracy"
    text = (
        f"held out, k = {k_used if k_used is not None else k}: mean+basis {fmt_interval(d_mb, pt=True)}, mean-only "
        f"{fmt_interval(d_mo, pt=True)} vs the originals; the basis adds {fmt_interval(gain, pt=True)}"
    )
    if d_head is not None:
        text += f"; base + own head {fmt_interval(d_head, pt=True)}"
    numbers = {"d_mean_plus_basis": d_mb, "d_mean_only": d_mo, "basis_gain": gain, "d_head": d_head}
    verdict = not_testable(n, k) or _head_or_chance(above_chance, d_head)
    if verdict is None:
        helps = _above(gain, ACC_TOL)
        if helps is True and _ok(d_mb) and d_mb["lo"] >= -ACC_TOL:
            verdict = "holds"
        elif helps is False and _ok(d_mo) and d_mo["lo"] >= -ACC_TOL:
            verdict = "explained by the mean"
        elif helps is True and _ok(d_mb) and d_mb["hi"] < -ACC_TOL:
            verdict = "partial"
        elif helps is False and _ok(d_mb) and d_mb["hi"] < -ACC_TOL:
            verdict = "fails"
        else:
            verdict = "inconclusive"
    return _row(claim, "heldout", verdict, text, n, k, numbers)


def merge_claim(vs_mean: Iv, vs_best: Iv, best_other_name: str, averages: dict[str, float], n_tasks: int) -> dict:
    """Subspace merging beats the baselines (the mean and the best other untuned method), over tasks."""
    claim = "subspace merging beats the baselines"
    text = (
        f"{n_tasks} tasks merged: subspace {averages['subspace']:.3f}, mean {averages['mean']:.3f}, best other "
        f"({best_other_name}) {averages[best_other_name]:.3f} (untuned); subspace − mean "
        f"{fmt_interval(vs_mean, pt=True)}, subspace − {best_other_name} {fmt_interval(vs_best, pt=True)}"
    )
    if _above(vs_mean, ACC_TOL) is True and _above(vs_best, ACC_TOL) is True:
        verdict = "holds"
    elif _within(vs_mean, ACC_TOL):
        verdict = "explained by the mean"
    elif (_ok(vs_mean) and vs_mean["hi"] < -ACC_TOL) or (_ok(vs_best) and vs_best["hi"] < -ACC_TOL):
        verdict = "fails"
    else:
        verdict = "inconclusive"
    numbers = {"vs_mean": vs_mean, "vs_best_other": vs_best, "best_other": best_other_name}
    return _row(claim, "merge", verdict, text, n_tasks, K_CLAIM, numbers)


def adapt_claim(
    coef: float,
    lora: float,
    full: float,
    head_only: float,
    mean_only: float,
    coef_params: int,
    lora_params: int,
    n_test: int,
) -> dict:
    """Training only the coefficients adapts to a new task, beside LoRA, full fine-tuning and two controls."""
    claim = "training only the coefficients adapts to a new task"
    diffs = {
        name: proportion_difference(coef, other, n_test)
        for name, other in (("head_only", head_only), ("mean_only", mean_only), ("lora", lora), ("full", full))
    }
    text = (
        f"coefficient-only {coef:.3f} ({coef_params:,} trainable besides the head) vs LoRA {lora:.3f} "
        f"({lora_params:,}) vs full fine-tuning {full:.3f}; minus head only {fmt_interval(diffs['head_only'], pt=True)}"
        f", minus mean only {fmt_interval(diffs['mean_only'], pt=True)}, minus LoRA "
        f"{fmt_interval(diffs['lora'], pt=True)} ({n_test} test examples)"
    )
    head, mean = diffs["head_only"], diffs["mean_only"]
    if (_ok(head) and head["hi"] < -ACC_TOL) or (_ok(mean) and mean["hi"] < -ACC_TOL):
        verdict = "fails"
    elif _above(head, ACC_TOL) is False:
        verdict = "explained by the head"
    elif _above(mean, ACC_TOL) is False:
        verdict = "explained by the mean"
    elif _above(head, ACC_TOL) is None or _above(mean, ACC_TOL) is None:
        verdict = "inconclusive"
    elif _ok(diffs["full"]) and diffs["full"]["lo"] >= -ACC_TOL:
        verdict = "holds"
    elif _ok(diffs["lora"]) and diffs["lora"]["lo"] >= -ACC_TOL:
        verdict = "partial"
    elif _ok(diffs["lora"]) and diffs["lora"]["hi"] < -ACC_TOL:
        verdict = "fails"
    else:
        verdict = "inconclusive"
    return _row(claim, "adapt", verdict, text, 1, K_CLAIM, {"differences": diffs, "n_test": n_test})


def proportion_difference(p1: float, p2: float, n: int, level: float = 0.90) -> Iv:
    """Interval of ``p1 − p2`` for two accuracies on the same ``n`` test examples.

    The normal approximation for independent proportions; the two variants predict the *same* examples, and
    positively correlated predictions make the true interval narrower, so this one is conservative.

    Examples
    --------
    >>> iv = proportion_difference(0.80, 0.75, 1000)
    >>> round(iv["point"], 3), round(iv["lo"], 3), round(iv["hi"], 3)
    (0.05, 0.019, 0.081)
    """
    from statistics import NormalDist

    z = NormalDist().inv_cdf((1 + level) / 2)
    se = math.sqrt(max(0.0, p1 * (1 - p1)) / max(1, n) + max(0.0, p2 * (1 - p2)) / max(1, n))
    d = p1 - p2
    return {"point": d, "lo": d - z * se, "hi": d + z * se, "se": se, "level": level, "method": "binomial"}


def _point(x: float) -> Iv:
    return {"point": x, "lo": x, "hi": x}


def alignment_claim(
    unaligned: dict[str, Any],
    aligned: dict[str, Any],
    originals: float,
    chance: float,
    *,
    n: int | None = None,
    gain: Iv | None = None,
    mean_gain: Iv | None = None,
) -> dict[str, Any]:
    """Verdict of "after alignment, from-scratch nets share a subspace" (rule: :data:`ALIGN_RULE`).

    ``gain`` is the interval of held-out mean+basis minus mean-only accuracy after alignment, ``mean_gain`` of
    aligned minus unaligned held-out mean-only accuracy (both over models); without them the point estimates of
    the rows decide.

    Examples
    --------
    >>> row = lambda v, mo, mb: {"spectrum": {"verdict": v, "k": 4, "evr": 0.5, "null_evr_hi": 0.3},
    ...                          "accuracy": {"heldout_mean_only": mo, "heldout_mean_plus_basis": mb,
    ...                                       "merged_mean": mo}}
    >>> alignment_claim(row("null-like", 0.1, 0.1), row("shared-subspace", 0.5, 0.9), 0.91, 0.1)["verdict"]
    'holds'
    >>> alignment_claim(row("null-like", 0.1, 0.1), row("null-like", 0.85, 0.84), 0.91, 0.1)["verdict"]
    'explained by the mean'
    >>> alignment_claim(row("null-like", 0.1, 0.1), row("null-like", 0.1, 0.1), 0.91, 0.1)["verdict"]
    'null-like'
    >>> alignment_claim(row("null-like", 0.1, 0.1), row("null-like", 0.1, 0.1), 0.91, 0.1, n=24)["verdict"]
    'not testable at N = 24'
    """
    s, a = aligned["spectrum"], aligned["accuracy"]
    mo, mb = a["heldout_mean_only"], a["heldout_mean_plus_basis"]
    gain = gain if gain is not None else _point(mb - mo)
    mean_gain = mean_gain if mean_gain is not None else _point(mo - unaligned["accuracy"]["heldout_mean_only"])
    helps = _above(gain, ACC_TOL)
    verdict = not_testable(n) if n is not None else None
    if verdict is not None:
        pass
    elif originals <= chance + ACC_TOL:
        verdict = "null-like"
    elif s["verdict"] == "shared-subspace" and mb >= originals - ACC_TOL and helps is True:
        verdict = "holds"
    elif helps is True:
        verdict = "partial"
    elif helps is False and _above(mean_gain, ACC_TOL) is True:
        verdict = "explained by the mean"
    elif helps is False and s["verdict"] == "null-like":
        verdict = "null-like"
    elif helps is False and _above(mean_gain, ACC_TOL) is False:
        verdict = "fails"
    else:
        verdict = "inconclusive"
    u = unaligned
    text = (
        f"aligned: EVR@{s['k']} {s['evr']:.3f} vs aligned null {s['null_evr_hi']:.3f} ({s['verdict']}); held-out "
        f"mean+basis {mb:.3f}, mean-only {mo:.3f} (basis adds {fmt_interval(gain, pt=True)}), merged mean model "
        f"{a['merged_mean']:.3f} (originals {originals:.3f}); unaligned: EVR {u['spectrum']['evr']:.3f} vs null "
        f"{u['spectrum']['null_evr_hi']:.3f}, held-out mean+basis {u['accuracy']['heldout_mean_plus_basis']:.3f}, "
        f"merged mean {u['accuracy']['merged_mean']:.3f}; alignment moved held-out mean-only by "
        f"{fmt_interval(mean_gain, pt=True)}"
    )
    return _row(
        "after alignment, from-scratch nets share a subspace",
        "alignment",
        verdict,
        text,
        n if n is not None else 0,
        int(s["k"]),
        {"basis_gain": gain, "mean_gain": mean_gain},
    )
