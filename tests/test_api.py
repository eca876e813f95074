"""The small top-level API resolves every advertised name to the object in its subpackage."""

from __future__ import annotations

import pytest

import weightspace


@pytest.mark.parametrize("name", sorted(set(weightspace.__all__) - {"__version__"}))
def test_top_level_names_resolve(name: str) -> None:
    obj = getattr(weightspace, name)
    module = weightspace._LAZY[name]
    import importlib

    assert obj is getattr(importlib.import_module(module), name)


def test_unknown_attribute() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = weightspace.nope
