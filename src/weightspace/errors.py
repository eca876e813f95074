"""One error hierarchy for weightspace.

Every error derives from :class:`WeightspaceError`. Errors caused by what the user passed in derive from
:class:`InputError`; the CLI maps them to exit code 2 and any other :class:`WeightspaceError` to exit code 1.
Subclasses also inherit the matching built-in (``KeyError``, ``ValueError`` ...) so callers that already catch
those keep working.

Errors raised near tensor code carry the file (``path``) and the tensor key (``tensor``) and put both at the
start of the message, so the first line of any failure says *where* before it says *what*. Names that come from
files (tensor keys, model names) are untrusted: control characters in the formatted message are shown escaped
(``\\x1b``), so a crafted name cannot drive the terminal.

Examples
--------
>>> err = ShapeMismatchError("expected (4, 4), got (4, 3)", path="b.safetensors", tensor="fc.weight")
>>> str(err)
"b.safetensors: tensor 'fc.weight': expected (4, 4), got (4, 3)"
>>> isinstance(err, ValueError), err.exit_code
(True, 2)
"""

from __future__ import annotations

import os
import re

__all__ = [
    "ArchiveError",
    "BackendError",
    "CorruptFileError",
    "DependencyError",
    "InputError",
    "NonFiniteError",
    "NotFittedError",
    "OutputError",
    "ParameterError",
    "ShapeMismatchError",
    "TensorKeyError",
    "UnsafeFileError",
    "UnsupportedFormatError",
    "WeightspaceError",
]


class WeightspaceError(Exception):
    """Base class of every error weightspace raises on purpose.

    Parameters
    ----------
    message : str
        What rule was broken and, where there is one, how to fix it.
    path : str or os.PathLike, optional
        The file or directory the problem was found in.
    tensor : str, optional
        The tensor key the problem was found in.
    """

    exit_code: int = 1

    def __init__(self, message: str, *, path: str | os.PathLike[str] | None = None, tensor: str | None = None):
        self.message = message
        self.path = None if path is None else os.fspath(path)
        self.tensor = tensor
        super().__init__(self._format())

    def _format(self) -> str:
        where = []
        if self.path is not None:
            where.append(self.path)
        if self.tensor is not None:
            where.append(f"tensor '{self.tensor}'")
        return printable(": ".join([*where, self.message]))

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return self._format()


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def printable(text: str) -> str:
    """``text`` with control, bidi-override and lone-surrogate characters escaped (``\\x1b``); newlines and tabs
    kept.

    Examples
    --------
    >>> print(printable("fc1\x1b[31m.weight"))
    fc1\\x1b[31m.weight
    """
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class InputError(WeightspaceError):
    """The input (files, options, values) breaks a rule; the CLI exits with code 2."""

    exit_code = 2


class ParameterError(InputError, ValueError):
    """A parameter has a value outside its documented constraints."""


class UnsupportedFormatError(InputError, ValueError):
    """A file or adapter uses a format or feature weightspace does not support."""


class CorruptFileError(InputError, ValueError):
    """A file is truncated, malformed or changed while it was being read."""


class UnsafeFileError(InputError):
    """Reading the file would mean running untrusted code (pickle) or opening a non-regular file."""


class TensorKeyError(InputError, KeyError):
    """A tensor is missing where every model must have it."""


class ShapeMismatchError(InputError, ValueError):
    """Tensors that must agree in shape (or dtype) do not."""


class NonFiniteError(InputError, ValueError):
    """A tensor holds NaN or infinity."""


class ArchiveError(InputError, ValueError):
    """A ``.wsz`` archive is missing a member, has a hash mismatch or an unknown version."""


class OutputError(InputError):
    """The output cannot be written where asked: it would replace something weightspace did not write, or the
    file system refuses (read-only, no permission, no space). Nothing was replaced.

    Attributes
    ----------
    errno : int or None
        The operating-system error number, when the file system refused.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike[str] | None = None,
        tensor: str | None = None,
        errno: int | None = None,
    ):
        self.errno = errno
        super().__init__(message, path=path, tensor=tensor)


class NotFittedError(WeightspaceError, ValueError, AttributeError):
    """An estimator was used before ``fit``; the wording follows scikit-learn."""


class DependencyError(WeightspaceError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""


class BackendError(WeightspaceError, RuntimeError):
    """A run could not finish on its backend (a Dask worker died, the cluster went away); nothing was written."""
