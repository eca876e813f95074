"""``zoo.json``: the manifest of a built zoo (:class:`ZooInfo`, :class:`ZooModel`) and its validated reader.

``zoo.json`` is written last by :meth:`weightspace.zoo.Zoo.build`, so a directory that :func:`load_zoo_info`
accepts is a complete build.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weightspace.errors import InputError, ParameterError

__all__ = ["ZOO_FORMAT_VERSION", "ZOO_JSON", "ZooInfo", "ZooModel", "load_zoo_info"]

ZOO_FORMAT_VERSION = 1
ZOO_JSON = "zoo.json"


@dataclass(frozen=True)
class ZooModel:
    """One model of a built zoo, as recorded in ``zoo.json``.

    Attributes
    ----------
    name : str
        Unique name inside the zoo (``"003_pair-2-3"``).
    path : pathlib.Path
        Absolute path of the checkpoint (a ``.safetensors`` file, or a PEFT adapter directory).
    task : str
        Task the model was trained for; pass it to :meth:`Zoo.accuracy` / :meth:`Zoo.task_data`.
    seed : int
        Seed of this model (initialisation, data order, data subset).
    data : dict
        What data it was trained on (split, subset size/indices ...).
    train_accuracy, test_accuracy : float or None
        Accuracies measured at build time (``test_accuracy`` equals :meth:`Zoo.accuracy` of the checkpoint).
    extra : dict
        Any further fields of the ``zoo.json`` entry (training settings, wall time, final loss).
    """

    name: str
    path: Path
    task: str
    seed: int
    data: dict[str, Any] = field(default_factory=dict)
    train_accuracy: float | None = None
    test_accuracy: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ZooInfo:
    """The parsed ``zoo.json`` of a built zoo directory.

    Attributes
    ----------
    dir : pathlib.Path
        The zoo directory (absolute).
    zoo : str
        Zoo name (a key of :func:`weightspace.zoo.zoo_names`).
    version : int
        ``zoo.json`` format version.
    seed, n : int
        Build arguments: zoo seed and number of models.
    quick : bool
        Whether the zoo was built with the quick (smaller, shorter) settings.
    base_path : pathlib.Path or None
        The pretrained base: ``dir/base.safetensors`` for fine-tune zoos, the MiniLM model directory for
        ``minilm-lora``, ``None`` for zoos without a base.
    models : list of ZooModel
        The models, in build order.
    tasks : dict
        Task name → JSON definition of that task.
    meta : dict
        The whole ``zoo.json`` document.
    """

    dir: Path
    zoo: str
    version: int
    seed: int
    n: int
    quick: bool
    base_path: Path | None
    models: list[ZooModel]
    tasks: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def paths(self) -> list[Path]:
        """Checkpoint paths of all models, in build order."""
        return [m.path for m in self.models]

    def model(self, name: str) -> ZooModel:
        """Return the model called ``name``; an unknown name raises :class:`ParameterError`."""
        for m in self.models:
            if m.name == name:
                return m
        raise ParameterError(f"zoo has no model '{name}'. Models: {', '.join(m.name for m in self.models)}.")


def _bad(path: Path, message: str) -> InputError:
    return InputError(f"invalid zoo.json: {message}", path=path)


def load_zoo_info(dir: str | os.PathLike[str]) -> ZooInfo:
    """Parse ``DIR/zoo.json`` of a built zoo.

    Parameters
    ----------
    dir : str or os.PathLike
        Zoo directory written by :func:`weightspace.zoo.build_zoo`.

    Returns
    -------
    ZooInfo
        Model paths are made absolute; every referenced checkpoint is checked to exist.

    Raises
    ------
    InputError
        ``zoo.json`` is missing, not JSON, has missing/ill-typed fields, or names a checkpoint that is absent.
    """
    root = Path(dir).absolute()
    path = root / ZOO_JSON
    if not path.is_file():
        raise InputError(
            f"not a zoo directory: {ZOO_JSON} is missing (build one with: weightspace zoo NAME -o DIR)", path=path
        )
    from weightspace._json import parse_json
    from weightspace.io import check_relpath, read_regular

    # zoo.json may come with a downloaded zoo: read bounded, parsed strictly, model paths kept inside the zoo.
    try:
        raw = read_regular(path, limit=64 << 20, root=root, what=ZOO_JSON, missing=InputError, error=InputError)
        doc = parse_json(raw, path=path, what=ZOO_JSON, error=InputError)
    except InputError as err:
        raise _bad(path, f"cannot be parsed ({err.message})") from None
    if not isinstance(doc, dict):
        raise _bad(path, "top level must be an object")

    def req(obj: Mapping[str, Any], key: str, typ: type | tuple[type, ...], where: str = "") -> Any:
        if key not in obj:
            raise _bad(path, f"missing field '{where}{key}'")
        val = obj[key]
        if not isinstance(val, typ) or (typ is int and isinstance(val, bool)):
            raise _bad(path, f"field '{where}{key}' has the wrong type ({type(val).__name__})")
        return val

    zoo = req(doc, "zoo", str)
    version = req(doc, "version", int)
    if version != ZOO_FORMAT_VERSION:
        raise _bad(path, f"unsupported version {version} (this weightspace reads version {ZOO_FORMAT_VERSION})")
    seed = req(doc, "seed", int)
    n = req(doc, "n", int)
    quick = req(doc, "quick", bool)
    base = doc.get("base")
    if base is not None and not isinstance(base, str):
        raise _bad(path, "field 'base' must be a string or null")
    base_path = None if base is None else (root / base)
    # A base inside the zoo must be there; an external one (the MiniLM weights of minilm-lora, recorded as an
    # absolute path) may legitimately live elsewhere on another machine, and its evaluator finds it itself.
    if base is not None and not Path(base).is_absolute() and not base_path.exists():  # type: ignore[union-attr]
        raise _bad(path, f"base checkpoint {base_path} does not exist")
    raw_models = req(doc, "models", list)
    models: list[ZooModel] = []
    known = {"name", "path", "task", "seed", "data", "train_accuracy", "test_accuracy"}
    for i, m in enumerate(raw_models):
        if not isinstance(m, dict):
            raise _bad(path, f"models[{i}] must be an object")
        where = f"models[{i}]."
        mpath = root / check_relpath(req(m, "path", str, where), what=f"{where}path", path=path, error=InputError)
        if not mpath.exists():
            raise _bad(path, f"checkpoint {mpath} of model {i} does not exist")
        acc = {}
        for key in ("train_accuracy", "test_accuracy"):
            val = m.get(key)
            if val is not None and (not isinstance(val, (int, float)) or isinstance(val, bool)):
                raise _bad(path, f"field '{where}{key}' must be a number or null")
            acc[key] = None if val is None else float(val)
        data = m.get("data", {})
        if not isinstance(data, dict):
            raise _bad(path, f"field '{where}data' must be an object")
        models.append(
            ZooModel(
                name=req(m, "name", str, where),
                path=mpath,
                task=req(m, "task", str, where),
                seed=req(m, "seed", int, where),
                data=data,
                extra={k: v for k, v in m.items() if k not in known},
                **acc,
            )
        )
    if len(models) != n:
        raise _bad(path, f"'n' is {n} but {len(models)} models are listed")
    tasks = doc.get("tasks", {})
    if not isinstance(tasks, dict):
        raise _bad(path, "field 'tasks' must be an object")
    return ZooInfo(
        dir=root,
        zoo=zoo,
        version=version,
        seed=seed,
        n=n,
        quick=quick,
        base_path=base_path,
        models=models,
        tasks=tasks,
        meta=doc,
    )
