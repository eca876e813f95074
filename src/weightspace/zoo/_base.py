"""The :class:`Zoo` base class (architecture, tasks, data, training, evaluation, ``build``) and ``require``.

A zoo directory is built inside a temporary sibling and swapped into place only once it is complete
(:func:`weightspace._atomic.atomic_dir`), with ``zoo.json`` written last, so an interrupted build never leaves
a directory that :func:`~weightspace.zoo.load_zoo_info` accepts. The manifest lives in :mod:`._manifest`,
checkpoint I/O in :mod:`._checkpoint`, and the training loop, seeding and thread pinning in :mod:`._train`.
"""

from __future__ import annotations

import abc
import contextlib
import importlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from weightspace._atomic import atomic_dir, atomic_write_text
from weightspace.errors import DependencyError, InputError, ParameterError
from weightspace.zoo._checkpoint import META_TASK, load_state_strict, read_checkpoint
from weightspace.zoo._manifest import TIMING_JSON, ZOO_FORMAT_VERSION, ZOO_JSON, ZooInfo, build_key, load_zoo_info
from weightspace.zoo._train import ProgressFn, check_int, evaluate, fit, pinned_threads, train_threads

__all__ = ["ModelSource", "Zoo", "ZooKind", "require"]

ZooKind = Literal["scratch", "init", "finetune", "lora"]
#: What the evaluators accept: a checkpoint path (file or PEFT directory), a state dict, or a module.
ModelSource = str | os.PathLike[str] | Mapping[str, Tensor] | nn.Module


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
    #: Bumped whenever the build code changes what it writes (part of every build key).
    build_version: ClassVar[int] = 2

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
            Rebuild even if ``out_dir`` already holds this zoo with the same :meth:`build_params` (compared by
            their hash, ``build_key`` in ``zoo.json``).
        progress : callable, optional
            ``progress(done, total, message)`` after the base (``done=0``) and after each model.
        """
        n = self.default_n(bool(quick)) if n is None else check_int("n", n, minimum=1)
        seed = check_int("seed", seed, minimum=0)
        quick = bool(quick)
        params = self.build_params(n=n, seed=seed, quick=quick)
        key = build_key(params)
        out = Path(out_dir).absolute()
        if out.exists() and not out.is_dir():
            raise InputError("zoo output path exists and is not a directory", path=out)
        if out.is_dir() and not force:
            with contextlib.suppress(InputError):
                info = load_zoo_info(out)
                if info.meta.get("build_key") == key:
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
            timing = {"build_wall_s": round(time.perf_counter() - t0, 3), **doc.pop("timing", {})}
            doc = {
                "zoo": self.name,
                "version": ZOO_FORMAT_VERSION,
                "seed": seed,
                "n": n,
                "quick": quick,
                "kind": self.kind,
                "head_prefix": self.head_prefix,
                "build_key": key,
                "build_params": params,
                **doc,
            }
            # Wall times vary from run to run, so they live beside the manifest: zoo.json and every checkpoint
            # are byte-identical across builds with the same parameters.
            atomic_write_text(Path(tmp) / TIMING_JSON, json.dumps(timing, indent=1) + "\n")
            atomic_write_text(Path(tmp) / ZOO_JSON, json.dumps(doc, indent=1) + "\n")
        return load_zoo_info(out)

    def build_params(self, *, n: int, seed: int, quick: bool) -> dict[str, Any]:
        """Everything a build's bytes depend on (hashed into ``build_key``; a change rebuilds).

        The zoo, its format and build-code versions, ``n``, ``seed``, ``quick``, the training settings, the
        tasks of the ``n`` models with their definitions, and the pinned thread count (CPU float reductions
        depend on how work is split).
        """
        order = self.tasks()
        tasks = list(dict.fromkeys(order[i % len(order)] for i in range(n)))
        settings = getattr(self, "settings", None)
        return {
            "zoo": self.name,
            "format": ZOO_FORMAT_VERSION,
            "build_code": self.build_version,
            "n": n,
            "seed": seed,
            "quick": quick,
            "settings": settings(quick) if callable(settings) else None,
            "tasks": {t: self.task_spec(t) for t in tasks},
            "threads": train_threads(self.threads),
        }

    @abc.abstractmethod
    def _build_into(self, tmp: Path, *, n: int, seed: int, quick: bool, progress: ProgressFn | None) -> dict:
        """Write base/models into ``tmp``; return the zoo.json fields ``base``, ``models``, ``tasks`` ..."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} '{self.name}' ({self.kind})>"
