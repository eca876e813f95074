"""A small typed registry used for every family of strategies (merge methods, solvers, zoos, adapters).

Examples
--------
>>> solvers: Registry[int] = Registry("solver")
>>> solvers.register("gram", 1)
1
>>> solvers.get("gram")
1
>>> solvers.get("qr")
Traceback (most recent call last):
...
weightspace.errors.ParameterError: Unknown solver 'qr'. Valid choices: 'gram'.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from weightspace.errors import ParameterError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Name → object mapping where duplicate names raise and unknown names list the choices.

    Parameters
    ----------
    kind : str
        What the entries are, used in messages ("merge method", "zoo", ...).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, obj: T) -> T:
        """Add ``obj`` under ``name``; a name can be registered once only."""
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is already registered")
        self._entries[name] = obj
        return obj

    def decorator(self, name: str) -> Callable[[T], T]:
        """Return a decorator that registers the decorated object under ``name``."""

        def wrap(obj: T) -> T:
            return self.register(name, obj)

        return wrap

    def get(self, name: str) -> T:
        """Look ``name`` up; an unknown name raises :class:`ParameterError` listing the valid ones."""
        try:
            return self._entries[name]
        except KeyError:
            choices = ", ".join(repr(n) for n in sorted(self._entries))
            raise ParameterError(f"Unknown {self.kind} '{name}'. Valid choices: {choices}.") from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
