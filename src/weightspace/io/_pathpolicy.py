"""One path policy for every file weightspace opens and every name it takes from untrusted metadata.

Checkpoints and archives come from strangers, so names read from them (shard names in an index, model and config
names in a manifest, paths in ``zoo.json``) are checked before they touch the file system, and files are opened so
that nothing but a regular file inside its root is ever read:

* :func:`check_name` — a name from metadata must be one plain path component: a non-empty string with no ``/``,
  ``\\``, NUL or control character, not ``.`` or ``..``, not hidden (leading ``.``: weightspace keeps its temporaries
  and markers there) and at most 255 bytes. :func:`check_relpath` allows several such components.
* :func:`open_regular` / :func:`read_regular` — ``stat`` first (a FIFO or device is refused before ``open`` could
  block on it), ``open`` with ``O_NONBLOCK``, then ``fstat`` the descriptor (a FIFO swapped in between is still
  refused). With a ``root`` (the model directory or archive), the file actually opened — its real path, read back
  from the descriptor — must lie inside the root's real path; a symbolic link that leaves the root is refused
  unless following links is switched on (``--follow-symlinks``, :func:`follow_symlinks`). The setting is read when
  a model is opened (indexed): the objects remember it, so their later reads on worker threads or Dask workers
  follow the same rule.

Paths the user names on the command line are trusted as given (a link named by the user is followed); the roots
of what is found inside them are their real paths.

Examples
--------
>>> check_name("model-00001-of-00002.safetensors", what="shard name")
'model-00001-of-00002.safetensors'
>>> check_name("../../etc/passwd", what="shard name")
Traceback (most recent call last):
...
weightspace.errors.CorruptFileError: shard name '../../etc/passwd' must be one plain file name (no '/', '..')
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import stat
from collections.abc import Iterator

from weightspace.errors import CorruptFileError, InputError, UnsafeFileError

__all__ = [
    "check_name",
    "check_relpath",
    "follow_symlinks",
    "following_symlinks",
    "open_regular",
    "read_regular",
    "regular_size",
    "set_follow_symlinks",
    "within",
]

_FOLLOW: contextvars.ContextVar[bool] = contextvars.ContextVar("weightspace_follow_symlinks", default=False)
_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f/\\]")
_MAX_NAME_BYTES = 255


@contextlib.contextmanager
def follow_symlinks(enabled: bool = True) -> Iterator[None]:
    """Within the block, symbolic links that leave a model or archive directory are followed (not refused).

    Examples
    --------
    >>> with follow_symlinks():
    ...     following_symlinks()
    True
    >>> following_symlinks()
    False
    """
    token = _FOLLOW.set(bool(enabled))
    try:
        yield
    finally:
        _FOLLOW.reset(token)


def set_follow_symlinks(enabled: bool) -> None:
    """Follow links out of their root (or not) for the rest of the current context (the CLI's ``--follow-symlinks``;
    the CLI runs each command in a fresh context)."""
    _FOLLOW.set(bool(enabled))


def following_symlinks() -> bool:
    """Whether links leaving their root are followed in the current context."""
    return _FOLLOW.get()


def check_name(
    name: object,
    *,
    what: str,
    path: str | os.PathLike[str] | None = None,
    tensor: str | None = None,
    error: type[InputError] = CorruptFileError,
) -> str:
    """``name`` if it is one plain, visible path component; else ``error`` naming ``path`` (and ``tensor``).

    Parameters
    ----------
    name : object
        The value read from metadata.
    what : str
        What it names ("shard name", "model name"), for the message.
    path, tensor : optional
        Where it was read, for the message.
    error : type of InputError
        Raised on refusal.

    Returns
    -------
    str
    """
    if not isinstance(name, str) or not name:
        raise error(f"{what} must be a non-empty string, got {name!r}", path=path, tensor=tensor)
    if name in (".", "..") or _BAD_CHARS.search(name) or os.path.isabs(name):
        raise error(f"{what} {name!r} must be one plain file name (no '/', '..')", path=path, tensor=tensor)
    if name.startswith("."):
        raise error(
            f"{what} {name!r} must not start with '.' (hidden names are reserved)", path=path, tensor=tensor
        )
    try:
        n_bytes = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise error(f"{what} {name!r} is not valid text", path=path, tensor=tensor) from None
    if n_bytes > _MAX_NAME_BYTES:
        raise error(f"{what} is {n_bytes} bytes long, more than {_MAX_NAME_BYTES}", path=path, tensor=tensor)
    return name


def check_relpath(
    rel: object,
    *,
    what: str,
    path: str | os.PathLike[str] | None = None,
    error: type[InputError] = CorruptFileError,
) -> str:
    """``rel`` if it is a relative path of plain components (``models/m0.safetensors``); else ``error``.

    Examples
    --------
    >>> check_relpath("models/m0.safetensors", what="model path")
    'models/m0.safetensors'
    """
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel:
        raise error(f"{what} {rel!r} must be a relative path inside its folder", path=path)
    for part in rel.split("/"):
        check_name(part, what=what, path=path, error=error)
    return rel


def within(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> bool:
    """Whether the real path of ``path`` is ``root``'s real path or lies under it."""
    real = os.path.realpath(path)
    base = os.path.realpath(root)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "an unknown kind of file"


def _fd_path(fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def open_regular(
    path: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    what: str = "file",
    missing: type[InputError] = CorruptFileError,
) -> int:
    """Open ``path`` read-only, refusing anything but a regular file (inside ``root``, when given).

    Parameters
    ----------
    path : path
    root : path, optional
        The model directory or archive the file belongs to. The file opened must resolve inside it unless
        following links is on (:func:`follow_symlinks`).
    what : str
        What the file is, for messages.
    missing : type of InputError
        Raised when the file does not exist (or cannot be opened).

    Returns
    -------
    int
        An open file descriptor (the caller closes it).

    Raises
    ------
    UnsafeFileError
        A FIFO, device, socket or directory, or a link out of ``root``.
    """
    p = os.fspath(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        dangling = " (a symbolic link to a missing file)" if os.path.islink(p) else ""
        raise missing(f"{what} does not exist{dangling}", path=p) from None
    except OSError as err:
        raise missing(f"cannot stat {what} ({err.strerror})", path=p) from None
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFileError(
            f"{what} is not a regular file ({_kind(st.st_mode)}); only regular files are read", path=p
        )
    if root is not None and not following_symlinks() and not within(p, root):
        raise UnsafeFileError(
            f"{what} is a symbolic link to {os.path.realpath(p)}, outside {os.fspath(root)}; weightspace reads only "
            "files inside a model or archive directory (pass --follow-symlinks to read it anyway)",
            path=p,
        )
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise missing(f"cannot open {what} ({err.strerror})", path=p) from None
    try:
        fst = os.fstat(fd)
        if not stat.S_ISREG(fst.st_mode):
            raise UnsafeFileError(
                f"{what} is not a regular file ({_kind(fst.st_mode)}); only regular files are read", path=p
            )
        if root is not None and not following_symlinks():
            real = _fd_path(fd)
            base = os.path.realpath(root)
            if real is not None and not (real == base or real.startswith(base.rstrip(os.sep) + os.sep)):
                raise UnsafeFileError(f"{what} changed into a link out of {os.fspath(root)} while opening", path=p)
    except BaseException:
        os.close(fd)
        raise
    return fd


def regular_size(
    path: str | os.PathLike[str], *, root: str | os.PathLike[str] | None = None, what: str = "file"
) -> int:
    """Size in bytes of a regular file (checked as :func:`open_regular` does)."""
    fd = open_regular(path, root=root, what=what)
    try:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def read_regular(
    path: str | os.PathLike[str],
    *,
    limit: int,
    root: str | os.PathLike[str] | None = None,
    what: str = "file",
    missing: type[InputError] = CorruptFileError,
    error: type[InputError] = CorruptFileError,
) -> bytes:
    """All bytes of a small regular file, refusing files over ``limit`` bytes before reading them.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "config.json"
    >>> _ = p.write_text("{}")
    >>> read_regular(p, limit=10, what="config")
    b'{}'
    """
    fd = open_regular(path, root=root, what=what, missing=missing)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise error(f"{what} is {size} bytes, more than the {limit}-byte limit", path=os.fspath(path))
        chunks = []
        total = 0
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:  # grew while being read
                raise error(f"{what} grew past the {limit}-byte limit while being read", path=os.fspath(path))
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
