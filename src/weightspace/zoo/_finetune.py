"""Pretrain-then-fine-tune zoos: one base trained on the original 10-class task, fully fine-tuned per task.

A task is an input transform plus a label map (original class → new label, ``-1`` drops the example):

* ``perm-K`` — a fixed permutation of the 10 labels;
* ``pair-A-B`` — binary A (label 0) vs B (label 1), other classes dropped;
* ``sub-ABC`` — a class subset (3–5 classes), the others dropped;
* ``parity`` / ``lt5`` / ``lt3`` / ``lt7`` / ``mod3`` / ``mod4`` — coarser relabellings of all 10 classes;
* transforms (``reverse``, ``negate``, ``roll-15``, ``noise-0.75``, ``hflip`` ...) — same labels, transformed
  inputs, with parametrised shifts, noise levels and smoothing widths;
* ``<transform>-<label map>`` — both at once.

A zoo of N models uses the first N tasks of :meth:`FinetuneZoo.tasks` (the original 20 first, then the families
in turn; beyond the table the tasks repeat with new seeds). Fine-tuning starts from the base backbone with a
fresh head (seeded by the model's seed; the usual "new task, new classifier" protocol, and it lets
label-permutation tasks reach the base's accuracy in a few hundred steps, where starting from the unpermuted
base head does not). ``head.weight``/``head.bias`` are sized by the task (2–10 rows) and are per-model
("private") tensors; all other tensors have the same names and shapes in every model and in
``base.safetensors``. All fine-tunes of a build train together (:func:`~weightspace.zoo._batched.fit_batched`).
"""

from __future__ import annotations

import abc
import time
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn

from weightspace.zoo._base import Zoo, ZooKind
from weightspace.zoo._batched import CHUNK, Job, fit_batched
from weightspace.zoo._checkpoint import save_checkpoint
from weightspace.zoo._train import ProgressFn, check_split, derive_seed, evaluate, seeded

__all__ = ["FinetuneZoo", "extended_tasks", "label_tasks"]

_BASE_KEY = 0x7FFFFFFF  # derive_seed key of the base model; model indices never reach it
_DATA_CACHE_ENTRIES = 256  # (task, split) arrays kept per process; paper-scale zoos use more tasks than this


def label_tasks(perms: int, pairs: list[tuple[int, int]]) -> dict[str, dict[str, Any]]:
    """Label-map task definitions shared by the fine-tune zoos (permutations, pairs, parity, lt5)."""
    out: dict[str, dict[str, Any]] = {}
    for k in range(perms):
        out[f"perm-{k}"] = _perm(k)
    for a, b in pairs:
        out[f"pair-{a}-{b}"] = _subset((a, b), kind="pair")
    out["parity"] = _relabel([c % 2 for c in range(10)])
    out["lt5"] = _relabel([int(c < 5) for c in range(10)])
    return out


def _perm(k: int) -> dict[str, Any]:
    perm = np.random.default_rng(1000 + k).permutation(10).tolist()
    return {"kind": "permutation", "labels": perm, "n_classes": 10, "transform": None}


def _subset(classes: tuple[int, ...], kind: str = "subset") -> dict[str, Any]:
    labels = [-1] * 10
    for i, c in enumerate(classes):
        labels[c] = i
    spec: dict[str, Any] = {"kind": kind, "classes": list(classes), "labels": labels, "n_classes": len(classes)}
    return {**spec, "transform": None}


def _relabel(labels: list[int]) -> dict[str, Any]:
    return {
        "kind": "binary" if max(labels) == 1 else "relabel",
        "labels": labels,
        "n_classes": max(labels) + 1,
        "transform": None,
    }


#: Extra label maps beyond :func:`label_tasks` (name → definition), used by :func:`extended_tasks`.
_EXTRA_LABELS: dict[str, dict[str, Any]] = {
    **{
        f"sub-{''.join(map(str, c))}": _subset(c)
        for c in (
            (0, 1, 2),
            (3, 4, 5),
            (6, 7, 8),
            (0, 3, 6, 9),
            (1, 3, 5, 7),
            (2, 4, 6, 8),
            (0, 1, 2, 3, 4),
            (5, 6, 7, 8, 9),
            (0, 2, 4, 6, 8),
            (1, 3, 5, 7, 9),
        )
    },
    "mod3": _relabel([c % 3 for c in range(10)]),
    "mod4": _relabel([c % 4 for c in range(10)]),
    "lt3": _relabel([int(c < 3) for c in range(10)]),
    "lt7": _relabel([int(c < 7) for c in range(10)]),
}


def extended_tasks(
    first: dict[str, dict[str, Any]], transforms: list[str], combos: list[tuple[str, str]]
) -> dict[str, dict[str, Any]]:
    """The full task table of a fine-tune zoo, in build order.

    ``first`` (the zoo's original tasks, kept first and in their order) is followed by five families taken in
    turn, so the first ``6 k`` models of a zoo cover every family: more label permutations, the remaining class
    pairs, class subsets and coarser relabellings, more input transforms (parametrised: shifts, noise levels,
    smoothing widths ...), and transform × label-map combinations (``"<transform>-<label task>"``).

    Parameters
    ----------
    first : dict
        Task name → definition (``labels``, ``n_classes``, ``transform``, ``kind``), in order.
    transforms : list of str
        Transform names of the zoo not already in ``first``.
    combos : list of (str, str)
        ``(transform, label task)`` pairs.
    """
    used = set(first)
    labels = {**label_tasks(25, [(a, b) for a in range(10) for b in range(a + 1, 10)]), **_EXTRA_LABELS}
    ident = list(range(10))
    families: list[list[tuple[str, dict[str, Any]]]] = [
        [(f"perm-{k}", labels[f"perm-{k}"]) for k in range(25)],
        [(n, s) for n, s in labels.items() if n.startswith("pair-")],
        [(n, s) for n, s in _EXTRA_LABELS.items()],
        [(t, {"kind": "transform", "labels": ident, "n_classes": 10, "transform": t}) for t in transforms],
        [
            (f"{t}-{lab}", {**labels[lab], "kind": f"transform+{labels[lab]['kind']}", "transform": t})
            for t, lab in combos
        ],
    ]
    out = dict(first)
    queues = [[(n, s) for n, s in fam if n not in used] for fam in families]
    while any(queues):
        for q in queues:
            if q:
                name, spec = q.pop(0)
                out.setdefault(name, spec)
    return out


def task_rng(task: str, split: str) -> np.random.Generator:
    """Fixed generator for random transforms (noise), distinct per task and split, independent of zoo seed."""
    return np.random.default_rng(zlib.crc32(f"{task}/{split}".encode()))


class FinetuneZoo(Zoo):
    """Shared build/evaluation logic of ``mnist1d-cnn`` and ``digits-vit``."""

    kind: ClassVar[ZooKind] = "finetune"
    base_task: ClassVar[str | None] = "pretrain"
    #: The zoo's original tasks, first in the build order (their order interleaves kinds so that a small zoo
    #: covers all of them); :meth:`tasks` continues with the families of :func:`extended_tasks`.
    task_order: ClassVar[tuple[str, ...]] = ()
    #: Default number of models: quick (CI), and the default that tests k = 16 (N ≥ 6 k).
    n_quick: ClassVar[int] = 24
    n_default: ClassVar[int] = 96

    def __init__(self) -> None:
        self._data_cache: OrderedDict[tuple[str, str], tuple[Tensor, Tensor]] = OrderedDict()
        self._table: dict[str, dict[str, Any]] | None = None

    # ---- subclass hooks ---------------------------------------------------------------------------------

    @abc.abstractmethod
    def _raw(self, split: Literal["train", "test"]) -> tuple[np.ndarray, np.ndarray]:
        """Original inputs (float32) and 10-class labels of a split."""

    @abc.abstractmethod
    def _transform(self, name: str, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Apply the named input transform (``a+b`` applies ``a`` then ``b``)."""

    @abc.abstractmethod
    def _build_table(self) -> dict[str, dict[str, Any]]:
        """Task name → definition (``labels``, ``n_classes``, ``transform``, ``kind`` ...), in build order."""

    @abc.abstractmethod
    def _new_model(self, n_classes: int) -> nn.Module:
        """Freshly initialised architecture with a head of ``n_classes`` outputs."""

    @abc.abstractmethod
    def settings(self, quick: bool) -> dict[str, dict[str, Any]]:
        """``{"pretrain": {steps, lr, batch_size}, "finetune": {...}}`` used by ``build``."""

    def _task_table(self) -> dict[str, dict[str, Any]]:
        if self._table is None:
            self._table = self._build_table()
        return self._table

    # ---- Zoo API ----------------------------------------------------------------------------------------

    def tasks(self) -> list[str]:
        return list(self._task_table())

    def default_n(self, quick: bool) -> int:
        return self.n_quick if quick else self.n_default

    def task_spec(self, task: str) -> dict[str, Any]:
        self.check_task(task)
        if task == self.base_task:
            spec = {"kind": "pretrain", "labels": list(range(10)), "n_classes": 10, "transform": None}
        else:
            spec = dict(self._task_table()[task])
        spec["head_init"] = "random"
        return spec

    def make_model(self, task: str, *, seed: int | None = None) -> nn.Module:
        self.check_task(task)
        with seeded(seed):
            return self._new_model(self.num_classes(task))

    def task_data(self, task: str, split: Literal["train", "test"]) -> tuple[Tensor, Tensor]:
        """Transformed inputs (float32; ``(N, 40)`` for mnist1d-cnn, ``(N, 8, 8)`` for digits-vit) and
        relabelled int64 labels ``(N,)``; examples a task drops (pairs) are removed. Cached, returned as copies.
        """
        self.check_task(task)
        check_split(split)
        key = (task, split)
        if key in self._data_cache:
            self._data_cache.move_to_end(key)
        else:
            spec = self.task_spec(task)
            x, y = self._raw(split)
            if spec["transform"] is not None:
                x = self._transform(spec["transform"], np.array(x), task_rng(task, split))
            labels = np.asarray(spec["labels"], dtype=np.int64)[y]
            keep = labels >= 0
            self._data_cache[key] = (
                torch.tensor(np.ascontiguousarray(x[keep]), dtype=torch.float32),
                torch.tensor(labels[keep]),
            )
            while len(self._data_cache) > _DATA_CACHE_ENTRIES:
                self._data_cache.popitem(last=False)
        x, y = self._data_cache[key]
        return x.clone(), y.clone()

    # ---- build ------------------------------------------------------------------------------------------

    def init_from_base(self, task: str, base_state: dict[str, Tensor], *, seed: int) -> nn.Module:
        """Model for ``task`` initialised from the base: every tensor copied except the (fresh, seeded) head."""
        model = self.make_model(task, seed=seed)
        copy = {k: v for k, v in base_state.items() if not k.startswith(self.head_prefix)}
        model.load_state_dict(copy, strict=False)
        return model

    def _build_into(self, tmp: Path, *, n: int, seed: int, quick: bool, progress: ProgressFn | None) -> dict:
        cfg = self.settings(quick)
        t0 = time.perf_counter()
        base_seed = derive_seed(seed, _BASE_KEY)
        base = self.make_model(self.base_task, seed=base_seed)  # type: ignore[arg-type]
        base_stats = self.train(base, self.base_task, seed=base_seed, **cfg["pretrain"])  # type: ignore[arg-type]
        save_checkpoint(tmp / "base.safetensors", base.state_dict(), zoo=self.name, task=self.base_task or "")
        base_acc = evaluate(base, *self.task_data(self.base_task, "test"))  # type: ignore[arg-type]
        if progress is not None:
            progress(0, n, f"base: test acc {base_acc:.3f}")
        base_state = {k: v.detach().clone() for k, v in base.state_dict().items()}
        timing: dict[str, Any] = {"base_s": time.perf_counter() - t0}

        order = self.tasks()
        tasks = [order[i % len(order)] for i in range(n)]
        distinct = list(dict.fromkeys(tasks))
        seeds = [derive_seed(seed, i) for i in range(n)]
        inits = [self.init_from_base(t, base_state, seed=s) for t, s in zip(tasks, seeds, strict=True)]
        jobs = [
            Job(init=m.state_dict(), data=distinct.index(t), n_classes=self.num_classes(t), seed=s)
            for m, t, s in zip(inits, tasks, seeds, strict=True)
        ]
        t1 = time.perf_counter()
        states, stats = fit_batched(
            self._new_model,
            jobs,
            [self.task_data(t, "train") for t in distinct],
            head_prefix=self.head_prefix,
            progress=None if progress is None else (lambda d, t, m: progress(0, n, m)),
            **cfg["finetune"],
        )
        timing["finetune_s"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        models = []
        for i, (task, s, init, state, st) in enumerate(zip(tasks, seeds, inits, states, stats, strict=True)):
            name = f"{i:03d}_{task}"
            rel = f"models/{name}.safetensors"
            model = self.make_model(task, seed=0)
            model.load_state_dict(state)
            save_checkpoint(tmp / rel, model.state_dict(), zoo=self.name, task=task)
            x_tr, y_tr = self.task_data(task, "train")
            x_te, y_te = self.task_data(task, "test")
            models.append(
                {
                    "name": name,
                    "path": rel,
                    "task": task,
                    "seed": s,
                    "data": {"split": "train", "n_train": int(x_tr.shape[0]), "n_test": int(x_te.shape[0])},
                    "train_accuracy": evaluate(model, x_tr, y_tr),
                    "test_accuracy": evaluate(model, x_te, y_te),
                    "init": "base backbone, random head",
                    "test_accuracy_at_init": evaluate(init, x_te, y_te),
                    "train": {k: st[k] for k in ("steps", "lr", "batch_size", "final_loss")},
                }
            )
            if progress is not None:
                progress(i + 1, n, f"{name}: test acc {models[-1]['test_accuracy']:.3f}")
        timing["evaluate_s"] = time.perf_counter() - t2
        timing["models_per_vectorised_step"] = CHUNK
        return {
            "base": "base.safetensors",
            "base_task": self.base_task,
            "base_test_accuracy": base_acc,
            "base_train": {k: base_stats[k] for k in ("steps", "lr", "batch_size", "final_loss")},
            "models": models,
            "tasks": {t: self.task_spec(t) for t in [self.base_task, *distinct]},
            "settings": cfg,
            "training": "fine-tunes trained together: one vectorised AdamW step (torch.func.vmap) per "
            f"optimiser step over up to {CHUNK} models, each with its own data, batch order and head",
            "timing": timing,
        }
