"""Turn the MODELS arguments of the CLI (files, directories, globs, ``@list.txt``) into checkpoint paths.

Paths the user names are taken as given. What a named folder holds is not: a checkpoint in it that is a symbolic
link leaving the folder is refused unless links are followed (``--follow-symlinks``), and the model paths of a zoo
folder's ``zoo.json`` must be relative paths inside the folder.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from pathlib import Path

from weightspace._json import parse_json
from weightspace.errors import InputError, UnsafeFileError
from weightspace.io._pathpolicy import check_relpath, following_symlinks, read_regular, within
from weightspace.io._pickle import PICKLE_SUFFIXES
from weightspace.io._sources import is_model_dir

__all__ = ["expand_models", "natural_key"]

_GLOB_CHARS = re.compile(r"[*?\[]")
_MAX_LIST_DEPTH = 4


def natural_key(text: str) -> list[object]:
    """Sort key that orders ``layer.2`` before ``layer.10``.

    Examples
    --------
    >>> sorted(["l.10", "l.2", "l.1"], key=natural_key)
    ['l.1', 'l.2', 'l.10']
    """
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


_MAX_ZOO_JSON_BYTES = 16 << 20


def _zoo_children(directory: Path, zoo: Path) -> list[Path]:
    info = parse_json(read_regular(zoo, limit=_MAX_ZOO_JSON_BYTES, root=directory, what="zoo.json"), path=zoo)
    models = info.get("models") if isinstance(info, dict) else None
    if not isinstance(models, list) or not all(isinstance(m, dict) for m in models):
        raise InputError("cannot read the model list of this zoo ('models' must be a list of objects)", path=zoo)
    out = []
    for m in models:
        rel = check_relpath(m.get("path"), what="zoo model path", path=zoo, error=InputError)
        p = directory / rel
        if not following_symlinks() and os.path.lexists(p) and not within(p, directory):
            raise UnsafeFileError(
                f"zoo model {rel!r} is a symbolic link out of the zoo folder (pass --follow-symlinks to read it)",
                path=p,
            )
        out.append(p)
    return out


def _children(directory: Path) -> list[Path]:
    zoo = directory / "zoo.json"
    if os.path.lexists(zoo):
        return _zoo_children(directory, zoo)
    found = []
    for child in directory.iterdir():
        if child.name.startswith("."):
            continue
        # Anything with a checkpoint suffix is listed (FIFOs, devices, a folder named x.safetensors), so reading
        # it fails loudly instead of the model silently missing from the collection.
        is_checkpoint = child.suffix.lower() in (".safetensors", *PICKLE_SUFFIXES)
        if is_checkpoint or (child.is_dir() and is_model_dir(child)):
            if child.is_symlink() and not following_symlinks() and not within(child, directory):
                raise UnsafeFileError(
                    f"checkpoint is a symbolic link to {os.path.realpath(child)}, outside the folder {directory} "
                    "named on the command line (pass --follow-symlinks to read it, or name it directly)",
                    path=child,
                )
            found.append(child)
    return sorted(found, key=lambda p: natural_key(p.name))


def _expand_one(spec: str, base_dir: Path, depth: int) -> list[Path]:
    if spec.startswith("@"):
        list_path = (base_dir / spec[1:]).expanduser()
        if depth >= _MAX_LIST_DEPTH:
            raise InputError(f"@-lists nest deeper than {_MAX_LIST_DEPTH} levels", path=list_path)
        raw = read_regular(
            list_path, limit=_MAX_ZOO_JSON_BYTES, what="model list", missing=InputError, error=InputError
        )
        try:
            lines = raw.decode("utf-8").splitlines()
        except UnicodeDecodeError as err:
            raise InputError(f"cannot read model list ({err})", path=list_path) from None
        out: list[Path] = []
        for line in lines:
            line = line.strip()
            if line and not line.startswith("#"):
                out.extend(_expand_one(line, list_path.parent, depth + 1))
        if not out:
            raise InputError("model list names no models", path=list_path)
        return out
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    if _GLOB_CHARS.search(spec) and not path.exists():
        matches = sorted(glob.glob(str(path)), key=natural_key)
        if not matches:
            raise InputError("glob pattern matched no files", path=spec)
        return [p for m in matches for p in _expand_path(Path(m))]
    return _expand_path(path)


def _expand_path(path: Path) -> list[Path]:
    if path.is_dir() and not is_model_dir(path):
        kids = _children(path)
        if not kids:
            raise InputError(
                "directory holds no checkpoints (.safetensors files, model or adapter directories)", path=path
            )
        return kids
    if not path.exists() and not path.is_symlink():
        raise InputError("no such file or directory", path=path)
    return [path]


def expand_models(specs: Sequence[str | os.PathLike[str]], *, cwd: Path | None = None) -> list[Path]:
    """Expand MODELS arguments into checkpoint paths, in the order given (globs and folders sorted naturally).

    Parameters
    ----------
    specs : sequence of str or Path
        Files, model directories, folders of checkpoints (or a zoo folder with ``zoo.json``), glob patterns, and
        ``@list.txt`` files (one entry per line, relative to the list's folder, ``#`` comments).
    cwd : Path, optional
        Base for relative paths (default: the current directory).

    Returns
    -------
    list of Path

    Raises
    ------
    InputError
        If nothing matches, a path does not exist, or the same checkpoint is named twice.
    """
    base = cwd or Path.cwd()
    out: list[Path] = []
    seen: dict[Path, str] = {}
    for spec in specs:
        for p in _expand_one(os.fspath(spec), base, 0):
            key = p.resolve()
            if key in seen:
                raise InputError(f"this checkpoint is named twice (also via {seen[key]!r})", path=p)
            seen[key] = os.fspath(spec)
            out.append(p)
    return out
