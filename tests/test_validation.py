"""The one parameter-constraint module: rule descriptions, strict validation and CLI-string coercion."""

from __future__ import annotations

import math
import re

import pytest
import torch

from weightspace._validation import (
    BOOL,
    NONE,
    Interval,
    Kind,
    Options,
    PairOf,
    StrOptions,
    coerce,
    coerce_params,
    describe,
    validate_params,
)
from weightspace.errors import ParameterError

K_RULES = [Interval(int, 1, math.inf, closed="left"), Interval(float, 0, 1, closed="neither"), NONE]


@pytest.mark.parametrize(
    ("rule", "text"),
    [
        (Interval(int, 1, None), "an int >= 1"),
        (Interval(float, 0, None, closed="neither"), "a float > 0"),
        (Interval(float, None, 1, closed="left"), "a float < 1"),
        (Interval(float, 0, 1, closed="right"), "a float in (0, 1]"),
        (Interval(int, 0, math.inf, closed="left"), "an int in [0, inf)"),
        (Interval(float, -math.inf, math.inf, closed="neither"), "a float in (-inf, inf)"),
        (Interval(float, 0.5, 2.5), "a float in [0.5, 2.5]"),
        (Interval(int, None, None), "an int"),
        (Options(("pca", "hosvd")), "one of 'pca', 'hosvd'"),
        (NONE, "None"),
        (StrOptions(("ties", "mean")), "a str among {'mean', 'ties'}"),
        (BOOL, "a bool"),
        (PairOf((Interval(int, 1, None),)), "a pair of (an int >= 1)"),
    ],
)
def test_describe(rule, text: str) -> None:
    assert rule.describe() == text


def test_describe_joins_alternatives() -> None:
    assert describe([BOOL]) == "a bool"
    assert describe([Interval(int, 1, None), NONE]) == "an int >= 1 or None"
    assert describe(K_RULES) == "an int in [1, inf), a float in (0, 1) or None"


# (value, rules, expected) — what text and Python values coerce to
COERCED = [
    ("0.5", [Interval(float, 0, 1)], 0.5),
    (" 3 ", [Interval(int, 1, None)], 3),
    ("16", K_RULES, 16),
    ("0.9", K_RULES, 0.9),
    ("none", K_RULES, None),
    ("NULL", K_RULES, None),
    (None, K_RULES, None),
    (1, [Interval(float, 0, 2)], 1.0),  # an int where a float range is declared
    ("true", [BOOL], True),
    ("Off", [BOOL], False),
    ("1", [BOOL], True),
    (False, [BOOL], False),
    ("ties", [StrOptions(("ties", "mean"))], "ties"),
    ("full", [Options(("auto", "full"))], "full"),
    ("4,8", [PairOf((Interval(int, 1, None),))], (4, 8)),
    ("(4, 0.5)", [PairOf((Interval(int, 1, None), Interval(float, 0, 1)))], (4, 0.5)),
    ([2, 3], [PairOf((Interval(int, 1, None),))], (2, 3)),
]


@pytest.mark.parametrize(("value", "rules", "expected"), COERCED)
def test_coerce(value, rules, expected) -> None:
    got = coerce(value, rules, name="x", owner="f")
    assert got == expected
    assert type(got) is type(expected)


# (value, rules, what "Got ..." reports): text that parses is reported parsed, anything else as given
REFUSED = [
    ("1.5", [Interval(float, 0, 1, closed="right")], "1.5"),
    ("abc", [Interval(float, 0, 1)], "'abc'"),
    ("1.0", K_RULES, "1.0"),
    (0, K_RULES, "0"),
    ("nan", [Interval(float, -math.inf, math.inf, closed="neither")], "nan"),
    (math.nan, [Interval(float, None, None)], "nan"),
    ("inf", [Interval(float, -math.inf, math.inf, closed="neither")], "inf"),
    (True, [Interval(float, None, None)], "True"),
    (1.5, [Interval(int, 0, None)], "1.5"),
    (1, [BOOL], "1"),
    ("maybe", [BOOL], "'maybe'"),
    ("dare", [StrOptions(("ties", "mean"))], "'dare'"),
    ("a.wsz", [Kind((torch.Tensor,), "a torch.Tensor"), NONE], "'a.wsz'"),
    (torch.ones(2), [Options(("a", "b"))], "tensor([1., 1.])"),
    ("4,x", [PairOf((Interval(int, 1, None),))], "'4,x'"),
    (10**400, [Interval(float, None, None)], str(10**400)),
]


@pytest.mark.parametrize(("value", "rules", "got"), REFUSED)
def test_coerce_refusals_use_the_one_message_format(value, rules, got: str) -> None:
    message = f"The 'x' parameter of merge method 'f' must be {describe(rules)}. Got {got} instead."
    with pytest.raises(ParameterError, match=f"^{re.escape(message)}$"):
        coerce(value, rules, name="x", owner="merge method 'f'")


def test_coerce_params_converts_only_constrained_values() -> None:
    rules = {"rank": [Interval(int, 1, None), NONE], "elect": [BOOL]}
    assert coerce_params("merge", rules, {"rank": "2", "elect": "no", "other": "7"}) == {
        "rank": 2,
        "elect": False,
        "other": "7",
    }
    with pytest.raises(
        ParameterError, match=r"^The 'rank' parameter of merge must be an int >= 1 or None\. Got 0"
    ):
        coerce_params("merge", rules, {"rank": "0"})


def test_validate_params_does_not_convert() -> None:
    rules = {"n_components": [Interval(int, 1, None), Interval(float, 0, 1, closed="neither")]}
    validate_params("SharedSubspace", rules, {"n_components": 3})
    validate_params("SharedSubspace", rules, {"other": "ignored"})
    for bad, got in (("3", "'3'"), (True, "True"), (0, "0"), (math.nan, "nan")):
        message = (
            "The 'n_components' parameter of SharedSubspace must be an int >= 1 or a float in (0, 1). "
            f"Got {got} instead."
        )
        with pytest.raises(ParameterError, match=f"^{re.escape(message)}$"):
            validate_params("SharedSubspace", rules, {"n_components": bad})


def test_parameter_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="must be a bool"):
        coerce("maybe", [BOOL], name="x", owner="f")
