"""Atomic outputs, and the one policy for what an output may replace.

Writing: into a temporary sibling, fsync, then rename into place. A reader of the destination sees either the
previous content or the complete new content, never a half-written file, even if the process is killed with
SIGKILL. Directories are swapped with ``renameat2(RENAME_EXCHANGE)`` where the kernel has it, otherwise with two
renames (between which the destination is briefly absent, never partial). A file system that refuses the write
(no space, read-only, no permission, file too large) becomes an :class:`~weightspace.errors.OutputError` naming the
destination, after the temporary is removed.

Replacing: :func:`check_output` is called by every command before any work. An existing output is replaced only
if weightspace wrote it as the same kind of output — recognised by a marker file (:data:`MARKER`) that directory
outputs carry, by its own manifest (``manifest.json`` of an archive, ``report.json``, ``zoo.json``,
``demo.json``), or for a single safetensors file by the ``weightspace.output`` key of its ``__metadata__``.
Anything else (a model folder, the inputs, a user's files) is refused with exit 2 and left untouched unless the
caller passes ``overwrite=True`` (``--overwrite``). An output that is, holds, or lies inside one of the inputs is
refused even then. The check also probes that the destination's file system is writable and, when the caller
knows it, that it has room for the output.

Examples
--------
>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> with atomic_file(d / "a.txt") as tmp:
...     _ = tmp.write_text("hello")
>>> (d / "a.txt").read_text()
'hello'
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import shutil
import stat
import struct
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from weightspace.errors import InputError, OutputError

__all__ = [
    "MARKER",
    "OUTPUT_KINDS",
    "atomic_dir",
    "atomic_file",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_output",
    "fsync_dir",
    "mark_dir",
    "output_kind",
]

MARKER = ".weightspace-output.json"
"""File a directory output carries to say which kind of weightspace output it is."""
OUTPUT_KINDS = {
    "archive": "archive (.wsz)",
    "report": "analysis report",
    "model": "merged model",
    "models": "folder of rebuilt models",
    "zoo": "zoo",
    "demo": "demo folder",
    "adapt": "adaptation result",
    "aligned": "folder of aligned models",
}
META_KEY = "weightspace.output"
"""``__metadata__`` key of a single-file safetensors output: its kind."""
_FAULTS = {
    errno.ENOSPC,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.EFBIG,
    getattr(errno, "EDQUOT", errno.ENOSPC),
}

_TMP_MARK = ".wstmp-"
_OLD_MARK = ".wsold-"


def fsync_dir(path: Path) -> None:
    """fsync a directory so that renames inside it are durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_stale(parent: Path, name: str) -> None:
    """Remove temporaries of ``name`` left by processes that no longer run (e.g. killed with -9)."""
    for mark in (_TMP_MARK, _OLD_MARK):
        prefix = f".{name}{mark}"
        with contextlib.suppress(OSError):
            for entry in parent.iterdir():
                if not entry.name.startswith(prefix):
                    continue
                pid_part = entry.name[len(prefix) :].split("-", 1)[0]
                if pid_part.isdigit() and not _pid_alive(int(pid_part)):
                    _remove(entry)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _tmp_sibling(dest: Path, mark: str) -> Path:
    return dest.parent / f".{dest.name}{mark}{os.getpid()}-{os.urandom(4).hex()}"


def _fault(err: OSError, dest: Path) -> OutputError | None:
    """The OutputError a file-system refusal while writing ``dest`` becomes (None for other errors)."""
    if err.errno not in _FAULTS:
        return None
    name = os.fspath(err.filename) if err.filename is not None else None
    if name is not None and not (
        name.startswith(os.fspath(dest.parent)) or name.startswith(os.path.realpath(dest.parent))
    ):
        return None  # not about this output (e.g. an input that cannot be read)
    return OutputError(
        f"cannot write the output ({err.strerror or os.strerror(err.errno)}); nothing was replaced",
        path=dest,
        errno=err.errno,
    )


def _mkparents(dest: Path) -> None:
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        fault = _fault(err, dest)
        if fault is not None:
            raise fault from None
        raise


@contextlib.contextmanager
def atomic_file(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; on success fsync it and rename it onto ``dest``.

    On any exception the temporary file is removed and ``dest`` is left untouched; a file-system refusal (no
    space, read-only, permission) is raised as :class:`~weightspace.errors.OutputError` naming ``dest``.
    """
    dest = Path(dest)
    _mkparents(dest)
    _clean_stale(dest.parent, dest.name)
    tmp = _tmp_sibling(dest, _TMP_MARK)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except OSError as err:
        _remove(tmp)
        fault = _fault(err, dest)
        if fault is not None:
            raise fault from None
        raise
    except BaseException:
        _remove(tmp)
        raise


def atomic_write_bytes(dest: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``dest`` atomically."""
    with atomic_file(dest) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def atomic_write_text(dest: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 ``text`` to ``dest`` atomically."""
    atomic_write_bytes(dest, text.encode("utf-8"))


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2; False where the call is not available."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        for fn in filenames:
            _fsync_file(Path(dirpath) / fn)
        fsync_dir(Path(dirpath))


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike[str], *, kind: str | None = None) -> Iterator[Path]:
    """Yield a fresh temporary directory next to ``dest``; on success swap it into place.

    Whatever ``dest`` held before (a directory or a file) is replaced only after the new tree is complete and
    fsynced. On any exception the temporary tree is removed and ``dest`` is untouched; a file-system refusal is
    raised as :class:`~weightspace.errors.OutputError` naming ``dest``. With ``kind``, the tree gets the
    :data:`MARKER` of that output kind.
    """
    dest = Path(dest)
    _mkparents(dest)
    _clean_stale(dest.parent, dest.name)
    tmp = _tmp_sibling(dest, _TMP_MARK)
    try:
        tmp.mkdir()
    except OSError as err:
        fault = _fault(err, dest)
        if fault is not None:
            raise fault from None
        raise
    try:
        yield tmp
        if kind is not None:
            mark_dir(tmp, kind)
        _fsync_tree(tmp)
        if dest.exists() or dest.is_symlink():
            if _exchange(tmp, dest):
                fsync_dir(dest.parent)
                _remove(tmp)  # tmp now holds the previous content
                return
            old = _tmp_sibling(dest, _OLD_MARK)
            os.rename(dest, old)
            os.rename(tmp, dest)
            fsync_dir(dest.parent)
            _remove(old)
        else:
            os.rename(tmp, dest)
            fsync_dir(dest.parent)
    except OSError as err:
        _remove(tmp)
        fault = _fault(err, dest)
        if fault is not None:
            raise fault from None
        raise
    except BaseException:
        _remove(tmp)
        raise


# ------------------------------------------------------------------------------------------------ output policy
def mark_dir(directory: str | os.PathLike[str], kind: str) -> None:
    """Write the :data:`MARKER` saying ``directory`` is a weightspace output of ``kind``."""
    from weightspace._version import __version__

    if kind not in OUTPUT_KINDS:
        raise ValueError(f"unknown output kind {kind!r}")
    text = json.dumps({"kind": kind, "created_by": f"weightspace {__version__}"}) + "\n"
    with open(Path(directory) / MARKER, "w", encoding="utf-8") as fh:
        fh.write(text)


def _small_json(path: Path, limit: int = 1 << 28) -> object:
    """A small regular JSON file's content, or None (never blocks on a FIFO, never raises)."""
    from weightspace._json import parse_json

    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as fh:
            return parse_json(fh.read(limit + 1), path=path)
    except (OSError, InputError):
        return None


def _safetensors_kind(path: Path) -> str | None:
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size < 8:
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > (16 << 20) or n > st.st_size - 8:
                return None
            from weightspace._json import parse_json

            header = parse_json(fh.read(n), path=path)
    except (OSError, InputError, struct.error):
        return None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    kind = meta.get(META_KEY) if isinstance(meta, dict) else None
    return kind if isinstance(kind, str) else None


def output_kind(path: str | os.PathLike[str]) -> str | None:
    """Which kind of weightspace output ``path`` is (see :data:`OUTPUT_KINDS`), or None.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> output_kind(d) is None
    True
    >>> mark_dir(d, "report")
    >>> output_kind(d)
    'report'
    """
    p = Path(path)
    if p.is_symlink():
        return None
    if p.is_file():
        return _safetensors_kind(p)
    if not p.is_dir():
        return None
    marker = _small_json(p / MARKER, 1 << 16)
    if isinstance(marker, dict) and marker.get("kind") in OUTPUT_KINDS:
        return str(marker["kind"])
    manifest = _small_json(p / "manifest.json")
    if isinstance(manifest, dict) and manifest.get("format") == "weightspace-archive":
        return "archive"
    report = _small_json(p / "report.json")
    if isinstance(report, dict) and {"version", "units", "summary"} <= set(report):
        return "report"
    zoo = _small_json(p / "zoo.json")
    if isinstance(zoo, dict) and {"zoo", "models"} <= set(zoo):
        return "zoo"
    demo = _small_json(p / "demo.json")
    if isinstance(demo, dict) and {"zoos", "created_by"} <= set(demo):
        return "demo"
    alignment = _small_json(p / "alignment.json")
    if isinstance(alignment, dict) and {"spec", "models"} <= set(alignment):
        return "aligned"
    return None


_ONE_MODEL_FILES = (
    "adapter_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "manifest.json",
)


def _is_single_model(path: str) -> bool:
    """A directory that is one model or archive (writing inside it would change it), not a folder of them."""
    return os.path.isdir(path) and any(os.path.lexists(os.path.join(path, n)) for n in _ONE_MODEL_FILES)


def _article(what: str) -> str:
    return "an" if what[:1].lower() in "aeiou" else "a"


def _describe(p: Path) -> str:
    if p.is_symlink():
        return f"a symbolic link to {os.path.realpath(p)}"
    if p.is_dir():
        kind = output_kind(p)
        if kind is not None:
            return f"a weightspace {OUTPUT_KINDS[kind]}"
        try:
            n = sum(1 for _ in p.iterdir())
        except OSError:
            n = 0
        return f"a folder with {n} entr{'y' if n == 1 else 'ies'}"
    if p.is_file():
        return f"a file of {p.stat().st_size} bytes"
    return "not a regular file or folder"


def _nearest_existing(p: Path) -> Path:
    q = p.parent
    while not q.exists() and q != q.parent:
        q = q.parent
    return q


def _probe(dest: Path, required_bytes: int | None, detail: str | None = None) -> None:
    """Fail now, not after the computation, if the destination's file system refuses writes or lacks room."""
    where = _nearest_existing(dest)
    if not where.is_dir():
        raise OutputError(f"cannot create the output: {where} is not a folder", path=dest, errno=errno.ENOTDIR)
    try:
        fd, name = tempfile.mkstemp(prefix=".wsprobe-", dir=where)
        os.close(fd)
        os.unlink(name)
    except OSError as err:
        raise OutputError(
            f"cannot write in {where} ({err.strerror or os.strerror(err.errno or 0)}); nothing was written",
            path=dest,
            errno=err.errno,
        ) from None
    if required_bytes:
        try:
            vfs = os.statvfs(where)
        except OSError:
            return
        free = vfs.f_bavail * vfs.f_frsize
        if required_bytes > free:
            raise OutputError(
                f"the output needs at least {required_bytes / 1e9:,.2f} GB but only {free / 1e9:,.2f} GB is free "
                f"on the file system of {where}{'; ' + detail if detail else ''}; nothing was written",
                path=dest,
                errno=errno.ENOSPC,
            )


def check_output(
    dest: str | os.PathLike[str],
    kind: str,
    *,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike[str]] = (),
    required_bytes: int | None = None,
    what: str | None = None,
    detail: str | None = None,
) -> Path:
    """Refuse an output path weightspace must not write, before any work; return it as a Path.

    Parameters
    ----------
    dest : path
        The output (``-o``).
    kind : str
        One of :data:`OUTPUT_KINDS`: what will be written there.
    overwrite : bool, default False
        Replace an existing path even if weightspace did not write it as a ``kind`` (``--overwrite``).
    inputs : iterable of path
        Paths being read (models, base, archive). The output may not be one of them, hold one, or lie inside one
        that is a single model or archive directory.
    required_bytes : int, optional
        A lower bound of the output's size; refused when the file system has less free space.
    what : str, optional
        Names the output in messages (default: the kind's description).
    detail : str, optional
        Added to a refusal for lack of space (e.g. which input declares the largest part).

    Returns
    -------
    Path

    Raises
    ------
    OutputError
        Naming ``dest``: what it is and how to proceed.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "notes.txt").write_text("mine")
    >>> check_output(d / "new.wsz", "archive") == d / "new.wsz"
    True
    >>> try:
    ...     check_output(d, "report")
    ... except OutputError as err:
    ...     print(err.message.split(";")[0])
    output exists and weightspace did not write it as an analysis report (it is a folder with 1 entry)
    """
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"unknown output kind {kind!r}")
    what = what or OUTPUT_KINDS[kind]
    path = Path(dest)
    real = os.path.realpath(path)
    for given in inputs:
        inp = os.path.realpath(given)
        if inp == real:
            raise OutputError(
                f"refusing to write the {what} over one of its inputs ({given}); choose another -o", path=path
            )
        if inp.startswith(real.rstrip(os.sep) + os.sep):
            raise OutputError(
                f"refusing to replace a folder that holds the input {given} with the {what}; choose another -o",
                path=path,
            )
        if _is_single_model(inp) and real.startswith(inp.rstrip(os.sep) + os.sep):
            raise OutputError(
                f"refusing to write the {what} inside the input {given}; choose another -o", path=path
            )
    if path.is_symlink() or path.exists():
        empty_dir = path.is_dir() and not path.is_symlink() and not any(path.iterdir())
        ours = not path.is_symlink() and output_kind(path) == kind
        if not (empty_dir or ours or overwrite):
            raise OutputError(
                f"output exists and weightspace did not write it as {_article(what)} {what} (it is "
                f"{_describe(path)}); refusing "
                "to replace it: choose another -o, or pass --overwrite to replace it",
                path=path,
            )
    _probe(path, required_bytes, detail)
    return path
