"""``weightspace demo``: the paper's claims reproduced offline on real zoos, each beside its honest control."""

from weightspace.demo._claims import ACC_TOL, MIN_RATIO, RULES
from weightspace.demo._run import FULL_ZOOS, QUICK_ZOOS, run_demo, write_demo

__all__ = ["ACC_TOL", "FULL_ZOOS", "MIN_RATIO", "QUICK_ZOOS", "RULES", "run_demo", "write_demo"]
