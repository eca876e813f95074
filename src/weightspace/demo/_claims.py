"""One-line verdicts on the paper's claims, derived from measured numbers only.

Each verdict is one of ``holds``, ``explained by the mean``, ``null-like``, ``partial`` or ``fails``; the rule
that produced it and the numbers it used are returned with it (and land in demo.json).
"""

from __future__ import annotations

from typing import Any

from weightspace.compress import ratio_words

__all__ = [
    "ACC_TOL",
    "ALIGN_RULE",
    "MIN_RATIO",
    "RULES",
    "adapt_claim",
    "alignment_claim",
    "compression_claim",
    "heldout_claim",
    "merge_claim",
    "spectrum_claim",
]

ACC_TOL = 0.02  # two accuracy points: differences below this are treated as no difference
MIN_RATIO = 2.0  # compression below 2× is not "compression" in the paper's sense

ALIGN_RULE = (
    f"after alignment (the aligned collection against a null aligned the same way): null-like when the originals are "
    f"within {ACC_TOL * 100:g} pt of chance; holds if the aligned spectrum is shared-subspace and held-out "
    f"mean+basis is within {ACC_TOL * 100:g} pt of the originals and beats mean-only by > {ACC_TOL * 100:g} pt; "
    f"partial if the basis adds > {ACC_TOL * 100:g} pt otherwise; explained by the mean if the basis adds "
    f"≤ {ACC_TOL * 100:g} pt while alignment raised held-out mean-only by > {ACC_TOL * 100:g} pt (what alignment "
    f"uncovers is a shared mean, not a subspace); null-like if the basis adds ≤ {ACC_TOL * 100:g} pt and the aligned "
    "spectrum is null-like; fails otherwise"
)

RULES = {
    "spectrum": "the analysis verdict covering most matrix parameters: shared-subspace → holds, mean-dominated → "
    "explained by the mean, null-like → null-like",
    "chance": f"accuracy claims are null-like when the originals are within {ACC_TOL * 100:g} pt of chance "
    "(accuracy cannot tell the variants apart); this rule comes first",
    "head": f"for task-vector zoos, accuracy claims are explained by the head when the base model with each "
    f"model's own private tensors (its head) and no task vector is within {ACC_TOL * 100:g} pt of the originals; "
    "this rule comes second",
    "compression": f"holds if the k90 archive is ≥ {MIN_RATIO:g}× smaller and loses ≤ {ACC_TOL * 100:g} pt of mean "
    f"accuracy while the mean alone loses more; explained by the mean if the mean alone (μ + own private tensors) "
    f"loses ≤ {ACC_TOL * 100:g} pt; null-like if the spectrum is null-like; fails otherwise",
    "heldout": f"holds if held-out mean+basis is within {ACC_TOL * 100:g} pt of the originals and beats mean-only by "
    f"> {ACC_TOL * 100:g} pt; explained by the mean if mean+basis and mean-only differ by ≤ {ACC_TOL * 100:g} pt and "
    "mean-only keeps the accuracy; null-like if they do not differ and the spectrum is null-like; partial if the "
    "basis helps but accuracy is lost; fails otherwise",
    "merge": f"holds if the untuned subspace merge beats the mean and every other untuned method by > "
    f"{ACC_TOL * 100:g} pt; explained by the mean if it is within {ACC_TOL * 100:g} pt of the mean or below it; "
    "fails otherwise",
    "adapt": f"explained by the head if the best coefficient-only row (chosen on validation) beats training only "
    f"the task head by ≤ {ACC_TOL * 100:g} pt; explained by the mean if it beats the mean-only control by "
    f"≤ {ACC_TOL * 100:g} pt; else holds if within {ACC_TOL * 100:g} pt of full fine-tuning, partial if within "
    f"{ACC_TOL * 100:g} pt of LoRA, fails otherwise",
    "alignment": ALIGN_RULE,
}


def _pt(x: float) -> str:
    return f"{x * 100:+.1f} pt"


def spectrum_claim(headline: dict[str, Any], evr: float, null_evr: float, k: int) -> dict[str, Any]:
    verdict = {"shared-subspace": "holds", "mean-dominated": "explained by the mean", "null-like": "null-like"}[
        headline["verdict"]
    ]
    text = (
        f"EVR@{k} {evr:.3f} vs null {null_evr:.3f}; {headline['param_share'] * 100:.0f}% of matrix parameters are "
        f"{headline['verdict']}"
    )
    return {"claim": "a few directions per layer hold most of the variance", "verdict": verdict, "evidence": text}


def _head_explains(acc_orig: float, acc_head: float | None) -> bool:
    return acc_head is not None and acc_head >= acc_orig - ACC_TOL


def compression_claim(
    ratio: float,
    acc_orig: float,
    acc_recon: float,
    acc_mean: float,
    spectrum_verdict: str,
    chance: float,
    acc_head: float | None = None,
) -> dict[str, Any]:
    loss, mean_loss = acc_orig - acc_recon, acc_orig - acc_mean
    if acc_orig <= chance + ACC_TOL:
        verdict = "null-like"
    elif _head_explains(acc_orig, acc_head):
        verdict = "explained by the head"
    elif mean_loss <= ACC_TOL:
        verdict = "explained by the mean"
    elif ratio >= MIN_RATIO and loss <= ACC_TOL:
        verdict = "holds"
    elif spectrum_verdict == "null-like":
        verdict = "null-like"
    else:
        verdict = "fails"
    text = (
        f"{ratio_words(ratio, 1)} at k90; accuracy {_pt(-loss)} (reconstructed) vs {_pt(-mean_loss)} (mean alone)"
    )
    if acc_head is not None:
        text += f" vs {_pt(acc_head - acc_orig)} (base + own head, no task vector)"
    return {"claim": "the shared basis compresses the collection", "verdict": verdict, "evidence": text}


def heldout_claim(
    acc_orig: float,
    acc_mean: float,
    acc_mb: float,
    spectrum_verdict: str,
    chance: float,
    acc_head: float | None = None,
) -> dict[str, Any]:
    gain = acc_mb - acc_mean
    if acc_orig <= chance + ACC_TOL:
        verdict = "null-like"
    elif _head_explains(acc_orig, acc_head):
        verdict = "explained by the head"
    elif acc_mb >= acc_orig - ACC_TOL and gain > ACC_TOL:
        verdict = "holds"
    elif abs(gain) <= ACC_TOL and acc_mean >= acc_orig - ACC_TOL:
        verdict = "explained by the mean"
    elif abs(gain) <= ACC_TOL and spectrum_verdict == "null-like":
        verdict = "null-like"
    elif gain > ACC_TOL:
        verdict = "partial"
    else:
        verdict = "fails"
    text = (
        f"held-out mean+basis {acc_mb:.3f}, mean-only {acc_mean:.3f}, originals {acc_orig:.3f} "
        f"(basis adds {_pt(gain)})"
    )
    if acc_head is not None:
        text += f"; base + own head {acc_head:.3f}"
    return {"claim": "unseen models are reconstructed with their accuracy", "verdict": verdict, "evidence": text}


def merge_claim(subspace: float, mean: float, best_other: float, best_other_name: str) -> dict[str, Any]:
    if subspace > max(mean, best_other) + ACC_TOL:
        verdict = "holds"
    elif subspace <= mean + ACC_TOL:
        verdict = "explained by the mean"
    else:
        verdict = "fails"
    text = (
        f"subspace {subspace:.3f} vs mean {mean:.3f} vs best other ({best_other_name}) {best_other:.3f} (untuned)"
    )
    return {"claim": "subspace merging beats the baselines", "verdict": verdict, "evidence": text}


def adapt_claim(
    coef: float, lora: float, full: float, head_only: float, mean_only: float, coef_params: int, lora_params: int
) -> dict[str, Any]:
    if coef <= head_only + ACC_TOL:
        verdict = "explained by the head"
    elif coef <= mean_only + ACC_TOL:
        verdict = "explained by the mean"
    elif coef >= full - ACC_TOL:
        verdict = "holds"
    elif coef >= lora - ACC_TOL:
        verdict = "partial"
    else:
        verdict = "fails"
    text = (
        f"coefficient-only {coef:.3f} ({coef_params:,} trainable besides the head) vs LoRA {lora:.3f} "
        f"({lora_params:,}) vs full fine-tuning {full:.3f}; controls: head only {head_only:.3f}, mean only "
        f"{mean_only:.3f}"
    )
    return {"claim": "training only the coefficients adapts to a new task", "verdict": verdict, "evidence": text}


def alignment_claim(
    unaligned: dict[str, Any], aligned: dict[str, Any], originals: float, chance: float
) -> dict[str, Any]:
    """Verdict of "after alignment, from-scratch nets share a subspace" (rule: :data:`ALIGN_RULE`).

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
    """
    s, a = aligned["spectrum"], aligned["accuracy"]
    mo, mb = a["heldout_mean_only"], a["heldout_mean_plus_basis"]
    gain = mb - mo
    mean_gain = mo - unaligned["accuracy"]["heldout_mean_only"]
    if originals <= chance + ACC_TOL:
        verdict = "null-like"
    elif s["verdict"] == "shared-subspace" and mb >= originals - ACC_TOL and gain > ACC_TOL:
        verdict = "holds"
    elif gain > ACC_TOL:
        verdict = "partial"
    elif mean_gain > ACC_TOL:
        verdict = "explained by the mean"
    elif s["verdict"] == "null-like":
        verdict = "null-like"
    else:
        verdict = "fails"
    u = unaligned
    text = (
        f"aligned: EVR@{s['k']} {s['evr']:.3f} vs aligned null {s['null_evr_hi']:.3f} ({s['verdict']}); held-out "
        f"mean+basis {mb:.3f}, mean-only {mo:.3f}, merged mean model {a['merged_mean']:.3f} (originals "
        f"{originals:.3f}); unaligned: EVR {u['spectrum']['evr']:.3f} vs null {u['spectrum']['null_evr_hi']:.3f}, "
        f"held-out mean+basis {u['accuracy']['heldout_mean_plus_basis']:.3f}, merged mean "
        f"{u['accuracy']['merged_mean']:.3f}"
    )
    return {"claim": "after alignment, from-scratch nets share a subspace", "verdict": verdict, "evidence": text}
