"""``--rank`` against what the data allows: refuse a rank no unit can keep, or (``--clip-rank``) cap and report."""

from __future__ import annotations

from typing import Any

from weightspace.errors import ParameterError

__all__ = ["check_rank", "k_summary"]


def check_rank(coll: Any, method: str, rank: int | None, *, center: bool, clip: bool) -> None:
    """Refuse ``--rank K`` when K is above what every unit of ``coll`` can keep under ``method``.

    Units smaller than K (a bias shorter than K) are capped whatever is asked: the effective k of every unit is
    in the archive's manifest and the command's summary. A K above the limit of *every* unit is a mistake (for
    model-axis PCA, N centered models span at most N − 1 directions) and is an error naming the limit, unless
    ``clip`` (``--clip-rank``) asks for the cap.
    """
    if rank is None or clip:
        return
    from weightspace.decompose import FitParams, unit_fit_for

    params = FitParams(n_components=rank, center=center)
    limits = []
    for spec in coll.units:
        limit = unit_fit_for(method, spec).max_components(spec, coll.n_models, params)
        if limit is None:
            return  # a method with no fixed cap for some unit: let the fit cap and report
        limits.append(limit)
    most = max(limits, default=None)
    if most is not None and rank > most:
        why = f"with --method {method}, {coll.n_models} models allow at most {most} component(s) per unit"
        if center and most == coll.n_models - 1:
            why += " (N centered models span at most N − 1 directions)"
        raise ParameterError(
            f"--rank {rank} is more than the data allows: {why}. Pass --rank {most} or less, or --clip-rank to "
            "cap k per unit (the effective k is then reported per unit)"
        )


def k_summary(units: list[dict[str, Any]], requested: int | float) -> dict[str, Any]:
    """Effective k across units beside what was requested: ``{"requested", "min", "max", "capped_units"}``.

    A unit counts as capped when an int request kept fewer components (its size or its numerical rank).
    """
    flat = [max(u["k"]) if isinstance(u["k"], list) else int(u["k"]) for u in units]
    capped = (
        [u["name"] for u, k in zip(units, flat, strict=True) if k < requested]
        if isinstance(requested, int)
        else []
    )
    return {
        "requested": requested,
        "min": min(flat, default=0),
        "max": max(flat, default=0),
        "capped_units": capped,
    }
