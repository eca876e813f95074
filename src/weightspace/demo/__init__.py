"""``weightspace demo``: the paper's claims reproduced offline on real zoos, each beside its honest control.

Zoos sized for the claim (N ≥ 6 k at the k tested), 90 % intervals on every number a verdict uses, and the
paper's and the public replication's numbers beside ours (:mod:`._paper`). Scales: ``quick`` (CI), ``default``
(96 models per small zoo) and ``paper`` (480, a second seed beside the first).
"""

from weightspace.demo._claims import ACC_TOL, K_CLAIM, MIN_MODELS_PER_K, MIN_RATIO, RULES, ratio_words
from weightspace.demo._paper import CITED, paper_table
from weightspace.demo._run import FULL_ZOOS, QUICK_ZOOS, run_demo, write_demo
from weightspace.demo._scales import SCALES, Scale

__all__ = [
    "ACC_TOL",
    "CITED",
    "FULL_ZOOS",
    "K_CLAIM",
    "MIN_MODELS_PER_K",
    "MIN_RATIO",
    "QUICK_ZOOS",
    "RULES",
    "SCALES",
    "Scale",
    "paper_table",
    "ratio_words",
    "run_demo",
    "write_demo",
]
