"""Shared machinery of the zoos: the :class:`Zoo` base class, ``zoo.json``, checkpoint I/O, seeding, threads.

A zoo directory is built inside a temporary sibling and swapped into place only once it is complete
(:func:`weightspace._atomic.atomic_dir`), with ``zoo.json`` written last, so an interrupted build never leaves
a directory that :func:`load_zoo_info` accepts.
"""

from __future__ import annotations

import abc
import contextlib
import importlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn

from weightspace._atomic import atomic_dir, atomic_file, atomic_write_text
from weightspace.errors import (
    DependencyError,
    InputError,
    ParameterError,
    ShapeMismatchError,
    TensorKeyError,
)
from weightspace.io import SafetensorsFile, save_safetensors

__all__ = [
    "META_TASK",
    "META_ZOO",
    "ZOO_FORMAT_VERSION",
    "ModelSource",
    "ProgressFn",
    "Zoo",
    "ZooInfo",
    "ZooKind",
    "ZooModel",
    "load_zoo_info",
]

ZooKind = Literal["scratch", "init", "finetune", "lora"]
#: What the evaluators accept: a checkpoint path (file or PEFT directory), a state dict, or a module.
ModelSource = str | os.PathLike[str] | Mapping[str, Tensor] | nn.Module
ProgressFn = Callable[[int, int, str], None]

ZOO_FORMAT_VERSION = 1
META_ZOO = "weightspace.zoo"
META_TASK = "weightspace.task"
ZOO_JSON = "zoo.json"


# --------------------------------------------------------------------------------------------- zoo.json


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
        raise InputError(f"not a zoo directory: {ZOO_JSON} is missing (build one with build_zoo)", path=path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(path, f"cannot be parsed ({exc})") from None
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
        mpath = root / req(m, "path", str, where)
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


# ------------------------------------------------------------------------------------------------ helpers


def require(module: str) -> Any:
    """Import an optional dependency of the zoos, or raise :class:`DependencyError` naming the extra."""
    if module.split(".")[0] in {"transformers", "peft"}:
        # Without these a cache miss makes the hub client retry for most of a minute before failing.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DependencyError(
            f"the model zoos need the optional dependency '{module.split('.')[0]}' ({exc}); "
            "install `weightspace[zoo]`"
        ) from exc


def derive_seed(zoo_seed: int, *key: int) -> int:
    """A 31-bit seed derived from the zoo seed and a key (model index ...), independent across keys."""
    return int(np.random.SeedSequence([zoo_seed, *key]).generate_state(1)[0] & 0x7FFFFFFF)


def train_threads(default: int) -> int:
    """Threads for training/evaluation: ``WEIGHTSPACE_ZOO_THREADS`` if set, else the zoo's ``default``.

    The count is pinned rather than "all cores" because float reductions in CPU kernels depend on how the
    work is split, and byte-identical rebuilds need the same split every time.
    """
    raw = os.environ.get("WEIGHTSPACE_ZOO_THREADS", "")
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ParameterError(f"WEIGHTSPACE_ZOO_THREADS must be a positive integer, got {raw!r}")
    return value


@contextlib.contextmanager
def pinned_threads(n: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)``, restoring the previous count afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Seed torch's global CPU generator inside the block and restore its state after (no-op for ``None``).

    Module constructors draw from the global generator; forking it keeps a build from disturbing the
    caller's random stream.
    """
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def save_checkpoint(
    path: str | os.PathLike[str],
    state: Mapping[str, Tensor],
    *,
    zoo: str,
    task: str,
    extra_meta: Mapping[str, str] | None = None,
) -> None:
    """Atomically write the float tensors of ``state`` as float32 safetensors with zoo/task metadata."""
    tensors = {
        k: v.detach().to(device="cpu", dtype=torch.float32)
        for k, v in state.items()
        if torch.is_tensor(v) and v.is_floating_point()
    }
    meta = {"format": "pt", META_ZOO: zoo, META_TASK: task, **(extra_meta or {})}
    # Sorted keys and metadata: the same state always gives the same bytes (rebuilds are byte-identical).
    with atomic_file(path) as tmp:
        save_safetensors(tmp, {k: tensors[k] for k in sorted(tensors)}, {k: str(meta[k]) for k in sorted(meta)})


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a safetensors file: (tensors, metadata), through weightspace's validated reader.

    Missing, non-regular or malformed files raise :class:`~weightspace.errors.InputError` subclasses naming the
    file (and tensor).
    """
    st = SafetensorsFile(path)
    return {k: st.read(k) for k in st}, dict(st.metadata)


def load_state_strict(model: nn.Module, state: Mapping[str, Tensor], *, path: str | None = None) -> None:
    """Copy ``state`` into ``model`` after checking keys and shapes, with errors that name the tensor."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing:
        raise TensorKeyError(f"state dict lacks {len(missing)} tensor(s): {', '.join(missing[:8])}", path=path)
    if unexpected:
        raise TensorKeyError(
            f"state dict has {len(unexpected)} tensor(s) this architecture does not: {', '.join(unexpected[:8])}",
            path=path,
        )
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ShapeMismatchError(
                f"expected shape {tuple(own[k].shape)}, got {tuple(v.shape)} (wrong task head?)",
                path=path,
                tensor=k,
            )
    model.load_state_dict({k: v.detach().to(dtype=own[k].dtype) for k, v in state.items()})


def check_split(split: Any) -> Literal["train", "test"]:
    if split not in ("train", "test"):
        raise ParameterError(f"split must be 'train' or 'test', got {split!r}")
    return split


def check_int(name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ParameterError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    return int(value)


# ------------------------------------------------------------------------------------------------ training


def fit(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    steps: int,
    lr: float,
    seed: int,
    batch_size: int = 64,
    parameters: Sequence[Tensor] | None = None,
    progress: ProgressFn | None = None,
    weight_decay: float = 0.0,
    schedule: Literal["cosine", "constant"] = "cosine",
) -> dict[str, Any]:
    """Minibatch Adam(W) on cross-entropy; batches come from a ``torch.Generator`` seeded with ``seed``.

    Parameters outside ``parameters`` have ``requires_grad`` switched off during the loop (so no gradient is
    computed for them) and restored afterwards; the model's train/eval mode is restored too.
    """
    steps = check_int("steps", steps, minimum=0)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ParameterError(f"lr must be a positive finite number, got {lr!r}")
    if schedule not in ("cosine", "constant"):
        raise ParameterError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ParameterError(
            f"inputs and labels must be non-empty and of equal length, got {x.shape[0]}, {y.shape[0]}"
        )
    if parameters is None:
        params = [p for p in model.parameters() if p.requires_grad]
    else:
        params = list({id(p): p for p in parameters}.values())
        for p in params:
            if not (torch.is_tensor(p) and p.is_floating_point() and p.is_leaf):
                raise ParameterError("parameters must be floating-point leaf tensors")
    if steps > 0 and not params:
        raise ParameterError("nothing to train: no parameter requires grad")

    chosen = {id(p) for p in params}
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in chosen]
    restore_grad = [(p, p.requires_grad) for p in params]
    was_training = model.training
    gen = torch.Generator().manual_seed(int(seed))
    n = x.shape[0]
    bs = min(batch_size, n)
    losses: list[float] = []
    t0 = time.perf_counter()
    try:
        for p in frozen:
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        model.train()
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=True) if steps else None
        order = torch.empty(0, dtype=torch.long)
        pos = 0
        report_every = max(1, steps // 20)
        for step in range(steps):
            if schedule == "cosine":
                for g in opt.param_groups:  # type: ignore[union-attr]
                    g["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * step / steps))
            if pos + bs > order.numel():
                order = torch.randperm(n, generator=gen)
                pos = 0
            idx = order[pos : pos + bs]
            pos += bs
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)  # type: ignore[union-attr]
            loss.backward()
            opt.step()  # type: ignore[union-attr]
            losses.append(float(loss.detach()))
            if progress is not None and ((step + 1) % report_every == 0 or step + 1 == steps):
                progress(step + 1, steps, f"loss {losses[-1]:.4f}")
    finally:
        for p in frozen:
            p.requires_grad_(True)
        for p, flag in restore_grad:
            p.requires_grad_(flag)
        model.train(was_training)
    tail = losses[-min(10, len(losses)) :]
    return {
        "steps": steps,
        "wall_s": time.perf_counter() - t0,
        "final_loss": float(np.mean(tail)) if tail else None,
        "losses": losses,
        "lr": float(lr),
        "batch_size": bs,
        "seed": int(seed),
        "n_parameters": int(sum(p.numel() for p in params)),
    }


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` in eval mode (mode restored afterwards)."""
    was_training = model.training
    model.eval()
    try:
        correct = 0
        for i in range(0, x.shape[0], batch_size):
            correct += int((model(x[i : i + batch_size]).argmax(-1) == y[i : i + batch_size]).sum())
    finally:
        model.train(was_training)
    return correct / max(1, x.shape[0])


# ------------------------------------------------------------------------------------------------- Zoo


class Zoo(abc.ABC):
    """A named collection recipe: architecture, tasks, data, training, evaluation and ``build``.

    Instances are stateless apart from per-process caches (datasets, tokenised text, the MiniLM base), so
    the registered singletons can be shared. Every model's ``forward`` takes one input tensor as returned by
    :meth:`task_data` and returns logits of shape ``(batch, n_classes(task))``.
    """

    name: ClassVar[str]
    kind: ClassVar[ZooKind]
    #: Task of the pretrained base checkpoint (fine-tune zoos); accepted by task-taking methods.
    base_task: ClassVar[str | None] = None
    #: Torch threads while training/evaluating (``WEIGHTSPACE_ZOO_THREADS`` overrides). The small models are
    #: dominated by per-op overhead, where a second thread only adds synchronisation.
    threads: ClassVar[int] = 1
    #: Prefix of the task-head tensors (``head.weight``/``head.bias``; ``classifier.`` for minilm-lora).
    #: Heads are sized per task, so they are per-model ("private") tensors, never part of a shared subspace.
    head_prefix: ClassVar[str] = "head."

    # ---- definitions -----------------------------------------------------------------------------------

    @abc.abstractmethod
    def default_n(self, quick: bool) -> int:
        """Number of models ``build`` makes when ``n`` is not given."""

    @abc.abstractmethod
    def tasks(self) -> list[str]:
        """Task names this zoo builds models for, in build order (model ``i`` gets ``tasks()[i % len]``)."""

    @abc.abstractmethod
    def task_spec(self, task: str) -> dict[str, Any]:
        """JSON definition of ``task`` (what ``zoo.json`` records under ``tasks``); has ``n_classes``."""

    def num_classes(self, task: str) -> int:
        """Number of output classes (head rows) of ``task``."""
        return int(self.task_spec(task)["n_classes"])

    def check_task(self, task: str) -> str:
        valid = [*self.tasks(), *([self.base_task] if self.base_task else [])]
        if not isinstance(task, str) or task not in valid:
            raise ParameterError(f"Unknown task {task!r} for zoo '{self.name}'. Valid tasks: {', '.join(valid)}.")
        return task

    @abc.abstractmethod
    def make_model(self, task: str, *, seed: int | None = None) -> nn.Module:
        """A freshly initialised model for ``task`` (head sized for it); ``seed`` fixes the initialisation."""

    @abc.abstractmethod
    def task_data(self, task: str, split: Literal["train", "test"]) -> tuple[Tensor, Tensor]:
        """``(inputs, labels)`` of ``task``; labels are int64 in ``[0, n_classes)``. Deterministic."""

    # ---- loading / evaluation --------------------------------------------------------------------------

    def _resolve_state(self, source: ModelSource, task: str | None) -> tuple[dict[str, Tensor], str, str | None]:
        """Turn a path or mapping into (state dict, task, path-for-messages)."""
        if isinstance(source, (str, os.PathLike)):
            tensors, meta = read_checkpoint(source)
            where: str | None = os.fspath(source)
            if task is None:
                task = meta.get(META_TASK)
                if task is None:
                    raise InputError(
                        f"checkpoint has no '{META_TASK}' metadata; pass task= explicitly", path=source
                    )
        elif isinstance(source, Mapping):
            tensors = dict(source)
            where = None
            if task is None:
                raise ParameterError("task= is required when the source is a state dict")
            for k, v in tensors.items():
                if not torch.is_tensor(v):
                    raise ParameterError(f"state dict value for '{k}' is not a tensor ({type(v).__name__})")
        else:
            raise ParameterError(
                f"source must be a checkpoint path, a state dict or a torch module, got {type(source).__name__}"
            )
        return tensors, self.check_task(task), where

    def load_model(self, source: ModelSource, task: str | None = None) -> nn.Module:
        """Instantiate the architecture for ``task`` and load weights into it.

        Parameters
        ----------
        source : path or Mapping[str, Tensor]
            A checkpoint file written by :meth:`build`, or a state dict with the module's keys (e.g. a
            reconstruction, or a merged backbone plus a task's ``head.*`` tensors).
        task : str, optional
            Defaults to the checkpoint's ``weightspace.task`` metadata; required for a state dict.

        Returns
        -------
        torch.nn.Module
            The model in eval mode.
        """
        return self._load(source, task)[0]

    def _load(self, source: ModelSource, task: str | None) -> tuple[nn.Module, str]:
        """:meth:`load_model` that also returns the resolved task."""
        state, task, where = self._resolve_state(source, task)
        model = self.make_model(task, seed=0)
        load_state_strict(model, state, path=where)
        return model.eval(), task

    def accuracy(self, source: ModelSource, task: str | None = None) -> float:
        """Held-out test accuracy in ``[0, 1]`` of a checkpoint, state dict or module; deterministic.

        Parameters
        ----------
        source : path, Mapping[str, Tensor] or torch.nn.Module
            As for :meth:`load_model`; a module is evaluated as is (``task`` is then required).
        task : str, optional
            Task whose test split is used; defaults to the checkpoint's metadata.
        """
        import torch.nn as nn

        if isinstance(source, nn.Module):
            if task is None:
                raise ParameterError("task= is required when the source is a module")
            model = source
            self.check_task(task)
        else:
            model, task = self._load(source, task)
        x, y = self.task_data(task, "test")
        with pinned_threads(train_threads(self.threads)):
            return evaluate(model, x, y)

    # ---- training -------------------------------------------------------------------------------------

    def default_batch_size(self) -> int:
        return 64

    def train(
        self,
        model: nn.Module,
        task: str,
        *,
        steps: int,
        lr: float,
        seed: int,
        batch_size: int | None = None,
        parameters: Sequence[Tensor] | None = None,
        progress: ProgressFn | None = None,
        data: tuple[Tensor, Tensor] | None = None,
        weight_decay: float = 0.0,
        schedule: Literal["cosine", "constant"] = "cosine",
    ) -> dict[str, Any]:
        """Train ``model`` on ``task``'s training split with the loop every zoo build uses.

        Parameters
        ----------
        model : torch.nn.Module
            Takes the inputs of :meth:`task_data` and returns logits ``(batch, n_classes)``.
        task : str
            Task whose training split (or ``data``) is used.
        steps : int
            Optimiser steps (0 is allowed and trains nothing).
        lr : float
            Peak learning rate of AdamW.
        seed : int
            Seeds the minibatch order; the same seed gives the same batches for any model.
        batch_size : int, optional
            Zoo default when omitted (64; 16 for ``minilm-lora``).
        parameters : sequence of Tensor, optional
            What to optimise; default all parameters of ``model`` that require grad. Other module
            parameters are frozen for the duration (so coefficient-only or LoRA-only training skips their
            gradients), and may also be tensors outside the module that its forward reads.
        progress : callable, optional
            ``progress(step, steps, message)``, called about 20 times.
        data : (Tensor, Tensor), optional
            Train on these ``(inputs, labels)`` instead of the task's training split (few-shot subsets ...).
        weight_decay : float
            AdamW weight decay (default 0).
        schedule : {"cosine", "constant"}
            Learning-rate schedule over ``steps``.

        Returns
        -------
        dict
            ``steps``, ``wall_s``, ``final_loss`` (mean of the last 10 steps), ``losses``, ``lr``,
            ``batch_size``, ``seed``, ``n_parameters``.
        """
        self.check_task(task)
        x, y = self.task_data(task, "train") if data is None else data
        with pinned_threads(train_threads(self.threads)):
            return fit(
                model,
                x,
                y,
                steps=steps,
                lr=lr,
                seed=seed,
                batch_size=self.default_batch_size() if batch_size is None else batch_size,
                parameters=parameters,
                progress=progress,
                weight_decay=weight_decay,
                schedule=schedule,
            )

    # ---- build ----------------------------------------------------------------------------------------

    def build(
        self,
        out_dir: str | os.PathLike[str],
        *,
        n: int | None = None,
        seed: int = 0,
        quick: bool = False,
        force: bool = False,
        progress: ProgressFn | None = None,
    ) -> ZooInfo:
        """Train (or reuse) the zoo in ``out_dir`` and return its :class:`ZooInfo`.

        Parameters
        ----------
        out_dir : str or os.PathLike
            Zoo directory. It must be absent, empty, or an earlier zoo (which is replaced); the new zoo is
            built in a temporary sibling and swapped in once complete.
        n : int, optional
            Number of models; :meth:`default_n` when omitted.
        seed : int
            Zoo seed (≥ 0); model ``i`` uses a seed derived from ``(seed, i)``.
        quick : bool
            Fewer models and training steps (demo ``--quick`` and tests).
        force : bool
            Rebuild even if ``out_dir`` already holds this zoo with the same ``(n, seed, quick)``.
        progress : callable, optional
            ``progress(done, total, message)`` after the base (``done=0``) and after each model.
        """
        n = self.default_n(bool(quick)) if n is None else check_int("n", n, minimum=1)
        seed = check_int("seed", seed, minimum=0)
        quick = bool(quick)
        out = Path(out_dir).absolute()
        if out.exists() and not out.is_dir():
            raise InputError("zoo output path exists and is not a directory", path=out)
        if out.is_dir() and not force:
            with contextlib.suppress(InputError):
                info = load_zoo_info(out)
                if (info.zoo, info.n, info.seed, info.quick) == (self.name, n, seed, quick):
                    if progress is not None:
                        progress(n, n, f"reused existing zoo in {out}")
                    return info
        if out.is_dir() and any(out.iterdir()) and not (out / ZOO_JSON).exists():
            raise InputError(
                "refusing to replace a non-empty directory that is not a zoo (no zoo.json); choose another "
                "directory or empty it",
                path=out,
            )
        t0 = time.perf_counter()
        with atomic_dir(out) as tmp, pinned_threads(train_threads(self.threads)):
            doc = self._build_into(Path(tmp), n=n, seed=seed, quick=quick, progress=progress)
            doc = {
                "zoo": self.name,
                "version": ZOO_FORMAT_VERSION,
                "seed": seed,
                "n": n,
                "quick": quick,
                "kind": self.kind,
                "head_prefix": self.head_prefix,
                **doc,
            }
            doc["build_wall_s"] = round(time.perf_counter() - t0, 3)
            atomic_write_text(Path(tmp) / ZOO_JSON, json.dumps(doc, indent=1) + "\n")
        return load_zoo_info(out)

    @abc.abstractmethod
    def _build_into(self, tmp: Path, *, n: int, seed: int, quick: bool, progress: ProgressFn | None) -> dict:
        """Write base/models into ``tmp``; return the zoo.json fields ``base``, ``models``, ``tasks`` ..."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} '{self.name}' ({self.kind})>"
