"""The documented keys of ``report.json`` (DESIGN §7 plus additions) and a validator for them.

Each table maps a key to ``(accepted types, meaning)``. ``None`` in the types means JSON null is allowed (a
statistic that cannot be measured, e.g. a held-out test with 2 models, is null rather than a made-up number).
Extra keys are allowed (the format may grow); missing keys or wrong types are errors.

Examples
--------
>>> validate_report({"version": 1})
Traceback (most recent call last):
...
weightspace.errors.InputError: report.json: missing key 'n_models' (number of models)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from weightspace.errors import InputError

__all__ = [
    "LOO_KEYS",
    "REPORT_KEYS",
    "STABILITY_KEYS",
    "SUMMARY_KEYS",
    "UNIT_KEYS",
    "validate_report",
]

_NUM = (int, float)
_NUM_OR_NULL = (int, float, type(None))
_LIST_NUM = ("list[number|null]",)
_LIST_INT = ("list[int]",)

REPORT_KEYS: dict[str, tuple[tuple[Any, ...], str]] = {
    "version": ((int,), "report format version"),
    "n_models": ((int,), "number of models"),
    "models": (("list[str]",), "model names, in order"),
    "method": ((str,), "'pca' or 'hosvd'"),
    "seed": ((int,), "seed of folds, split and nulls"),
    "n_null": ((int,), "null draws per unit"),
    "ks": (_LIST_INT, "requested k values (each unit caps them)"),
    "folds": ((dict,), "held-out scheme: scheme, n_folds, held_out (model names per fold)"),
    "split": ((dict,), "stability halves: a, b (model names)"),
    "thresholds": ((dict,), "verdict thresholds and the rule in words"),
    "units": (("list[dict]",), "one record per unit, see UNIT_KEYS"),
    "summary": ((dict,), "see SUMMARY_KEYS"),
    "notes": (("list[str]",), "method notes: the null, K-fold policy, definitions"),
    "collection": ((dict,), "kind (full/peft), delta, base, private and excluded keys"),
}

UNIT_KEYS: dict[str, tuple[tuple[Any, ...], str]] = {
    "name": ((str,), "tensor key"),
    "type": ((str,), "unit type (key without its layer index)"),
    "depth": ((int, type(None)), "layer index, null for keys without one"),
    "kind": ((str,), "'matrix' or 'vector'"),
    "lora": ((bool,), "LoRA update unit"),
    "shape": (_LIST_INT, "tensor shape"),
    "n_models": ((int,), "N"),
    "n_features": ((int,), "D"),
    "method": ((str,), "'pca' or 'hosvd' (vectors always pca)"),
    "ks": (_LIST_INT, "k values of evr/null_evr"),
    "evr": (_LIST_NUM, "cumulative explained-variance ratio at ks (hosvd: mode 1)"),
    "null_evr": (_LIST_NUM, "mean over null draws of the same"),
    "null_evr_lo": (_LIST_NUM, "lowest null draw"),
    "null_evr_hi": (_LIST_NUM, "highest null draw"),
    "k50": ((int,), "smallest k with cumulative EVR ≥ 0.5"),
    "k90": ((int,), "smallest k with cumulative EVR ≥ 0.9"),
    "k99": ((int,), "smallest k with cumulative EVR ≥ 0.99"),
    "null_k90": ((int, type(None)), "median k90 over null draws"),
    "spectrum": ((dict,), "per-component evr (+ null mean/lo/hi)"),
    "mp": ((dict,), "Marchenko–Pastur edge as EVR, top component EVR, components above the edge"),
    "mean_energy_fraction": (_NUM, "‖μ‖² / (‖μ‖² + mean ‖x_i − μ‖²)"),
    "k_ref": ((int,), "k of the verdict's held-out test"),
    "at_k_ref": ((dict,), "headline numbers at k_ref"),
    "loo": ((dict,), "held-out errors, see LOO_KEYS"),
    "stability": ((dict,), "split-half overlap, see STABILITY_KEYS"),
    "spectrum_exceeds_null": ((bool,), "in-sample EVR above the null band by the spectrum margin"),
    "verdict": ((str,), "'shared-subspace', 'mean-dominated', 'null-like' or 'inconclusive'"),
    "reasons": (("list[str]",), "the measured comparisons behind the verdict"),
}

LOO_KEYS: dict[str, tuple[tuple[Any, ...], str]] = {
    "scheme": ((str,), "'leave-one-out' or 'K-fold'"),
    "n_folds": ((int,), "number of folds"),
    "k": (_LIST_INT, "k values of the lists below"),
    "mean_only": (_NUM_OR_NULL, "mean over held-out models of ‖x − μ_S‖/‖x‖"),
    "basis_only": (_LIST_NUM, "mean of ‖x − V_kᵀV_k x‖/‖x‖ per k"),
    "mean_plus_basis": (_LIST_NUM, "mean of ‖x − μ_S − V_kᵀV_k(x − μ_S)‖/‖x‖ per k"),
    "heldout_evr": (_LIST_NUM, "1 − Σ‖mean+basis residual‖² / Σ‖mean-only residual‖² per k"),
    "null_heldout_evr": (_LIST_NUM, "the same on the null (mean over draws)"),
    "null_heldout_evr_hi": (_LIST_NUM, "highest null draw (for LoRA: over both nulls)"),
}

STABILITY_KEYS: dict[str, tuple[tuple[Any, ...], str]] = {
    "k": (_LIST_INT, "k values"),
    "overlap": (_LIST_NUM, "‖V_A V_Bᵀ‖_F² / k between the halves' top-k subspaces"),
    "null_overlap": (_LIST_NUM, "the same on the null"),
    "null_overlap_hi": (_LIST_NUM, "highest null draw"),
    "half_sizes": (_LIST_INT, "sizes of the two halves"),
}

SUMMARY_KEYS: dict[str, tuple[tuple[Any, ...], str]] = {
    "verdict_counts": ((dict,), "verdict → number of units"),
    "n_units": ((int,), "number of units"),
    "headline": ((dict,), "kind, verdict, param_share, text"),
    "by_kind": ((dict,), "matrix/vector: n_units, n_params, verdict_counts, param_share"),
    "groups": (("list[dict]",), "per unit type: counts and mean statistics at k_ref"),
}


def _ok(value: Any, kinds: tuple[Any, ...]) -> bool:
    for kind in kinds:
        if isinstance(kind, str):
            inner = kind[5:-1]
            if not isinstance(value, list):
                continue
            if inner == "str" and all(isinstance(v, str) for v in value):
                return True
            if inner == "int" and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                return True
            if inner == "dict" and all(isinstance(v, dict) for v in value):
                return True
            if inner == "number|null" and all(
                v is None or (isinstance(v, _NUM) and not isinstance(v, bool)) for v in value
            ):
                return True
        elif (kind is int and isinstance(value, bool)) or (kind in (int, float) and isinstance(value, bool)):
            continue
        elif isinstance(value, kind):
            return True
    return False


def _check(
    obj: Mapping[str, Any], table: Mapping[str, tuple[tuple[Any, ...], str]], where: str, path: Any
) -> None:
    for key, (kinds, meaning) in table.items():
        if key not in obj:
            raise InputError(f"missing key '{where}{key}' ({meaning})", path=path)
        if not _ok(obj[key], kinds):
            raise InputError(
                f"key '{where}{key}' has the wrong type ({type(obj[key]).__name__}); expected {meaning}", path=path
            )


def validate_report(data: Mapping[str, Any], *, path: str | os.PathLike[str] = "report.json") -> None:
    """Raise :class:`~weightspace.errors.InputError` unless ``data`` has every documented key with its type.

    Parameters
    ----------
    data : mapping
        A parsed ``report.json``.
    path : path, optional
        Named in the message.
    """
    if not isinstance(data, Mapping):
        raise InputError("a report must be a JSON object", path=path)
    _check(data, REPORT_KEYS, "", path)
    _check(data["summary"], SUMMARY_KEYS, "summary.", path)
    for i, unit in enumerate(data["units"]):
        where = f"units[{i}]."
        _check(unit, UNIT_KEYS, where, path)
        _check(unit["loo"], LOO_KEYS, where + "loo.", path)
        _check(unit["stability"], STABILITY_KEYS, where + "stability.", path)
        if len(unit["evr"]) != len(unit["ks"]) or len(unit["null_evr"]) != len(unit["ks"]):
            raise InputError(f"'{where}evr' and '{where}null_evr' must have one value per k in ks", path=path)
        for key in ("basis_only", "mean_plus_basis", "heldout_evr"):
            if len(unit["loo"][key]) != len(unit["loo"]["k"]):
                raise InputError(f"'{where}loo.{key}' must have one value per k in loo.k", path=path)
        if unit["verdict"] not in ("shared-subspace", "mean-dominated", "null-like", "inconclusive"):
            raise InputError(f"'{where}verdict' is not a known verdict: {unit['verdict']!r}", path=path)
