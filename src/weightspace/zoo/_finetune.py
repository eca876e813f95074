"""Pretrain-then-fine-tune zoos: one base trained on the original 10-class task, fully fine-tuned per task.

A task is an input transform plus a label map (original class → new label, ``-1`` drops the example):

* ``perm-K`` — a fixed permutation of the 10 labels;
* ``pair-A-B`` — binary A (label 0) vs B (label 1), other classes dropped;
* ``parity`` / ``lt5`` — binary relabellings of all 10 classes;
* transforms (``reverse``, ``negate``, ``hflip`` ...) — same labels, transformed inputs.

Fine-tuning starts from the base backbone with a fresh head (seeded by the model's seed; the usual "new task,
new classifier" protocol, and it lets label-permutation tasks reach the base's accuracy in a few hundred
steps, where starting from the unpermuted base head does not). ``head.weight``/``head.bias`` are sized
by the task (10 or 2 rows) and are per-model ("private") tensors; all other tensors have the same names and
shapes in every model and in ``base.safetensors``.
"""

from __future__ import annotations

import abc
import zlib
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn

from weightspace.zoo._base import Zoo, ZooKind
from weightspace.zoo._checkpoint import save_checkpoint
from weightspace.zoo._train import ProgressFn, check_split, derive_seed, evaluate, seeded

__all__ = ["FinetuneZoo", "label_tasks"]

_BASE_KEY = 0x7FFFFFFF  # derive_seed key of the base model; model indices never reach it


def label_tasks(perms: int, pairs: list[tuple[int, int]]) -> dict[str, dict[str, Any]]:
    """Label-map task definitions shared by the fine-tune zoos (permutations, pairs, parity, lt5)."""
    out: dict[str, dict[str, Any]] = {}
    for k in range(perms):
        perm = np.random.default_rng(1000 + k).permutation(10).tolist()
        out[f"perm-{k}"] = {"kind": "permutation", "labels": perm, "n_classes": 10, "transform": None}
    for a, b in pairs:
        labels = [-1] * 10
        labels[a], labels[b] = 0, 1
        out[f"pair-{a}-{b}"] = {
            "kind": "pair",
            "classes": [a, b],
            "labels": labels,
            "n_classes": 2,
            "transform": None,
        }
    out["parity"] = {"kind": "binary", "labels": [c % 2 for c in range(10)], "n_classes": 2, "transform": None}
    out["lt5"] = {"kind": "binary", "labels": [int(c < 5) for c in range(10)], "n_classes": 2, "transform": None}
    return out


def task_rng(task: str, split: str) -> np.random.Generator:
    """Fixed generator for random transforms (noise), distinct per task and split, independent of zoo seed."""
    return np.random.default_rng(zlib.crc32(f"{task}/{split}".encode()))


class FinetuneZoo(Zoo):
    """Shared build/evaluation logic of ``mnist1d-cnn`` and ``digits-vit``."""

    kind: ClassVar[ZooKind] = "finetune"
    base_task: ClassVar[str | None] = "pretrain"
    #: Build order of the tasks, interleaving kinds so that a quick zoo (the first few) covers all of them.
    task_order: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self._data_cache: dict[tuple[str, str], tuple[Tensor, Tensor]] = {}

    # ---- subclass hooks ---------------------------------------------------------------------------------

    @abc.abstractmethod
    def _raw(self, split: Literal["train", "test"]) -> tuple[np.ndarray, np.ndarray]:
        """Original inputs (float32) and 10-class labels of a split."""

    @abc.abstractmethod
    def _transform(self, name: str, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Apply the named input transform."""

    @abc.abstractmethod
    def _task_table(self) -> dict[str, dict[str, Any]]:
        """Task name → definition (``labels``, ``n_classes``, ``transform``, ``kind`` ...)."""

    @abc.abstractmethod
    def _new_model(self, n_classes: int) -> nn.Module:
        """Freshly initialised architecture with a head of ``n_classes`` outputs."""

    @abc.abstractmethod
    def settings(self, quick: bool) -> dict[str, dict[str, Any]]:
        """``{"pretrain": {steps, lr, batch_size}, "finetune": {...}}`` used by ``build``."""

    # ---- Zoo API ----------------------------------------------------------------------------------------

    def tasks(self) -> list[str]:
        return list(self.task_order)

    def default_n(self, quick: bool) -> int:
        return 8 if quick else len(self.task_order)

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
        if key not in self._data_cache:
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
        base_seed = derive_seed(seed, _BASE_KEY)
        base = self.make_model(self.base_task, seed=base_seed)  # type: ignore[arg-type]
        base_stats = self.train(base, self.base_task, seed=base_seed, **cfg["pretrain"])  # type: ignore[arg-type]
        save_checkpoint(tmp / "base.safetensors", base.state_dict(), zoo=self.name, task=self.base_task or "")
        base_acc = evaluate(base, *self.task_data(self.base_task, "test"))  # type: ignore[arg-type]
        if progress is not None:
            progress(0, n, f"base: test acc {base_acc:.3f}")
        base_state = {k: v.detach().clone() for k, v in base.state_dict().items()}

        order = self.tasks()
        models = []
        for i in range(n):
            task = order[i % len(order)]
            s = derive_seed(seed, i)
            model = self.init_from_base(task, base_state, seed=s)
            before = evaluate(model, *self.task_data(task, "test"))
            stats = self.train(model, task, seed=s, **cfg["finetune"])
            name = f"{i:03d}_{task}"
            rel = f"models/{name}.safetensors"
            save_checkpoint(tmp / rel, model.state_dict(), zoo=self.name, task=task)
            x_tr, _ = self.task_data(task, "train")
            x_te, _ = self.task_data(task, "test")
            rec = {
                "name": name,
                "path": rel,
                "task": task,
                "seed": s,
                "data": {"split": "train", "n_train": int(x_tr.shape[0]), "n_test": int(x_te.shape[0])},
                "train_accuracy": evaluate(model, *self.task_data(task, "train")),
                "test_accuracy": evaluate(model, *self.task_data(task, "test")),
                "init": "base backbone, random head",
                "test_accuracy_at_init": before,
                "train": {k: stats[k] for k in ("steps", "lr", "batch_size", "final_loss")},
                "wall_s": round(stats["wall_s"], 4),
            }
            models.append(rec)
            if progress is not None:
                progress(i + 1, n, f"{name}: test acc {rec['test_accuracy']:.3f}")
        used = [self.base_task, *dict.fromkeys(order[i % len(order)] for i in range(n))]
        return {
            "base": "base.safetensors",
            "base_task": self.base_task,
            "base_test_accuracy": base_acc,
            "base_train": {k: base_stats[k] for k in ("steps", "lr", "batch_size", "final_loss", "wall_s")},
            "models": models,
            "tasks": {t: self.task_spec(t) for t in used},
            "settings": cfg,
        }
