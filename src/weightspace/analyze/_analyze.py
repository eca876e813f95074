"""``analyze``: per-unit evidence for (or against) a shared weight subspace, beside honest controls.

For every unit of a collection (see :mod:`weightspace.analyze` for the statistics) and summarised by unit type
and by matrix/vector kind. Everything random comes from explicit ``torch.Generator`` objects derived from
``seed``: the folds and the stability split from ``seed`` itself (shared by all units), each unit's null draws
from ``sha256(seed, unit name)`` (so excluding one unit does not change another's null).

References
----------
Kaushik et al., "The Universal Weight Subspace Hypothesis", arXiv:2512.05117.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from weightspace._json import json_safe
from weightspace._progress import Progress, report
from weightspace._validation import Interval, Kind, Options, validate_params
from weightspace._version import __version__
from weightspace.align import AlignOptions, align_collection, aligned_null_grams
from weightspace.analyze._bootstrap import N_BOOT, bootstrap_weights, interval
from weightspace.analyze._groups import unit_groups
from weightspace.analyze._loo import make_folds
from weightspace.analyze._methods import HOSVD_LOO_MAX_MODELS, LOO_MAX_MODELS, UNIT_ANALYZERS, analyzer_for
from weightspace.analyze._pca_unit import Plan
from weightspace.analyze._stability import split_halves
from weightspace.analyze._verdict import VERDICTS, Thresholds, decide_verdict
from weightspace.backends import RunOptions, Task, open_executor, resolve_device
from weightspace.collection import Collection, as_collection
from weightspace.decompose import DEFAULT_CHUNK_BYTES, PCAUnit
from weightspace.errors import ParameterError
from weightspace.units import UnitStack

__all__ = [
    "DEFAULT_KS",
    "DEFAULT_N_NULL",
    "HOSVD_LOO_MAX_MODELS",
    "KFOLD_DEFAULT",
    "LOO_MAX_MODELS",
    "REPORT_VERSION",
    "AnalysisReport",
    "analyze",
    "analyze_unit",
]

DEFAULT_KS = (1, 2, 4, 8, 16, 32)
DEFAULT_N_NULL = 20  # enough draws for a 5–95 % band
KFOLD_DEFAULT = 10
REPORT_VERSION = 1

_KS_RULE = [Kind((list, tuple), "a non-empty sequence of ints >= 1")]


def _unit_seed(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}\0{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    validate_params("analyze", {"ks": _KS_RULE}, {"ks": ks})
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ParameterError(
            f"The 'ks' parameter of analyze must be a non-empty sequence of ints >= 1. Got {ks!r}."
        )
    return tuple(sorted(set(int(k) for k in ks)))


def _plan(
    n: int,
    method: str,
    seed: int,
    n_null: int,
    ks: tuple[int, ...],
    folds: int | None,
    thresholds: Thresholds,
    n_boot: int = N_BOOT,
) -> Plan:
    if folds is not None and not 2 <= folds <= n:
        raise ParameterError(
            f"The 'folds' parameter of analyze must be an int in [2, {n}] (n_models). Got {folds}."
        )
    loo_max = UNIT_ANALYZERS.get(method).loo_max_models
    n_folds = folds if folds is not None else (n if n <= loo_max else min(KFOLD_DEFAULT, n))
    g = torch.Generator().manual_seed(seed)
    fold_sets = make_folds(n, n_folds, generator=g)
    scheme = "leave-one-out" if n_folds == n else f"{n_folds}-fold"
    split = split_halves(n, generator=g)
    # One set of resamples for every unit: per-unit bootstrap samples then combine into collection intervals.
    boot = bootstrap_weights(n, n_boot, generator=g) if n_boot > 0 else None
    return Plan(ks, fold_sets, scheme, split, n_null, thresholds, n_boot, boot)


def _validate(
    method: str, seed: int, n_null: int, folds: int | None, chunk_bytes: int, n_boot: int = N_BOOT
) -> None:
    validate_params(
        "analyze",
        {
            "method": [Options(UNIT_ANALYZERS.names())],
            "seed": [Interval(int, 0, None)],
            "n_null": [Interval(int, 1, None)],
            "folds": [Options((None,)), Interval(int, 2, None)],
            "chunk_bytes": [Interval(int, 1, None)],
            "n_boot": [Interval(int, 0, None)],
        },
        {
            "method": method,
            "seed": seed,
            "n_null": n_null,
            "folds": folds,
            "chunk_bytes": chunk_bytes,
            "n_boot": n_boot,
        },
    )


def _at(rec: dict[str, Any]) -> dict[str, Any]:
    """The unit's headline numbers at its k_ref (all measured; looked up, never interpolated)."""
    k = rec["k_ref"]
    loo, stab = rec["loo"], rec["stability"]
    lora = rec.get("lora_null") if rec.get("lora_null") and "evr" in rec["lora_null"] else None
    nan = float("nan")
    k_stab = max((j for j in stab["k"] if j <= k), default=None)

    def pick(ks: list[int], values: list[float]) -> float:
        return values[ks.index(k)] if k in ks and values else nan

    return {
        "k": k,
        "evr": pick(rec["ks"], rec["evr"]),
        "null_evr": pick(rec["ks"], rec["null_evr"]),
        "null_evr_hi": pick(rec["ks"], rec["null_evr_hi"]),
        "heldout_evr": pick(loo["k"], loo["heldout_evr"]),
        "null_heldout_evr": pick(loo["k"], loo["null_heldout_evr"]),
        "null_heldout_evr_hi": pick(loo["k"], loo["null_heldout_evr_hi"]),
        "mean_only": loo["mean_only"],
        "basis_only": pick(loo["k"], loo["basis_only"]),
        "mean_plus_basis": pick(loo["k"], loo["mean_plus_basis"]),
        # The halves are half as large, so their k stops lower: the largest stability k ≤ k_ref.
        "overlap_k": k_stab,
        "overlap": stab["overlap"][stab["k"].index(k_stab)] if k_stab is not None else nan,
        "null_overlap": stab["null_overlap"][stab["k"].index(k_stab)] if k_stab is not None else nan,
        "spectrum_excess": rec["spectrum_excess"] if rec["spectrum_excess"] is not None else nan,
        "spectrum_excess_k": rec["spectrum_excess_k"],
        "lora_null_evr": pick(rec["ks"], lora["evr"]) if lora else nan,
        "lora_null_evr_hi": pick(rec["ks"], lora["evr_hi"]) if lora else nan,
        "null_evr_p05": pick(rec["ks"], rec.get("null_evr_p05") or []),
        "null_evr_p95": pick(rec["ks"], rec.get("null_evr_p95") or []),
        "testable": rec.get("testable", True),
        "intervals": rec.get("intervals", {}),
    }


def analyze_unit(
    stack: UnitStack | Sequence[torch.Tensor],
    *,
    method: str = PCAUnit.method,
    seed: int = 0,
    n_null: int = DEFAULT_N_NULL,
    ks: Sequence[int] = DEFAULT_KS,
    folds: int | None = None,
    thresholds: Thresholds | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    n_boot: int = N_BOOT,
) -> dict[str, Any]:
    """Evidence and verdict for one unit (the functional core behind :func:`analyze`).

    Parameters
    ----------
    stack : UnitStack or sequence of Tensor
        N ≥ 2 members of one shape.
    method : str
        A registered analysis method (:data:`UNIT_ANALYZERS`: ``pca``, ``hosvd``); units the method cannot fit
        (vectors under ``hosvd``) use its fallback.
    seed, n_null, ks, folds, thresholds, chunk_bytes, n_boot
        As in :func:`analyze`.

    Returns
    -------
    dict
        The unit's record with the keys of ``report.json``'s ``units[...]`` (floats may be NaN here; the
        report turns them into null).

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> rec = analyze_unit([torch.randn(8, 8, generator=g) for _ in range(6)], n_null=2)
    >>> rec["verdict"], rec["ks"], rec["loo"]["scheme"]
    ('null-like', [1, 2, 4, 5], 'leave-one-out')
    """
    if not isinstance(stack, UnitStack):
        stack = UnitStack.from_tensors(list(stack))
    _validate(method, seed, n_null, folds, chunk_bytes, n_boot)
    if stack.n < 2:
        raise ParameterError(f"analyze_unit needs at least 2 members. Got {stack.n}.")
    t = thresholds or Thresholds()
    plan = _plan(stack.n, method, seed, n_null, _check_ks(ks), folds, t, n_boot)
    gen = torch.Generator().manual_seed(_unit_seed(seed, stack.spec.name))
    rec = analyzer_for(method, stack.spec).run(stack, plan, gen, chunk_bytes)
    rec.pop("_samples", None)
    rec["at_k_ref"] = _at(rec)
    return rec


def _unit_record(
    collection: Collection, name: str, method: str, plan: Plan, seed: int, chunk_bytes: int
) -> dict[str, Any]:
    """One unit's evidence (a task: it reads the unit from paths its worker sees; the nulls use the unit's seed)."""
    spec = collection.unit(name)
    gen = torch.Generator().manual_seed(_unit_seed(seed, name))
    return analyzer_for(method, spec).run(collection.stack(name), plan, gen, chunk_bytes)


def _counts(units: Sequence[dict[str, Any]]) -> dict[str, int]:
    out = dict.fromkeys(VERDICTS, 0)
    for u in units:
        out[u["verdict"]] += 1
    return out


def _mean(values: Sequence[float | None]) -> float:
    ok = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(ok) / len(ok) if ok else float("nan")


_AGGREGATED = ("evr", "spectrum_excess", "heldout_evr", "heldout_gap", "mean_energy_fraction", "mean_only")


def _aggregate(
    units: list[dict[str, Any]], samples: list[dict[str, torch.Tensor]], kind: str, t: Thresholds
) -> dict[str, Any]:
    """Parameter-weighted means over the units of ``kind`` of the verdict's statistics, with intervals.

    The units share their bootstrap resamples (``Plan.boot_idx``), so the weighted mean of their per-resample
    values is a resample of the weighted mean: a proper interval for the collection, not an average of
    intervals. The collection-level verdict applies the unit rule to these intervals.
    """
    sel = [(u, smp) for u, smp in zip(units, samples, strict=True) if u["kind"] == kind]
    out: dict[str, Any] = {"kind": kind, "weights": "number of parameters", "n_units": len(sel)}
    if not sel:
        return out
    ks = sorted({u["at_k_ref"]["k"] for u, _ in sel})
    out["k"] = ks[0] if len(ks) == 1 else ks
    out["testable"] = all(u.get("testable", True) for u, _ in sel)
    for key in _AGGREGATED:
        have = [(u, smp) for u, smp in sel if key in smp and key in (u.get("intervals") or {})]
        if not have:
            continue
        w = torch.tensor([float(math.prod(u["shape"])) for u, _ in have], dtype=torch.float64)
        w = w / w.sum()
        stacked = torch.stack([smp[key].to(torch.float64) for _, smp in have])  # (units, n_boot)
        point = float(sum(wi * float(u["intervals"][key]["point"]) for wi, (u, _) in zip(w, have, strict=True)))
        out[key] = interval((w[:, None] * stacked).sum(dim=0), point=point)
        out[key]["n_units"] = len(have)

    def pair(key: str) -> tuple[float, float] | None:
        return (out[key]["lo"], out[key]["hi"]) if key in out else None

    mef = out.get("mean_energy_fraction", {}).get("point")
    verdict, reasons = decide_verdict(
        heldout_evr=out["heldout_evr"]["point"] if "heldout_evr" in out else None,
        null_heldout_evr_hi=(
            out["heldout_evr"]["point"] - out["heldout_gap"]["point"] if "heldout_gap" in out else None
        ),
        spectrum_excess=out["spectrum_excess"]["point"] if "spectrum_excess" in out else None,
        mean_energy_fraction=mef if mef is not None else _mean([u["mean_energy_fraction"] for u, _ in sel]),
        mean_only=out["mean_only"]["point"] if "mean_only" in out else None,
        thresholds=t,
        k_ref=ks[0] if ks else None,
        heldout_gap_interval=pair("heldout_gap"),
        spectrum_excess_interval=pair("spectrum_excess"),
        mean_energy_interval=pair("mean_energy_fraction"),
        mean_only_interval=pair("mean_only"),
        testable=out["testable"],
    )
    out["verdict"], out["reasons"] = verdict, reasons
    return out


def _summary(
    units: list[dict[str, Any]], samples: list[dict[str, torch.Tensor]] | None = None, t: Thresholds | None = None
) -> dict[str, Any]:
    by_kind: dict[str, Any] = {}
    for kind in ("matrix", "vector"):
        sel = [u for u in units if u["kind"] == kind]
        params = sum(math.prod(u["shape"]) for u in sel)
        share = dict.fromkeys(VERDICTS, 0.0)
        for u in sel:
            share[u["verdict"]] += math.prod(u["shape"]) / params if params else 0.0
        by_kind[kind] = {
            "n_units": len(sel),
            "n_params": params,
            "verdict_counts": _counts(sel),
            "param_share": share,
        }
    main = "matrix" if by_kind["matrix"]["n_units"] else "vector"
    share = by_kind[main]["param_share"]
    # On a tie the more conservative verdict heads the report (null-like, then mean-dominated).
    top = max(VERDICTS, key=lambda v: (share[v], VERDICTS.index(v)))
    cnt = by_kind[main]["verdict_counts"]

    def listing(kind: str) -> str:
        c = by_kind[kind]["verdict_counts"]
        return ", ".join(f"{c[v]} {v}" for v in VERDICTS)

    text = (
        f"{share[top]:.0%} of {main} parameters ({cnt[top]} of {by_kind[main]['n_units']} {main} units) are {top}. "
        f"{main.capitalize()} units: {listing(main)}."
    )
    if main == "matrix" and by_kind["vector"]["n_units"]:
        text += f" Vector units (reported separately): {listing('vector')}."
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for u in units:
        groups.setdefault((u["kind"], u["type"]), []).append(u)
    group_rows = []
    for (kind, typ), sel in sorted(groups.items(), key=lambda kv: (kv[0][0] != "matrix",)):
        at = [u["at_k_ref"] for u in sel]
        group_rows.append(
            {
                "type": typ,
                "kind": kind,
                "n_units": len(sel),
                "units": [u["name"] for u in sel],
                "depths": [u["depth"] for u in sel],
                "verdict_counts": _counts(sel),
                "k_ref": sorted({a["k"] for a in at}),
                "evr_at_k_ref": _mean([a["evr"] for a in at]),
                "null_evr_at_k_ref": _mean([a["null_evr"] for a in at]),
                "heldout_evr_at_k_ref": _mean([a["heldout_evr"] for a in at]),
                "null_heldout_evr_at_k_ref": _mean([a["null_heldout_evr"] for a in at]),
                "mean_energy_fraction": _mean([u["mean_energy_fraction"] for u in sel]),
                "loo_mean_only": _mean([a["mean_only"] for a in at]),
                "loo_basis_only_at_k_ref": _mean([a["basis_only"] for a in at]),
                "loo_mean_plus_basis_at_k_ref": _mean([a["mean_plus_basis"] for a in at]),
                "k90": _mean([u["k90"] for u in sel]),
                "null_k90": _mean([u["null_k90"] for u in sel]),
                "stability_k": sorted({a["overlap_k"] for a in at if a["overlap_k"] is not None}),
                "overlap": _mean([a["overlap"] for a in at]),
                "null_overlap": _mean([a["null_overlap"] for a in at]),
                "spectrum_excess_max": max(
                    (a["spectrum_excess"] for a in at if math.isfinite(a["spectrum_excess"])), default=math.nan
                ),
            }
        )
    aggregate = _aggregate(units, samples or [{} for _ in units], main, t or Thresholds())
    return {
        "verdict_counts": _counts(units),
        "n_units": len(units),
        "headline": {"kind": main, "verdict": top, "param_share": share[top], "text": text},
        "aggregate": aggregate,
        "by_kind": by_kind,
        "groups": group_rows,
    }


def _notes(plan: Plan, method: str, n: int, is_peft: bool) -> list[str]:
    t = plan.thresholds
    notes = [
        "Every model is a row x_i (flattened unit; a task vector W_i − W_base with --base, ΔW = s·B·A for LoRA); "
        "μ is their mean. EVR = σ_j² / Σσ² of the centered stack (against the full spectrum); 'evr' lists the "
        "cumulative EVR at each k in 'ks' (capped by N − 1), 'spectrum.evr' the per-component values.",
        f"Null: {plan.n_null} draws of a matched Gaussian null per unit — N iid N(0, I_D) rows rescaled to the "
        "collection's centered norms ‖x_i − μ‖ (the spread, not the mean), then centered again. Its N × N Gram "
        "is drawn directly as Wishart(D, I_N) by the Bartlett decomposition (never N × D samples). Bands are the "
        "min/max over draws; 'null_k90' is the median over draws.",
        "Marchenko–Pastur: 'mp.edge_evr' = (1 + sqrt(p/q))² / p with p = min(N − 1, D), q = max(N − 1, D): the "
        "share of variance a single component of isotropic noise can reach at the bulk edge (large-N/D limit); "
        "'mp.n_above_edge' counts components above it.",
        "Mean energy fraction = ‖μ‖² / (‖μ‖² + mean_i ‖x_i − μ‖²); pure noise gives about 1/N.",
        f"Held-out evaluation: {plan.scheme} ({len(plan.folds)} folds; leave-one-out up to "
        f"{HOSVD_LOO_MAX_MODELS if method == 'hosvd' else LOO_MAX_MODELS} models, else {KFOLD_DEFAULT}-fold, "
        "seeded). Per held-out model h, with μ_S and basis V_k fitted without it: mean-only ‖x_h − μ_S‖/‖x_h‖, "
        "basis-only ‖x_h − V_kᵀV_k x_h‖/‖x_h‖, mean+basis ‖x_h − μ_S − V_kᵀV_k(x_h − μ_S)‖/‖x_h‖, averaged over "
        "models. Held-out EVR = 1 − Σ_h‖mean+basis residual‖² / Σ_h‖mean-only residual‖²: the share of a new "
        "model's deviation from the mean the basis captures; compared with the same statistic on the nulls.",
        "PCA units are evaluated from one data pass: the centered Gram, X_c μ and ‖μ‖² give every fold's PCA and "
        "projections as N × N algebra (no basis is formed).",
        "Stability: the models are split once at random (seeded) into two halves; 'overlap' = ‖V_A V_Bᵀ‖_F² / k, "
        "the mean squared cosine of the principal angles between the halves' top-k subspaces (1 = identical, "
        "≈ k/D for random subspaces), beside the same statistic on the null.",
        f"Verdict thresholds (k_ref = {t.k_ref}, tested at k = min(k_ref, ⌊N/{t.min_models_per_k}⌋) = "
        f"{t.k_testable(n)} here, capped per unit by the folds): " + " | ".join(t.to_dict()["rule"]),
        f"Uncertainty: {plan.n_boot} bootstrap resamples of the models; each resample is paired with one null "
        "draw resampled with the same indices, so 'intervals' hold 5–95 % percentile intervals of the spectrum "
        "excess and the held-out gap over the null at the tested k, of the mean energy fraction and of the "
        "held-out mean-only error. The null bands 'null_evr_p05'/'null_evr_p95' are the 5–95 % range of the "
        "draws ('null_evr_lo'/'null_evr_hi' their min/max).",
    ]
    if is_peft:
        notes.append(
            "LoRA units also get a rank-r Gaussian ΔW null: ΔW_i = B_i A_i with Gaussian factors at each model's "
            "rank, matched centered norms; its Gram needs only R × R Wishart draws (R = Σ r_i). The verdict must "
            "beat the higher of the two null bands."
        )
    note = UNIT_ANALYZERS.get(method).note
    if note:
        notes.append(note)
    if n < 4:
        notes.append(f"Only {n} models: held-out and stability tests have little or no power.")
    return notes


@dataclass
class AnalysisReport:
    """The result of :func:`analyze`: a JSON-able dict with the stable keys of ``report.json``.

    Attributes
    ----------
    data : dict
        ``{"version", "n_models", "models", "method", "units": [...], "summary": {...}, ...}``.
    """

    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """A deep copy of the report as plain JSON types."""
        return copy.deepcopy(self.data)

    @property
    def units(self) -> list[dict[str, Any]]:
        """Per-unit records, in the collection's unit order."""
        return self.data["units"]

    @property
    def summary(self) -> dict[str, Any]:
        return self.data["summary"]

    @property
    def verdicts(self) -> dict[str, str]:
        """Unit name → verdict."""
        return {u["name"]: u["verdict"] for u in self.units}

    def save(self, report_dir: str | os.PathLike[str], *, plots: bool = True, overwrite: bool = False) -> Path:
        """Write ``report.json``, the PNGs and ``report.html`` into ``report_dir`` atomically.

        Parameters
        ----------
        report_dir : path
            Created (or replaced as a whole) only once every file is complete.
        plots : bool, default True
            Without plots no matplotlib is needed; with plots a missing matplotlib raises
            :class:`~weightspace.errors.DependencyError` before anything is written.
        overwrite : bool, default False
            Replace an existing ``report_dir`` that is not a weightspace report (refused otherwise).

        Returns
        -------
        Path
        """
        from weightspace.report import write_report

        return write_report(self.data, report_dir, plots=plots, overwrite=overwrite)

    def print_summary(self, console: Any = None) -> None:
        """A short rich summary on ``console`` (default: stderr)."""
        from weightspace.report import print_summary

        print_summary(self.data, console=console)


def analyze(
    collection: Collection | Sequence[str | os.PathLike[str]],
    *,
    method: str = PCAUnit.method,
    seed: int = 0,
    n_null: int = DEFAULT_N_NULL,
    ks: Sequence[int] = DEFAULT_KS,
    folds: int | None = None,
    thresholds: Thresholds | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    align: AlignOptions | bool | None = None,
    progress: Progress | None = None,
    n_boot: int = N_BOOT,
    threads: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    device: str | None = None,
) -> AnalysisReport:
    """Spectra vs matched nulls, mean energy, held-out reconstruction and stability for every unit.

    Parameters
    ----------
    collection : Collection or sequence of path-like
        N ≥ 2 models (paths are opened with :func:`~weightspace.collection.as_collection`).
    method : str, default ``pca``
        A registered analysis method: model-axis PCA (one streamed pass per unit), or ``hosvd`` (HOSVD of
        order 2 for matrix units, three reads).
    seed : int, default 0
        Seeds the folds, the stability split and (with the unit name) each unit's null draws.
    n_null : int, default 20
        Null draws per unit (the null bands are their 5–95 % range; min/max are reported too).
    ks : sequence of int, default (1, 2, 4, 8, 16, 32)
        Components at which EVR, held-out errors and stability are reported (capped per unit).
    folds : int, optional
        K of a K-fold held-out evaluation; default leave-one-out up to 64 models (10 for HOSVD), else 10.
    thresholds : Thresholds, optional
        Verdict thresholds (defaults documented in :class:`Thresholds`).
    chunk_bytes : int
        Budget of one streamed float64 chunk across all models.
    align : AlignOptions or bool, optional
        Remove permutation (and, opt-in, scale) symmetries first (``True``: default
        :class:`~weightspace.align.AlignOptions`). The null is then a matched Gaussian aligned by the same
        procedure (alignment alone pulls unrelated models together), and the report gains ``alignment``.
        Model-axis PCA only.
    progress : callable, optional
        ``progress(stage, done, total)``.
    n_boot : int, default 200
        Bootstrap resamples over models behind every interval a verdict uses (0: point estimates only).
    threads, scheduler, client, device
        Where the units run (see :class:`~weightspace.backends.RunOptions`): ``threads`` units at once here
        (default every core) or on Dask workers; ``device`` for the linear algebra. The report does not depend
        on them (every unit draws its nulls from its own seed).

    Returns
    -------
    AnalysisReport

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from safetensors.torch import save_file
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> g = torch.Generator().manual_seed(0)
    >>> for i in range(6):
    ...     save_file({"w": torch.randn(8, 16, generator=g)}, d / f"m{i}.safetensors")
    >>> rep = analyze(Collection.from_paths([d]), n_null=2)
    >>> rep.verdicts, rep.data["n_models"]
    ({'w': 'null-like'}, 6)
    """
    t0 = time.perf_counter()
    _validate(method, seed, n_null, folds, chunk_bytes, n_boot)
    collection = as_collection(collection)
    ks_t = _check_ks(ks)
    t = thresholds or Thresholds()
    n = collection.n_models
    if n < 2:
        raise ParameterError(f"analyze needs at least 2 models. Got {n}.")
    run = RunOptions.of(threads=threads, scheduler=scheduler, client=client, device=device)
    plan = _plan(n, method, seed, n_null, ks_t, folds, t, n_boot)
    plan.device = str(resolve_device(run.device))
    alignment = None
    if align:
        if method != PCAUnit.method:
            raise ParameterError(
                f"analyze with align supports method '{PCAUnit.method}' only (its aligned null is a model-axis "
                f"Gram). Got {method!r}."
            )
        opts = align if isinstance(align, AlignOptions) else AlignOptions()
        original = collection
        collection, aligned = align_collection(original, opts, progress=progress)
        plan.null_grams = aligned_null_grams(original, aligned, opts, n_null=n_null, seed=seed, progress=progress)
        alignment = aligned.to_dict()
    groups = unit_groups([u.name for u in collection.units])
    units: list[dict[str, Any]] = []
    samples: list[dict[str, torch.Tensor]] = []
    n_units = len(collection.units)
    report(progress, "units", 0, n_units)
    records: dict[int, dict[str, Any]] = {}
    with open_executor(run) as ex:
        plan.cache_bytes = ex.task_bytes(run.cache_bytes)
        shared, shared_plan = ex.share(collection), ex.share(plan)
        tasks = [
            Task(_unit_record, (shared, spec.name, method, shared_plan, seed, chunk_bytes), f"unit '{spec.name}'")
            for spec in collection.units
        ]
        for i, rec in ex.run(tasks):
            records[i] = rec
            report(progress, "units", len(records), n_units)
    for i, spec in enumerate(collection.units):
        rec = records[i]
        samples.append(rec.pop("_samples", {}))
        typ, depth = groups[spec.name]
        units.append(
            {
                "name": spec.name,
                "type": typ,
                "depth": depth,
                "kind": spec.kind,
                "lora": spec.lora,
                "shape": list(spec.shape),
                **rec,
                "at_k_ref": _at(rec),
            }
        )
    a, b = plan.split
    data = {
        "version": REPORT_VERSION,
        "created_by": f"weightspace {__version__}",
        "n_models": n,
        "models": list(collection.names),
        "sources": [str(s.path) for s in collection.sources],
        "method": method,
        "spectrum_label": UNIT_ANALYZERS.get(method).spectrum_label,
        "seed": seed,
        "n_null": n_null,
        "n_boot": n_boot,
        "ks": list(ks_t),
        "collection": {
            "kind": "peft" if collection.is_peft else "full",
            "delta": collection.is_delta,
            "base": None if collection.base is None else str(collection.base.path),
            "private": [{"key": p.key, "reason": p.reason} for p in collection.private.values()],
            "excluded": list(collection.excluded),
        },
        "folds": {
            "scheme": plan.scheme,
            "n_folds": len(plan.folds),
            "held_out": [[collection.names[i] for i in f.tolist()] for f in plan.folds],
        },
        "split": {
            "a": [collection.names[i] for i in a.tolist()],
            "b": [collection.names[i] for i in b.tolist()],
        },
        "thresholds": t.to_dict(),
        "units": units,
        "summary": _summary(units, samples, t),
        "notes": _notes(plan, method, n, collection.is_peft),
        "wall_s": time.perf_counter() - t0,
    }
    if alignment is not None:
        data["alignment"] = alignment
        data["notes"].append(
            f"Aligned first ({', '.join(alignment['symmetries'])}; to {alignment['to']}, reference "
            f"{alignment['reference']}; mean distance to the target {alignment['mean_distance_before']:.4g} → "
            f"{alignment['mean_distance_after']:.4g}). The null is aligned by the same procedure: each draw is N "
            "Gaussian models with the raw mean and raw centered norms of the collection, aligned with the same "
            "spec, reference rule, target and seed, so alignment alone cannot pass for shared structure. The "
            "reference (or mean) is chosen with every model, held-out ones included, in the data and the null alike."
        )
    return AnalysisReport(json_safe(data))
