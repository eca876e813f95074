"""The small top-level API resolves every advertised name, and the callable subpackages call their function."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

import weightspace
from helpers import mlp_like, write_models


@pytest.mark.parametrize("name", sorted(set(weightspace.__all__) - {"__version__"}))
def test_top_level_names_resolve(name: str) -> None:
    obj = getattr(weightspace, name)
    module, attr = weightspace._LAZY[name]
    mod = importlib.import_module(module)
    assert obj is (mod if attr is None else getattr(mod, attr))
    assert callable(obj)


def test_unknown_attribute() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = weightspace.nope


def test_callable_subpackages_are_both_module_and_function(tmp_path: Path, gen: torch.Generator) -> None:
    write_models(tmp_path / "m", [mlp_like(gen) for _ in range(4)])
    import weightspace.compress as compress_pkg  # importing the subpackage must not hide the function

    res = weightspace.compress([str(tmp_path / "m")], tmp_path / "a.wsz", n_components=2)
    assert res.n_models == 4
    assert compress_pkg is weightspace.compress
    assert weightspace.compress.reconstruct is weightspace.reconstruct
    rep = weightspace.analyze([str(tmp_path / "m")], n_null=2)
    assert rep.data["n_models"] == 4
