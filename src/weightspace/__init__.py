"""weightspace: the shared weight subspace of model collections, with honest evidence.

The top level holds the few names most code needs; everything else lives in its subpackage
(:mod:`weightspace.io`, :mod:`weightspace.decompose`, :mod:`weightspace.compress`, :mod:`weightspace.analyze`,
:mod:`weightspace.merge`, :mod:`weightspace.adapt`, :mod:`weightspace.zoo`). Names are imported on first use, so
``import weightspace`` stays cheap. The functions ``compress`` and ``analyze`` share their subpackage's name, so
they are reached as ``weightspace.compress.compress`` and ``weightspace.analyze.analyze``.

Examples
--------
>>> import weightspace
>>> sorted(weightspace.__all__)[:4]
['Archive', 'Collection', 'SharedSubspace', 'WeightspaceError']
>>> weightspace.SharedSubspace(n_components=0.9).n_components
0.9
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "Archive": "weightspace.compress",
    "Collection": "weightspace.collection",
    "SharedSubspace": "weightspace.decompose",
    "WeightspaceError": "weightspace.errors",
    "build_zoo": "weightspace.zoo",
    "merge_models": "weightspace.merge",
    "open_source": "weightspace.io",
    "project": "weightspace.compress",
    "reconstruct": "weightspace.compress",
    "run_demo": "weightspace.demo",
}

__all__ = [
    "Archive",
    "Collection",
    "SharedSubspace",
    "WeightspaceError",
    "__version__",
    "build_zoo",
    "merge_models",
    "open_source",
    "project",
    "reconstruct",
    "run_demo",
]

if TYPE_CHECKING:
    from weightspace.collection import Collection
    from weightspace.compress import Archive, project, reconstruct
    from weightspace.decompose import SharedSubspace
    from weightspace.demo import run_demo
    from weightspace.errors import WeightspaceError
    from weightspace.io import open_source
    from weightspace.merge import merge_models
    from weightspace.zoo import build_zoo


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'weightspace' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
