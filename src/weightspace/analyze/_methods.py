"""Per-method unit analyzers, registered under the decomposition's registry name.

Each analyzer owns what differs between decompositions: the per-unit evidence function, how many models it can
afford leave-one-out for, which units it applies to (the rest use the decomposition's fallback, as in
:func:`weightspace.decompose.unit_fit_for`), the report note that explains its statistics and the label of its
spectrum plot. :func:`weightspace.analyze.analyze` only looks them up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from weightspace._registry import Registry
from weightspace.analyze._hosvd_unit import analyze_hosvd_unit
from weightspace.analyze._pca_unit import Plan, analyze_pca_unit
from weightspace.decompose import UNIT_FITS, PCAUnit, TuckerUnit, unit_fit_for
from weightspace.units import UnitSpec, UnitStack

__all__ = ["UNIT_ANALYZERS", "UnitAnalyzer", "analyzer_for"]

# Leave-one-out costs one N×N eigendecomposition per model: N⁴ in all, trivial up to N = 64; above, K-fold.
LOO_MAX_MODELS = 64
# HOSVD folds cost two reads of the fold and two (rows², cols²) eigendecompositions each: K-fold sooner.
HOSVD_LOO_MAX_MODELS = 10


@dataclass(frozen=True)
class UnitAnalyzer:
    """How ``analyze`` treats the units of one decomposition method.

    Attributes
    ----------
    method : str
        The decomposition's registry name.
    run : callable
        ``run(stack, plan, generator, chunk_bytes) -> dict``: the unit's record.
    loo_max_models : int
        Leave-one-out up to this many models; K-fold above.
    note : str or None
        A report note explaining this method's statistics.
    spectrum_label : str
        Suffix of the spectrum plot's title.
    """

    method: str
    run: Callable[[UnitStack, Plan, torch.Generator, int], dict[str, Any]]
    loo_max_models: int
    note: str | None = None
    spectrum_label: str = ""


UNIT_ANALYZERS: Registry[UnitAnalyzer] = Registry("analysis method")


def analyzer_for(method: str, spec: UnitSpec) -> UnitAnalyzer:
    """The analyzer for ``spec`` under ``method`` (units the method cannot fit use its fallback's analyzer)."""
    UNIT_ANALYZERS.get(method)  # an unknown method lists the analyzable ones
    # A fit that specialises another (LoRA units under hosvd are fitted factored) is analyzed as its parent class.
    fits = unit_fit_for(method, spec).__mro__
    return UNIT_ANALYZERS.get(next(c.method for c in fits if getattr(c, "method", None) in UNIT_ANALYZERS))


def _pca(stack: UnitStack, plan: Plan, generator: torch.Generator, chunk_bytes: int) -> dict[str, Any]:
    return analyze_pca_unit(stack, plan, generator=generator, chunk_bytes=chunk_bytes)


def _tucker(stack: UnitStack, plan: Plan, generator: torch.Generator, chunk_bytes: int) -> dict[str, Any]:
    return analyze_hosvd_unit(stack, plan, generator=generator)


UNIT_ANALYZERS.register(PCAUnit.method, UnitAnalyzer(PCAUnit.method, _pca, LOO_MAX_MODELS))
UNIT_ANALYZERS.register(
    TuckerUnit.method,
    UnitAnalyzer(
        TuckerUnit.method,
        _tucker,
        HOSVD_LOO_MAX_MODELS,
        note=(
            "HOSVD: 'evr'/'null_evr'/'k90' refer to mode 1 (rows); 'modes' holds both. Mode-1 null = "
            "Wishart((N_eff − 1)·cols, I_rows) with Kish's effective count N_eff matching the per-model norms "
            "(mode 2 alike). Held-out: k1 = k2 = k, per-fold training scatters = totals − fold (3 reads per model); "
            "held-out null = k²/(rows·cols), stability null = k/dim (isotropic expectations). Vectors use PCA; the "
            "rank-r LoRA null is computed for PCA units only."
        ),
        spectrum_label=" (HOSVD: mode 1)",
    ),
)
assert all(name in UNIT_FITS for name in UNIT_ANALYZERS)  # analyzers only exist for registered decompositions
