"""Hugging Face Hub ids as model paths: ``org/name``, ``org/name@rev`` and ``hf://org/name[@rev][/subfolder]``.

An id resolves to the snapshot folder of the local Hugging Face cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``,
else ``~/.cache/huggingface/hub``): ``models--org--name/snapshots/<commit>/``. The cache is always tried first;
what it lacks is downloaded with :func:`huggingface_hub.snapshot_download` unless ``HF_HUB_OFFLINE`` is set (the
``weightspace`` command sets it by default, so pass ``HF_HUB_OFFLINE=0`` to download). Only weights and small
config files are downloaded. ``huggingface_hub`` is imported on first use.

The reverse direction matters as much: a folder inside the cache (the repo's cache root ``models--org--name/`` or
a ``snapshots/<commit>/`` folder) is named after the repo, never after a 40-character commit hash
(:func:`hub_name_parts`).

A bare ``org/name`` is read as a Hub id only when no such local path exists and it has the shape of an id (one
``/``, no glob characters, no checkpoint suffix); ``hf://`` is always a Hub id.

Examples
--------
>>> parse_hub_spec("hf://org/tiny-bert@v1/sub")
HubRef(repo_id='org/tiny-bert', revision='v1', subfolder='sub')
>>> parse_hub_spec("org/tiny-bert"), parse_hub_spec("models/m0.safetensors"), parse_hub_spec("a/b/c")
(HubRef(repo_id='org/tiny-bert', revision=None, subfolder=None), None, None)
>>> hub_name_parts(Path("/c/hub/models--org--tiny-bert/snapshots/0123abcd/sub"))
['sub', 'tiny-bert', 'org']
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from weightspace.errors import DependencyError, InputError

__all__ = [
    "HubRef",
    "cache_root_snapshot",
    "hub_cache_dir",
    "hub_name_parts",
    "hub_offline",
    "is_cache_root",
    "looks_like_hub_id",
    "parse_hub_spec",
    "resolve_hub",
]

HF_SCHEME = "hf://"
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?"
_ID = re.compile(rf"^(?P<org>{_PART})/(?P<name>{_PART})(?:@(?P<rev>[A-Za-z0-9._/-]+))?$")
_HF_ID = re.compile(
    rf"^(?:(?P<org>{_PART})/)?(?P<name>{_PART})(?:@(?P<rev>[A-Za-z0-9._-]+))?(?:/(?P<sub>[^@]+))?$"
)
_CACHE_ROOT = re.compile(r"^models--(?P<org>[^/]+?)--(?P<name>[^/]+)$|^models--(?P<solo>[^/-][^/]*)$")
# Files a model needs; anything else in a repo (other frameworks' weights, images, ONNX) is not downloaded.
_WEIGHTS = ("*.safetensors", "*.safetensors.index.json")
_CONFIGS = ("config.json", "generation_config.json", "adapter_config.json")
_PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*.bin", "adapter_model.bin")
_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".json", ".txt", ".wsz")


@dataclass(frozen=True)
class HubRef:
    """A parsed Hub id: ``repo_id`` (``org/name``), an optional ``revision`` and ``subfolder``."""

    repo_id: str
    revision: str | None = None
    subfolder: str | None = None

    def __str__(self) -> str:
        text = self.repo_id + (f"@{self.revision}" if self.revision else "")
        return f"{HF_SCHEME}{text}/{self.subfolder}" if self.subfolder else text


def looks_like_hub_id(spec: str) -> bool:
    """True if ``spec`` has the shape of a Hub id (``hf://…``, or ``org/name[@rev]`` without a file suffix)."""
    return parse_hub_spec(spec) is not None


def parse_hub_spec(spec: str) -> HubRef | None:
    """The :class:`HubRef` that ``spec`` names, or None if it is not shaped like a Hub id.

    ``hf://`` ids may name a single-part legacy repo (``hf://gpt2``) and a subfolder; bare ids need ``org/name``.
    """
    if spec.startswith(HF_SCHEME):
        m = _HF_ID.match(spec[len(HF_SCHEME) :])
        if m is None:
            return None
        repo = f"{m['org']}/{m['name']}" if m["org"] else m["name"]
        sub = m["sub"].strip("/") if m["sub"] else None
        if sub and any(p in ("", ".", "..") for p in sub.split("/")):
            return None
        return HubRef(repo, m["rev"], sub or None)
    m = _ID.match(spec)
    if m is None or m["name"].lower().endswith(_SUFFIXES):
        return None
    return HubRef(f"{m['org']}/{m['name']}", m["rev"], None)


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` forbids downloads (read at call time)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def is_cache_root(path: Path) -> bool:
    """True for a repo's cache root, ``models--org--name/`` holding ``snapshots/``."""
    return path.is_dir() and _CACHE_ROOT.match(path.name) is not None and (path / "snapshots").is_dir()


def cache_root_snapshot(path: Path) -> Path:
    """The snapshot a repo's cache root stands for: the one ``refs/main`` points to, else its only snapshot.

    Raises
    ------
    InputError
        If the snapshot cannot be chosen (no ``refs/main`` and zero or several snapshots).
    """
    snapshots = path / "snapshots"
    ref = path / "refs" / "main"
    if ref.is_file():
        commit = ref.read_text(encoding="utf-8").strip()
        if re.fullmatch(r"[0-9a-fA-F]{6,64}", commit) and (snapshots / commit).is_dir():
            return snapshots / commit
    found = sorted(p for p in snapshots.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(found) == 1:
        return found[0]
    if not found:
        raise InputError("this Hugging Face cache folder holds no snapshot", path=path)
    raise InputError(
        f"this Hugging Face cache folder holds {len(found)} snapshots and no refs/main; name one: "
        + ", ".join(str(p) for p in found[:3]),
        path=path,
    )


def hub_name_parts(path: Path) -> list[str] | None:
    """Name parts (most specific first) of a folder inside a Hub cache repo, or None for any other path.

    ``…/models--org--name/snapshots/<commit>/sub/x`` gives ``['x', 'sub', 'name', 'org']``; the cache root and a
    snapshot folder give ``['name', 'org']``. Collections join as many parts as they need to tell models apart.
    """
    parts = path.parts
    for i in range(len(parts) - 1, -1, -1):
        m = _CACHE_ROOT.match(parts[i])
        if m is None:
            continue
        rest = parts[i + 1 :]
        if rest and rest[0] != "snapshots":
            return None
        inner = list(rest[2:]) if len(rest) >= 2 else []  # below snapshots/<commit>/
        repo = [m["solo"]] if m["solo"] else [m["name"], m["org"]]
        return [*reversed(inner), *repo]
    return None


def _huggingface_hub():  # type: ignore[no-untyped-def]
    try:
        import huggingface_hub
        import huggingface_hub.errors
    except ImportError as err:  # pragma: no cover - huggingface_hub comes with transformers
        raise DependencyError(
            "Hugging Face Hub ids need the huggingface_hub package; install it with pip install 'weightspace[hf]'"
        ) from err
    return huggingface_hub


def _patterns(sub: str | None, pickles: bool) -> list[str]:
    names = [*_WEIGHTS, *_CONFIGS, *(_PICKLES if pickles else ())]
    return [f"{sub}/{n}" for n in names] if sub else names


def resolve_hub(ref: HubRef | str, *, allow_pickle: bool = False, bare: bool = False) -> Path:
    """The local folder of a Hub id: its cached snapshot (and subfolder), downloaded first if needed and allowed.

    Parameters
    ----------
    ref : HubRef or str
        ``org/name``, ``org/name@rev`` or ``hf://org/name[@rev][/subfolder]``.
    allow_pickle : bool, default False
        Also download ``pytorch_model.bin`` / ``adapter_model.bin`` when the repo has no safetensors weights.
    bare : bool, default False
        The id was written without ``hf://`` and names no local path either: errors say both.

    Returns
    -------
    Path
        ``<cache>/models--org--name/snapshots/<commit>[/subfolder]``.

    Raises
    ------
    InputError
        The id is malformed; it is not cached and ``HF_HUB_OFFLINE`` is set; the download failed; or the
        subfolder does not exist in the snapshot. The message names the id.
    """
    if isinstance(ref, str):
        parsed = parse_hub_spec(ref)
        if parsed is None:
            raise InputError(
                "not a Hugging Face Hub id (expected org/name, org/name@revision or hf://org/name[/subfolder])",
                path=ref,
            )
        ref = parsed
    hub = _huggingface_hub()
    cache = hub_cache_dir()
    errors = hub.errors
    kwargs = {"repo_id": ref.repo_id, "revision": ref.revision, "cache_dir": str(cache)}
    try:
        folder = Path(hub.snapshot_download(local_files_only=True, **kwargs))
    except (errors.LocalEntryNotFoundError, FileNotFoundError, ValueError):
        folder = None
    if folder is None:
        if hub_offline():
            raise InputError(
                ("no such file or directory; as a " if bare else "")
                + f"Hugging Face Hub id {str(ref)!r} is not in the local cache ({cache}) and HF_HUB_OFFLINE is set; "
                f"download it first (HF_HUB_OFFLINE=0, or hf download {ref.repo_id}) or pass a local path",
                path=str(ref),
            )
        try:
            folder = Path(
                hub.snapshot_download(allow_patterns=_patterns(ref.subfolder, allow_pickle), **kwargs)  # type: ignore[arg-type]
            )
        except Exception as err:  # network, auth, missing repo: all reach the user as the id plus the cause
            raise InputError(
                ("no such file or directory; as a Hub id: " if bare else "")
                + f"cannot download Hugging Face Hub id {str(ref)!r} ({type(err).__name__}: {err})",
                path=str(ref),
            ) from None
    if ref.subfolder:
        folder = folder / ref.subfolder
        if not folder.exists():
            raise InputError(f"Hub id {str(ref)!r}: the snapshot has no subfolder {ref.subfolder!r}", path=folder)
    return folder
