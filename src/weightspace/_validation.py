"""Declarative parameter constraints with one message format (after scikit-learn's ``_parameter_constraints``).

Examples
--------
>>> rules = {"n_components": [Interval(int, 1, None), Interval(float, 0, 1, closed="neither")]}
>>> try:
...     validate_params("SharedSubspace", rules, {"n_components": 0})
... except ParameterError as err:
...     print(err)
The 'n_components' parameter of SharedSubspace must be an int >= 1 or a float in (0, 1). Got 0 instead.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from weightspace.errors import ParameterError

__all__ = ["Interval", "Kind", "Options", "PairOf", "validate_params"]


@dataclass(frozen=True)
class Interval:
    """A numeric range; ``kind`` is ``int`` or ``float`` (bools never match)."""

    kind: type
    low: float | None
    high: float | None
    closed: str = "both"  # "both", "left", "right", "neither"

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool):
            return False
        if self.kind is int and not isinstance(value, numbers.Integral):
            return False
        if self.kind is float and not (
            isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral)
        ):
            return False
        lo_ok = self.low is None or (value >= self.low if self.closed in ("both", "left") else value > self.low)
        hi_ok = self.high is None or (
            value <= self.high if self.closed in ("both", "right") else value < self.high
        )
        return bool(lo_ok and hi_ok)

    def describe(self) -> str:
        name = "an int" if self.kind is int else "a float"
        if self.low is not None and self.high is None:
            return f"{name} {'>=' if self.closed in ('both', 'left') else '>'} {_fmt(self.low)}"
        if self.low is None and self.high is not None:
            return f"{name} {'<=' if self.closed in ('both', 'right') else '<'} {_fmt(self.high)}"
        left = "[" if self.closed in ("both", "left") else "("
        right = "]" if self.closed in ("both", "right") else ")"
        return f"{name} in {left}{_fmt(self.low)}, {_fmt(self.high)}{right}"


def _fmt(x: float | None) -> str:
    return str(int(x)) if x is not None and float(x).is_integer() else str(x)


@dataclass(frozen=True)
class Options:
    """One of a fixed set of values."""

    values: tuple[Any, ...]

    def __init__(self, values: Iterable[Any]):
        object.__setattr__(self, "values", tuple(values))

    def accepts(self, value: Any) -> bool:
        return value in self.values

    def describe(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)


@dataclass(frozen=True)
class Kind:
    """Any instance of the given type(s)."""

    types: tuple[type, ...]
    label: str

    def accepts(self, value: Any) -> bool:
        return isinstance(value, self.types) and not (isinstance(value, bool) and bool not in self.types)

    def describe(self) -> str:
        return self.label


@dataclass(frozen=True)
class PairOf:
    """A 2-tuple whose items each pass one of ``rules`` (e.g. HOSVD ranks ``(k1, k2)``)."""

    rules: tuple[Any, ...]

    def accepts(self, value: Any) -> bool:
        return (
            isinstance(value, tuple)
            and len(value) == 2
            and all(any(r.accepts(v) for r in self.rules) for v in value)
        )

    def describe(self) -> str:
        return "a pair of (" + " or ".join(r.describe() for r in self.rules) + ")"


def validate_params(owner: str, constraints: Mapping[str, Sequence[Any]], values: Mapping[str, Any]) -> None:
    """Raise :class:`ParameterError` for the first value no constraint accepts.

    Parameters
    ----------
    owner : str
        Used in the message ("SharedSubspace", "merge method 'ties'").
    constraints : mapping of str to sequence of Interval, Options or Kind
        A value passes if any of its constraints accepts it.
    values : mapping of str to object
    """
    for name, rules in constraints.items():
        if name not in values:
            continue
        value = values[name]
        if not any(rule.accepts(value) for rule in rules):
            allowed = " or ".join(rule.describe() for rule in rules)
            raise ParameterError(f"The '{name}' parameter of {owner} must be {allowed}. Got {value!r} instead.")
