"""Experiment harnesses: the library's methods measured in task accuracy on built zoos.

The harnesses sit above the library: they read a built zoo (:mod:`weightspace.zoo`: its ``zoo.json``, base,
checkpoints and evaluator) and call the library functions (:mod:`weightspace.merge`, :mod:`weightspace.adapt`,
:mod:`weightspace.compress`). Nothing in those packages knows about zoos; besides the tests, only this package,
:mod:`weightspace.demo` and :mod:`weightspace.cli` import :mod:`weightspace.zoo`.

* :func:`merge_benchmark` merges every task model of a fine-tune zoo with every merge method (at defaults and
  tuned on a validation split of the training data) and scores merged backbone + each task's own head;
  :func:`evaluate_merged` scores one merged model the same way; :func:`benchmark_table` prints the method ×
  task table.
* :func:`adaptation_benchmark` holds one task out and trains it with coefficient-only subspace adapters, LoRA,
  full fine-tuning and head-only / mean-only controls; :func:`check_held_out` refuses an archive that contains
  the held-out task's model.

Examples
--------
>>> from weightspace.bench import benchmark_table, merge_benchmark
>>> from weightspace.zoo import build_zoo
>>> info = build_zoo("mnist1d-cnn", "zoos/cnn", quick=True)  # doctest: +SKIP
>>> print(benchmark_table(merge_benchmark(info, ["mean", "ties", "subspace"])))  # doctest: +SKIP
| method | ... | average |
"""

from weightspace.bench.adapt import DEFAULT_KS, LR_GRIDS, adaptation_benchmark, check_held_out
from weightspace.bench.merge import (
    DEFAULT_SWEEPS,
    ZooLike,
    benchmark_table,
    evaluate_merged,
    load_zoo,
    merge_benchmark,
)

__all__ = [
    "DEFAULT_KS",
    "DEFAULT_SWEEPS",
    "LR_GRIDS",
    "ZooLike",
    "adaptation_benchmark",
    "benchmark_table",
    "check_held_out",
    "evaluate_merged",
    "load_zoo",
    "merge_benchmark",
]
