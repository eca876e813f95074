"""weightspace: the shared weight subspace of model collections, with honest evidence.

The top level holds the names most code needs; everything else lives in its subpackage
(:mod:`weightspace.io`, :mod:`weightspace.decompose`, :mod:`weightspace.compress`, :mod:`weightspace.analyze`,
:mod:`weightspace.merge`, :mod:`weightspace.adapt`, :mod:`weightspace.zoo`). Names are imported on first use, so
``import weightspace`` stays cheap. ``compress``, ``analyze``, ``merge`` and ``align`` are both their subpackage
and callable as its main function: ``weightspace.compress(models, "a.wsz")`` and
``weightspace.compress.reconstruct(...)``.

Examples
--------
>>> import weightspace
>>> sorted(weightspace.__all__)[:3]
['Collection', 'SharedSubspace', 'WeightspaceError']
>>> weightspace.SharedSubspace(n_components=0.9).n_components
0.9
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from weightspace._version import __version__

# name -> (module, attribute); attribute None means the (callable) subpackage itself.
_LAZY: dict[str, tuple[str, str | None]] = {
    "Collection": ("weightspace.collection", "Collection"),
    "SharedSubspace": ("weightspace.decompose", "SharedSubspace"),
    "WeightspaceError": ("weightspace.errors", "WeightspaceError"),
    "align": ("weightspace.align", None),
    "analyze": ("weightspace.analyze", None),
    "compress": ("weightspace.compress", None),
    "inject": ("weightspace.adapt", "inject"),
    "merge": ("weightspace.merge", None),
    "project": ("weightspace.compress", "project"),
    "reconstruct": ("weightspace.compress", "reconstruct"),
}

__all__ = [
    "Collection",
    "SharedSubspace",
    "WeightspaceError",
    "__version__",
    "align",
    "analyze",
    "compress",
    "inject",
    "merge",
    "project",
    "reconstruct",
]

if TYPE_CHECKING:
    from weightspace import align, analyze, compress, merge
    from weightspace.adapt import inject
    from weightspace.collection import Collection
    from weightspace.compress import project, reconstruct
    from weightspace.decompose import SharedSubspace
    from weightspace.errors import WeightspaceError


def __getattr__(name: str) -> Any:
    entry = _LAZY.get(name)
    if entry is None:
        raise AttributeError(f"module 'weightspace' has no attribute {name!r}")
    module, attr = entry
    mod = importlib.import_module(module)
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
