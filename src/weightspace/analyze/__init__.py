"""Is there a shared weight subspace, or only a mean? Evidence per unit, beside matched nulls.

For each unit (and summarised by unit type and by matrix/vector kind):

* the spectrum of the centered stack, cumulative EVR at k ∈ ks and k for 50/90/99 %;
* a matched Gaussian null (same N, D and centered per-model norms; Wishart/Bartlett Gram draws), for LoRA units
  also a rank-r Gaussian ΔW null, and the Marchenko–Pastur edge;
* the mean energy fraction ``‖μ‖² / (‖μ‖² + mean_i ‖x_i − μ‖²)``;
* leave-one-out (or K-fold) relative errors of mean-only, basis-only and mean + basis reconstructions, and the
  held-out EVR compared with the null;
* split-half stability of the top-k subspace vs the null;
* bootstrap intervals over models (paired with null draws) for every number the verdict uses;
* a verdict — ``shared-subspace``, ``mean-dominated``, ``null-like`` or ``inconclusive`` — by the rule in
  :class:`Thresholds`, at the tested k = min(16, ⌊N/6⌋).

References
----------
Kaushik et al., "The Universal Weight Subspace Hypothesis", arXiv:2512.05117.
"""

from weightspace._callable import make_callable
from weightspace.analyze._analyze import (
    DEFAULT_KS,
    DEFAULT_N_NULL,
    HOSVD_LOO_MAX_MODELS,
    KFOLD_DEFAULT,
    LOO_MAX_MODELS,
    REPORT_VERSION,
    AnalysisReport,
    analyze,
    analyze_unit,
)
from weightspace.analyze._bootstrap import LEVEL as BOOTSTRAP_LEVEL
from weightspace.analyze._bootstrap import N_BOOT, bootstrap_weights
from weightspace.analyze._bootstrap import interval as bootstrap_interval
from weightspace.analyze._groups import unit_groups, unit_type
from weightspace.analyze._loo import (
    HeldOut,
    fit_subset,
    fit_subsets,
    heldout_evr_from_gram,
    heldout_from_gram,
    make_folds,
)
from weightspace.analyze._methods import UNIT_ANALYZERS, UnitAnalyzer, analyzer_for
from weightspace.analyze._nulls import (
    center_gram,
    gaussian_null_gram,
    lora_null_gram,
    matched_gram,
    mp_edge,
    mp_edge_evr,
    spectrum_evr,
    wishart_gram,
)
from weightspace.analyze._stability import split_halves, subspace_overlap
from weightspace.analyze._verdict import VERDICTS, Thresholds, decide_verdict

__all__ = [
    "BOOTSTRAP_LEVEL",
    "DEFAULT_KS",
    "DEFAULT_N_NULL",
    "HOSVD_LOO_MAX_MODELS",
    "KFOLD_DEFAULT",
    "LOO_MAX_MODELS",
    "N_BOOT",
    "REPORT_VERSION",
    "UNIT_ANALYZERS",
    "VERDICTS",
    "AnalysisReport",
    "HeldOut",
    "Thresholds",
    "UnitAnalyzer",
    "analyze",
    "analyze_unit",
    "analyzer_for",
    "bootstrap_interval",
    "bootstrap_weights",
    "center_gram",
    "decide_verdict",
    "fit_subset",
    "fit_subsets",
    "gaussian_null_gram",
    "heldout_evr_from_gram",
    "heldout_from_gram",
    "lora_null_gram",
    "make_folds",
    "matched_gram",
    "mp_edge",
    "mp_edge_evr",
    "spectrum_evr",
    "split_halves",
    "subspace_overlap",
    "unit_groups",
    "unit_type",
    "wishart_gram",
]

make_callable(__name__)  # weightspace.analyze(...) calls analyze(...)
