"""Regular expressions from adapter configs, checked so that matching them cannot backtrack catastrophically.

``rank_pattern``, ``alpha_pattern`` and a string ``target_modules`` in ``adapter_config.json`` are regexes that
PEFT matches against module names. Python's backtracking engine takes exponential time on ambiguous patterns such as
``(a+)+b`` and polynomial time of high degree on chains like ``.*a.*a.*a.*a``, so a config from a stranger could hang
weightspace. :func:`safe_pattern` accepts the forms PEFT documents — literals, ``.``, character classes, anchors,
groups, alternations of fixed parts, and a few unbounded repeats of a single item (``.*``, ``\\d+``,
``[a-z]+``) — and refuses:

* a repeat inside a repeat (``(a+)+``, ``(a*)*``, ``(\\w+\\.)*``);
* a repeated group holding an alternation or several items (``(a|aa)+``, ``(ab)+``), whose ways to match multiply;
* backreferences (``\\1``), which force backtracking;
* more than :data:`MAX_UNBOUNDED` unbounded repeats, or patterns longer than :data:`MAX_PATTERN_CHARS`.

Module names themselves are capped at :data:`MAX_NAME_CHARS` before matching, so the remaining polynomial cost is
bounded (at most ``MAX_NAME_CHARS ** (MAX_UNBOUNDED + 1)`` steps, well under a second).

Examples
--------
>>> safe_pattern(r".*decoder.*(SelfAttention|EncDecAttention).*(q|v)$", what="target_modules").pattern
'.*decoder.*(SelfAttention|EncDecAttention).*(q|v)$'
>>> safe_pattern("(a+)+b", what="rank_pattern")
Traceback (most recent call last):
...
ValueError: rank_pattern '(a+)+b' repeats a repeated part, which can take exponential time to match
"""

from __future__ import annotations

import re
from typing import Any

try:  # Python >= 3.11
    import re._constants as _sre_constants  # type: ignore[import-not-found]
    import re._parser as _sre_parse  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - Python 3.10
    import sre_constants as _sre_constants  # type: ignore[no-redef]
    import sre_parse as _sre_parse  # type: ignore[no-redef]

__all__ = ["MAX_NAME_CHARS", "MAX_PATTERN_CHARS", "MAX_UNBOUNDED", "safe_pattern"]

MAX_PATTERN_CHARS = 512
MAX_UNBOUNDED = 3
MAX_NAME_CHARS = 256
_BIG_REPEAT = 32  # a bounded repeat above this counts as unbounded

_REPEATS = {_sre_constants.MAX_REPEAT, _sre_constants.MIN_REPEAT}
if hasattr(_sre_constants, "POSSESSIVE_REPEAT"):
    _REPEATS.add(_sre_constants.POSSESSIVE_REPEAT)
_SINGLE = {_sre_constants.LITERAL, _sre_constants.NOT_LITERAL, _sre_constants.ANY, _sre_constants.IN}


def _is_single(items: Any) -> bool:
    """Whether a repeat body matches exactly one character (one literal, ``.``, or one class)."""
    seq = list(items)
    while len(seq) == 1 and seq[0][0] == _sre_constants.SUBPATTERN:
        seq = list(seq[0][1][-1])
    return len(seq) == 1 and seq[0][0] in _SINGLE


def _walk(items: Any, what: str, pattern: str, in_repeat: bool, counter: list[int]) -> None:
    for op, arg in items:
        if op in _REPEATS:
            _lo, hi, body = arg
            big = hi == _sre_constants.MAXREPEAT or hi > _BIG_REPEAT
            if hi > 1:
                if in_repeat:
                    raise ValueError(
                        f"{what} {pattern!r} repeats a repeated part, which can take exponential time to match"
                    )
                _walk(body, what, pattern, True, counter)  # a nested repeat is named as such first
                if not _is_single(body):
                    raise ValueError(
                        f"{what} {pattern!r} repeats a group of several parts or alternatives; only single "
                        "characters or classes may repeat (e.g. '.*', '\\d+', '[a-z]+')"
                    )
                if big:
                    counter[0] += 1
            else:
                _walk(body, what, pattern, in_repeat, counter)
        elif op == _sre_constants.SUBPATTERN:
            _walk(arg[-1], what, pattern, in_repeat, counter)
        elif op == _sre_constants.BRANCH:
            for alt in arg[1]:
                _walk(alt, what, pattern, in_repeat, counter)
        elif op in (_sre_constants.ASSERT, _sre_constants.ASSERT_NOT):
            _walk(arg[1], what, pattern, in_repeat, counter)
        elif op in (_sre_constants.GROUPREF, getattr(_sre_constants, "GROUPREF_EXISTS", None)):
            raise ValueError(f"{what} {pattern!r} uses a backreference, which is not supported")
        elif op == getattr(_sre_constants, "ATOMIC_GROUP", None):
            _walk(arg, what, pattern, in_repeat, counter)


def safe_pattern(pattern: object, *, what: str, max_unbounded: int = MAX_UNBOUNDED) -> re.Pattern[str]:
    """Compile ``pattern`` if it is a regex whose matching time is bounded (see the module docstring).

    Parameters
    ----------
    pattern : object
        The value read from the config.
    what : str
        Its field, for the message ("rank_pattern").
    max_unbounded : int
        Most unbounded repeats accepted (PEFT wraps ``rank_pattern`` keys in ``(.*\\.)?(key)$``, which adds one).

    Returns
    -------
    re.Pattern

    Raises
    ------
    ValueError
        Not a string, not a valid regex, or a form that could backtrack catastrophically (message says which).
    """
    if not isinstance(pattern, str):
        raise ValueError(f"{what} keys must be strings, got {pattern!r}")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise ValueError(f"{what} pattern is {len(pattern)} characters, more than {MAX_PATTERN_CHARS}")
    try:
        parsed = _sre_parse.parse(pattern)
        compiled = re.compile(pattern)
    except (re.error, OverflowError, RecursionError) as err:
        raise ValueError(f"{what} {pattern!r} is not a valid regular expression ({err})") from None
    counter = [0]
    _walk(parsed, what, pattern, False, counter)
    if counter[0] > max_unbounded:
        raise ValueError(
            f"{what} {pattern!r} has {counter[0]} unbounded repeats; at most {max_unbounded} are accepted"
        )
    return compiled
