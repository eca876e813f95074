"""Declarative parameter constraints with one message format (after scikit-learn's ``_parameter_constraints``).

A constraint is a list of *rules*; a value passes if any rule accepts it. The rules are :class:`Interval` (a
numeric range), :class:`Options` / :class:`StrOptions` (a fixed set), :class:`Kind` (an instance check) and
:class:`PairOf` (a 2-tuple). Two entry points share them and produce the same message:

* :func:`validate_params` checks Python values as given (no conversion): library entry points.
* :func:`coerce` / :func:`coerce_params` also convert text and compatible values to the rule's kind first
  (``"0.5"`` → ``0.5``, ``"3"`` → ``3``, ``"true"`` → ``True``, ``"none"`` → ``None``, ``1`` → ``1.0`` for a
  float range): CLI ``--param KEY=VALUE`` strings, config files, merge-method parameters.

Examples
--------
>>> rules = {"n_components": [Interval(int, 1, None), Interval(float, 0, 1, closed="neither")]}
>>> try:
...     validate_params("SharedSubspace", rules, {"n_components": 0})
... except ParameterError as err:
...     print(err)
The 'n_components' parameter of SharedSubspace must be an int >= 1 or a float in (0, 1). Got 0 instead.
>>> coerce("0.5", rules["n_components"], name="n_components", owner="SharedSubspace")
0.5
>>> coerce("none", [Interval(int, 1, math.inf, closed="left"), NONE], name="k", owner="merge method 'subspace'")
>>> try:
...     coerce("0", [Interval(int, 1, math.inf, closed="left"), NONE], name="k", owner="merge method 'subspace'")
... except ParameterError as err:
...     print(err)
The 'k' parameter of merge method 'subspace' must be an int in [1, inf) or None. Got 0 instead.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from weightspace.errors import ParameterError

__all__ = [
    "BOOL",
    "NONE",
    "Interval",
    "Kind",
    "Options",
    "PairOf",
    "Rule",
    "StrOptions",
    "coerce",
    "coerce_params",
    "describe",
    "validate_params",
]

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_NULL = frozenset({"none", "null"})


class Rule(Protocol):
    """What every constraint rule provides."""

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` (already of the right type) satisfies the rule."""
        ...

    def describe(self) -> str:
        """The rule in words, as it appears in messages (``'a float in (0, 1]'``)."""
        ...

    def cast(self, raw: Any) -> tuple[bool, Any]:
        """``(True, value)`` with ``raw`` converted to the rule's kind (text parsed), else ``(False, raw)``."""
        ...


@dataclass(frozen=True)
class Interval:
    """A numeric range; ``kind`` is ``int`` or ``float`` (bools never match, NaN never matches).

    A bound of ``None`` is written as an inequality (``'an int >= 1'``); an infinite bound is written in bracket
    notation (``Interval(int, 0, math.inf, closed="left")`` is ``'an int in [0, inf)'``, and
    ``Interval(float, -math.inf, math.inf, closed="neither")`` is any *finite* float).
    """

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
        if isinstance(value, float) and math.isnan(value):
            return False
        lo_ok = self.low is None or (value >= self.low if self.closed in ("both", "left") else value > self.low)
        hi_ok = self.high is None or (
            value <= self.high if self.closed in ("both", "right") else value < self.high
        )
        return bool(lo_ok and hi_ok)

    def cast(self, raw: Any) -> tuple[bool, Any]:
        if isinstance(raw, bool):
            # bool is an int subclass; a flag passed where a number is expected is a mistake, not 0 or 1.
            return False, raw
        try:
            if self.kind is int:
                if isinstance(raw, numbers.Integral):
                    return True, int(raw)
                if isinstance(raw, str):
                    return True, int(raw.strip())
                return False, raw
            if isinstance(raw, numbers.Real):
                return True, float(raw)
            if isinstance(raw, str):
                return True, float(raw.strip())
        except (ValueError, OverflowError):  # "abc", "1.5" for an int, or an int too large for a float
            pass
        return False, raw

    def describe(self) -> str:
        name = "an int" if self.kind is int else "a float"
        if self.low is None and self.high is None:
            return name
        if self.low is not None and self.high is None:
            return f"{name} {'>=' if self.closed in ('both', 'left') else '>'} {_fmt(self.low)}"
        if self.low is None and self.high is not None:
            return f"{name} {'<=' if self.closed in ('both', 'right') else '<'} {_fmt(self.high)}"
        left = "[" if self.closed in ("both", "left") else "("
        right = "]" if self.closed in ("both", "right") else ")"
        return f"{name} in {left}{_fmt(self.low)}, {_fmt(self.high)}{right}"


def _fmt(x: float | None) -> str:
    if x is not None and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return str(int(x)) if x is not None and float(x).is_integer() else str(x)


@dataclass(frozen=True)
class Options:
    """One of a fixed set of values (``Options((None,))``, also :data:`NONE`, reads ``'None'``)."""

    values: tuple[Any, ...]

    def __init__(self, values: Iterable[Any]):
        object.__setattr__(self, "values", tuple(values))

    def accepts(self, value: Any) -> bool:
        return _contains(self.values, value)

    def cast(self, raw: Any) -> tuple[bool, Any]:
        if _contains(self.values, raw):
            return True, raw
        if None in self.values and isinstance(raw, str) and raw.strip().lower() in _NULL:
            return True, None
        return False, raw

    def describe(self) -> str:
        if self.values == (None,):
            return "None"
        return "one of " + ", ".join(repr(v) for v in self.values)


def _contains(values: tuple[Any, ...], value: Any) -> bool:
    # A tensor compared with a tuple entry may not give a plain bool; such a value is simply not an option.
    try:
        return bool(value in values)
    except (TypeError, ValueError, RuntimeError):
        return False


@dataclass(frozen=True)
class StrOptions(Options):
    """One of a fixed set of strings, written ``'a str among {...}'`` (scikit-learn's ``StrOptions``)."""

    def __init__(self, values: Iterable[str]):
        super().__init__(values)

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and value in self.values

    def cast(self, raw: Any) -> tuple[bool, Any]:
        return isinstance(raw, str), raw

    def describe(self) -> str:
        return "a str among {" + ", ".join(repr(v) for v in sorted(self.values)) + "}"


@dataclass(frozen=True)
class Kind:
    """Any instance of the given type(s); text becomes a bool when ``bool`` is among them."""

    types: tuple[type, ...]
    label: str

    def accepts(self, value: Any) -> bool:
        return isinstance(value, self.types) and not (isinstance(value, bool) and bool not in self.types)

    def cast(self, raw: Any) -> tuple[bool, Any]:
        if self.accepts(raw):
            return True, raw
        if bool in self.types and isinstance(raw, str):
            text = raw.strip().lower()
            if text in _TRUE | _FALSE:
                return True, text in _TRUE
        return False, raw

    def describe(self) -> str:
        return self.label


@dataclass(frozen=True)
class PairOf:
    """A 2-tuple whose items each pass one of ``rules`` (e.g. HOSVD ranks ``(k1, k2)``); text reads ``"4,8"``."""

    rules: tuple[Any, ...]

    def accepts(self, value: Any) -> bool:
        return (
            isinstance(value, tuple)
            and len(value) == 2
            and all(any(r.accepts(v) for r in self.rules) for v in value)
        )

    def cast(self, raw: Any) -> tuple[bool, Any]:
        items: Sequence[Any]
        if isinstance(raw, str):
            items = raw.strip().strip("()[]").split(",")
        elif isinstance(raw, (tuple, list)):
            items = raw
        else:
            return False, raw
        if len(items) != 2:
            return False, raw
        out = []
        for item in items:
            value = _first_accepted(item, self.rules)
            if value is _MISSING:
                return False, raw
            out.append(value)
        return True, tuple(out)

    def describe(self) -> str:
        return "a pair of (" + " or ".join(r.describe() for r in self.rules) + ")"


NONE = Options((None,))
"""``None`` (or the text ``"none"`` / ``"null"``)."""
BOOL = Kind((bool,), "a bool")
"""A bool (or the text ``true/false``, ``1/0``, ``yes/no``, ``on/off``)."""

_MISSING = object()


def _first_accepted(raw: Any, rules: Sequence[Rule]) -> Any:
    for rule in rules:
        ok, value = rule.cast(raw)
        if ok and rule.accepts(value):
            return value
    return _MISSING


def describe(rules: Sequence[Rule]) -> str:
    """The rules in words, joined as ``'a, b or c'``.

    Examples
    --------
    >>> describe([Interval(int, 1, math.inf, closed="left"), Interval(float, 0, 1, closed="neither"), NONE])
    'an int in [1, inf), a float in (0, 1) or None'
    """
    parts = [rule.describe() for rule in rules]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]


def _error(name: str, owner: str, rules: Sequence[Rule], got: Any) -> ParameterError:
    return ParameterError(f"The '{name}' parameter of {owner} must be {describe(rules)}. Got {got!r} instead.")


def coerce(value: Any, rules: Sequence[Rule], *, name: str, owner: str) -> Any:
    """Convert ``value`` (a Python value or CLI text) to the first rule that accepts it.

    Rules are tried in order: ``[Interval(int, ...), Interval(float, ...)]`` reads ``"16"`` as an int and
    ``"0.9"`` as a float. Text that parses but is out of range is reported parsed (``Got 1.5``, not ``'1.5'``).

    Parameters
    ----------
    value : object
        The value as given, e.g. ``"0.3"``, ``"true"``, ``"none"``, ``3``.
    rules : sequence of Rule
        The parameter's constraint.
    name, owner : str
        Used in the message: ``"The '<name>' parameter of <owner> must be ..."``.

    Returns
    -------
    object
        The converted value.

    Raises
    ------
    ParameterError
        When no rule accepts the value, in the same wording as :func:`validate_params`.

    Examples
    --------
    >>> coerce("3", [Interval(int, 1, None)], name="rank", owner="merge")
    3
    >>> coerce("off", [BOOL], name="elect", owner="merge method 'subspace'")
    False
    >>> coerce("4,8", [PairOf((Interval(int, 1, None),))], name="n_components", owner="SharedSubspace")
    (4, 8)
    """
    reported = value
    for rule in rules:
        ok, converted = rule.cast(value)
        if not ok:
            continue
        if isinstance(value, str) and reported is value:
            reported = converted
        if rule.accepts(converted):
            return converted
    raise _error(name, owner, rules, reported)


def coerce_params(
    owner: str, constraints: Mapping[str, Sequence[Rule]], values: Mapping[str, Any]
) -> dict[str, Any]:
    """:func:`coerce` every value that has a constraint; other values are returned unchanged.

    Examples
    --------
    >>> coerce_params("merge", {"rank": [Interval(int, 1, None), NONE]}, {"rank": "2", "format": "peft"})
    {'rank': 2, 'format': 'peft'}
    """
    return {
        name: coerce(value, constraints[name], name=name, owner=owner) if name in constraints else value
        for name, value in values.items()
    }


def validate_params(owner: str, constraints: Mapping[str, Sequence[Rule]], values: Mapping[str, Any]) -> None:
    """Raise :class:`ParameterError` for the first value no constraint accepts (values are not converted).

    Parameters
    ----------
    owner : str
        Used in the message ("SharedSubspace", "merge method 'ties'").
    constraints : mapping of str to sequence of Rule
        A value passes if any of its rules accepts it.
    values : mapping of str to object
    """
    for name, rules in constraints.items():
        if name not in values:
            continue
        value = values[name]
        if not any(rule.accepts(value) for rule in rules):
            raise _error(name, owner, rules, value)
