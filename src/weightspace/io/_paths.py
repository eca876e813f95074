"""Turn the MODELS arguments of the CLI (files, directories, globs, ``@list.txt``, Hub ids) into checkpoint paths.

Relative paths, including those inside an ``@list.txt``, are relative to the current directory (``cwd``), as
they would be on the command line. A spec that names no local path but has the shape of a Hugging Face Hub id
(``org/name``, ``org/name@rev``, ``hf://org/name[/subfolder]``) is resolved through the Hub cache
(:mod:`weightspace.io._hub`); a repo's cache root ``models--org--name/`` stands for its current snapshot.

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
from weightspace.io._hub import HF_SCHEME, cache_root_snapshot, is_cache_root, parse_hub_spec, resolve_hub
from weightspace.io._pathpolicy import check_relpath, following_symlinks, read_regular, within
from weightspace.io._pickle import PICKLE_SUFFIXES
from weightspace.io._sources import is_model_dir

__all__ = ["adapter_base_model", "expand_models", "natural_key", "resolve_model_path"]

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
        elif is_cache_root(child):  # a Hugging Face cache folder: every repo in it is a model
            found.append(cache_root_snapshot(child))
    return sorted(found, key=lambda p: natural_key(p.name))


def resolve_model_path(
    spec: str | os.PathLike[str], *, cwd: Path | None = None, allow_pickle: bool = False
) -> Path:
    """The local path of one model: a path as is (relative to ``cwd``), a Hub id through the Hub cache.

    A repo's cache root ``models--org--name/`` becomes its current snapshot folder. This is how ``--base`` is
    resolved; MODELS go through :func:`expand_models`, which also expands folders, globs and lists.

    Raises
    ------
    InputError
        A Hub id that cannot be resolved (the message names it).
    """
    text = os.fspath(spec)
    if text.startswith(HF_SCHEME):
        return resolve_hub(text, allow_pickle=allow_pickle)
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = (cwd or Path.cwd()) / path
    if not path.exists() and not path.is_symlink():
        ref = parse_hub_spec(text)
        if ref is not None:
            return resolve_hub(ref, allow_pickle=allow_pickle, bare=True)
    if is_cache_root(path):
        return cache_root_snapshot(path)
    return path


def _expand_one(spec: str, base_dir: Path, depth: int, allow_pickle: bool) -> list[Path]:
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
                # Relative to the current directory, as on the command line (not to the list's folder).
                out.extend(_expand_one(line, base_dir, depth + 1, allow_pickle))
        if not out:
            raise InputError("model list names no models", path=list_path)
        return out
    if spec.startswith(HF_SCHEME):
        return [resolve_hub(spec, allow_pickle=allow_pickle)]
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    if not path.exists() and not path.is_symlink() and not _GLOB_CHARS.search(spec):
        ref = parse_hub_spec(spec)
        if ref is not None:
            return [resolve_hub(ref, allow_pickle=allow_pickle, bare=True)]
    if _GLOB_CHARS.search(spec) and not path.exists():
        matches = sorted(glob.glob(str(path)), key=natural_key)
        if not matches:
            raise InputError("glob pattern matched no files", path=spec)
        return [p for m in matches for p in _expand_path(Path(m))]
    return _expand_path(path)


def _expand_path(path: Path) -> list[Path]:
    if is_cache_root(path):
        return [cache_root_snapshot(path)]
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


def expand_models(
    specs: Sequence[str | os.PathLike[str]], *, cwd: Path | None = None, allow_pickle: bool = False
) -> list[Path]:
    """Expand MODELS arguments into checkpoint paths, in the order given (globs and folders sorted naturally).

    Parameters
    ----------
    specs : sequence of str or Path
        Files, model directories, folders of checkpoints (or a zoo folder with ``zoo.json``), glob patterns,
        ``@list.txt`` files (one entry per line, ``#`` comments; relative entries are relative to ``cwd``, like
        the command line's) and Hugging Face Hub ids (``org/name``, ``org/name@rev``, ``hf://org/name[/sub]``,
        read from the local Hub cache; a repo's cache root ``models--org--name/`` is its current snapshot).
    cwd : Path, optional
        Base for relative paths (default: the current directory).
    allow_pickle : bool, default False
        Hub downloads also fetch pickled weights when a repo has no safetensors.

    Returns
    -------
    list of Path

    Raises
    ------
    InputError
        If nothing matches, a path does not exist, a Hub id is not cached (offline) or cannot be downloaded, or
        the same checkpoint is named twice.
    """
    base = cwd or Path.cwd()
    out: list[Path] = []
    seen: dict[Path, str] = {}
    for spec in specs:
        for p in _expand_one(os.fspath(spec), base, 0, allow_pickle):
            key = p.resolve()
            if key in seen:
                raise InputError(f"this checkpoint is named twice (also via {seen[key]!r})", path=p)
            seen[key] = os.fspath(spec)
            out.append(p)
    return out


def adapter_base_model(paths: Sequence[Path]) -> str | None:
    """The ``base_model_name_or_path`` that every PEFT adapter among ``paths`` names, or None.

    None when ``paths`` are not all adapter directories, an adapter names no base, or they name different ones.
    Nothing is resolved: pass the result to :func:`resolve_model_path`.
    """
    names = set()
    for p in paths:
        cfg = p / "adapter_config.json"
        if not cfg.is_file():
            return None
        try:  # the adapter itself is checked when it is opened; here only a readable name is looked for
            raw = parse_json(read_regular(cfg, limit=_MAX_ZOO_JSON_BYTES, root=p, what="adapter config"), path=cfg)
        except InputError:
            return None
        name = raw.get("base_model_name_or_path") if isinstance(raw, dict) else None
        if not isinstance(name, str) or not name.strip():
            return None
        names.add(name.strip())
    return names.pop() if len(names) == 1 else None
