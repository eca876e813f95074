"""Data-free model merging in task-vector (ΔW) space.

Each method merges the N task vectors (fine-tuned minus base) of **one unit** (tensor key) into one merged
delta: tensors in, tensor out, computed in float64. Streaming over model files, adapters and the CLI build on
:func:`merge_deltas` and :data:`MERGE_METHODS`.

=================== ==================================== ===================================================
name                parameters                           1-D units (bias, norm)
=================== ==================================== ===================================================
``mean``            —                                    same formula
``task_arithmetic`` ``lam``                              same formula
``ties``            ``density``, ``lam``                 same formula
``dare``            ``p``, ``lam``, ``seed``             same formula
``dare_ties``       ``p``, ``lam``, ``seed``,            same formula
                    ``normalize``
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
['dare', 'dare_ties', 'knots', 'mean', 'subspace', 'task_arithmetic', 'ties', 'tsv']
>>> MERGE_METHODS.get("ties").resolve_params({"density": "0.3"})
{'density': 0.3, 'lam': 1.0}
>>> merge_deltas("ties", [torch.tensor([1.0, -2.0]), torch.tensor([3.0, 1.0])], density=1.0)
tensor([ 2., -2.], dtype=torch.float64)
"""

from __future__ import annotations

from weightspace.merge._methods import dare, dare_ties, knots, mean, subspace, task_arithmetic, ties, tsv
from weightspace.merge._registry import MERGE_METHODS, MergeMethod, Param, merge_deltas, merge_method

__all__ = [
    "MERGE_METHODS",
    "MergeMethod",
    "Param",
    "dare",
    "dare_ties",
    "knots",
    "mean",
    "merge_deltas",
    "merge_method",
    "subspace",
    "task_arithmetic",
    "ties",
    "tsv",
]
