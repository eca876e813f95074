"""Atomic outputs: write into a temporary sibling, fsync, then rename into place.

A reader of the destination sees either the previous content or the complete new content, never a
half-written file, even if the process is killed with SIGKILL. Directories are swapped with
``renameat2(RENAME_EXCHANGE)`` where the kernel has it, otherwise with two renames (between which the
destination is briefly absent, never partial).

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
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_dir", "atomic_file", "atomic_write_bytes", "atomic_write_text", "fsync_dir"]

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


@contextlib.contextmanager
def atomic_file(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; on success fsync it and rename it onto ``dest``.

    On any exception the temporary file is removed and ``dest`` is left untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(dest.parent, dest.name)
    tmp = _tmp_sibling(dest, _TMP_MARK)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
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
def atomic_dir(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary directory next to ``dest``; on success swap it into place.

    Whatever ``dest`` held before (a directory or a file) is replaced only after the new tree is complete and
    fsynced. On any exception the temporary tree is removed and ``dest`` is untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(dest.parent, dest.name)
    tmp = _tmp_sibling(dest, _TMP_MARK)
    tmp.mkdir()
    try:
        yield tmp
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
    except BaseException:
        _remove(tmp)
        raise
