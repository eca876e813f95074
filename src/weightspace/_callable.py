"""Subpackages named after their main function (``compress``, ``analyze``, ``merge``, ``align``) are callable.

``weightspace.compress`` must be both the subpackage (``weightspace.compress.reconstruct``) and the function
(``weightspace.compress(models, out)``): once a subpackage is imported, Python binds its name on the parent to the
module, so a plain function of the same name could not stay there. Giving the module a ``__call__`` that forwards
to its namesake function keeps both spellings working.

Examples
--------
>>> import weightspace
>>> callable(weightspace.compress), weightspace.compress.compress.__name__
(True, 'compress')
"""

from __future__ import annotations

import sys
import types
from typing import Any

__all__ = ["make_callable"]


class _CallableModule(types.ModuleType):
    """A module that calls its namesake function when called."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, self.__name__.rsplit(".", 1)[-1])(*args, **kwargs)


def make_callable(module_name: str) -> None:
    """Make the (already imported) module ``module_name`` callable as its namesake function."""
    sys.modules[module_name].__class__ = _CallableModule
