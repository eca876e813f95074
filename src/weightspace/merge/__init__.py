"""Data-free model merging in task-vector (ΔW) space.

Each method merges the N task vectors (fine-tuned minus base) of **one unit** (tensor key) into one merged
delta: tensors in, tensor out, computed in float64 (:func:`merge_deltas`, :data:`MERGE_METHODS`).

On top of that core:

* :func:`merge` merges checkpoints unit by unit (full checkpoints: ``base + merged ΔW`` in the base's layout and
  dtypes; LoRA adapters: merged as ``ΔW = s·B·A``, never factor-wise, into a rank-R adapter or into the base) and
  returns a :class:`MergeResult`; with ``out=`` the model is written atomically in the source layout, without it
  the result holds the merged tensors. ``subspace`` can take the basis per unit from a ``.wsz`` archive.
* :func:`centered_coefficient_sum` sums the coefficients of the centered task vectors in their PCA basis, which
  is identically the mean (kept to measure that identity). The task-accuracy benchmark on built zoos lives in
  :mod:`weightspace.bench` (:func:`~weightspace.bench.merge_benchmark`).

Per-model ``weights`` (``merge(..., weights=[...])``, ``--weights``, a recipe's per-model ``weight``) reach the
methods marked *w*; ``linear`` and ``slerp`` also merge full checkpoints without a base (raw weights).

=================== ==================================== ===================================================
name                parameters                           1-D units (bias, norm)
=================== ==================================== ===================================================
``mean``            —                                    same formula
``linear``          *w*, ``normalize``                   same formula
``slerp``           ``t`` (exactly 2 models)             same formula
``task_arithmetic`` *w*, ``lam``                         same formula
``ties``            *w*, ``density`` (per model), ``lam`` same formula
``dare``            *w*, ``p`` (per model), ``lam``,     same formula
                    ``seed``
``dare_ties``       *w*, ``p`` (per model), ``lam``,     same formula
                    ``seed``, ``normalize``
``knots``           ``inner``, ``density``, ``lam``,     the inner method on the vectors (exact KnOTS of a
                    ``s_on_v``                           1 × d matrix)
``tsv``             ``fraction``, ``lam``                ``lam`` × mean (as the reference code)
``subspace``        ``k``, ``lam``, ``elect``, ``basis`` same formula (vectors are flattened anyway)
=================== ==================================== ===================================================

Examples
--------
>>> import torch
>>> from weightspace.merge import MERGE_METHODS, merge_deltas
>>> MERGE_METHODS.names()
['dare', 'dare_ties', 'knots', 'linear', 'mean', 'slerp', 'subspace', 'task_arithmetic', 'ties', 'tsv']
>>> MERGE_METHODS.get("ties").resolve_params({"density": "0.3"})
{'density': 0.3, 'lam': 1.0}
>>> merge_deltas("ties", [torch.tensor([1.0, -2.0]), torch.tensor([3.0, 1.0])], density=1.0)
tensor([ 2., -2.], dtype=torch.float64)
"""

from __future__ import annotations

from weightspace._callable import make_callable
from weightspace.merge._apply import merge, unit_seed
from weightspace.merge._centered import centered_coefficient_sum
from weightspace.merge._methods import (
    dare,
    dare_ties,
    knots,
    linear,
    mean,
    slerp,
    subspace,
    subspace_fit,
    task_arithmetic,
    ties,
    tsv,
)
from weightspace.merge._registry import MERGE_METHODS, MergeMethod, Param, list_methods, merge_deltas, merge_method
from weightspace.merge._result import MergeResult, NotMerged, UnitStats

__all__ = [
    "MERGE_METHODS",
    "MergeMethod",
    "MergeResult",
    "NotMerged",
    "Param",
    "UnitStats",
    "centered_coefficient_sum",
    "dare",
    "dare_ties",
    "knots",
    "linear",
    "list_methods",
    "mean",
    "merge",
    "merge_deltas",
    "merge_method",
    "slerp",
    "subspace",
    "subspace_fit",
    "task_arithmetic",
    "ties",
    "tsv",
    "unit_seed",
]

make_callable(__name__)  # weightspace.merge(...) calls merge(...)
