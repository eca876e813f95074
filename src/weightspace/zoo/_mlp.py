"""``digits-mlp`` (independently trained MLPs) and ``digits-mlp-init`` (the same MLPs, untrained)."""

from __future__ import annotations

import functools
import hashlib
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn

from weightspace.zoo import _data
from weightspace.zoo._base import Zoo, ZooKind
from weightspace.zoo._batched import CHUNK, Job, fit_batched
from weightspace.zoo._checkpoint import save_checkpoint
from weightspace.zoo._train import ProgressFn, check_split, derive_seed, evaluate, seeded

__all__ = ["DigitsMLP", "DigitsMLPInitZoo", "DigitsMLPZoo"]


class DigitsMLP(nn.Module):
    """``64 → hidden → hidden → n_classes`` ReLU MLP.

    State-dict keys, in forward order: ``fc1.{weight,bias}`` (hidden×64), ``fc2.{weight,bias}``
    (hidden×hidden), ``head.{weight,bias}`` (n_classes×hidden). Hidden units of ``fc1``/``fc2`` are
    permutable: permuting rows of ``fc1`` and columns of ``fc2`` (and so on) leaves the function unchanged.

    Parameters
    ----------
    hidden : int
        Width of both hidden layers.
    n_classes : int
        Output size.
    """

    def __init__(self, hidden: int = 64, n_classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(batch, n_classes)`` of inputs ``(batch, 64)`` (or ``(batch, 8, 8)``) in ``[0, 1]``."""
        x = x.reshape(x.shape[0], 64)
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


@functools.lru_cache(maxsize=2)
def _digits_tensors(split: str) -> tuple[Tensor, Tensor]:
    # Converted once per process: evaluators call task_data for every model they score.
    x_tr, y_tr, x_te, y_te = _data.digits()
    x, y = (x_tr, y_tr) if split == "train" else (x_te, y_te)
    return torch.tensor(x), torch.tensor(y)


class _DigitsMLPBase(Zoo):
    hidden: ClassVar[int] = 64
    task_name: ClassVar[str] = "digits"

    def tasks(self) -> list[str]:
        return [self.task_name]

    def task_spec(self, task: str) -> dict[str, Any]:
        self.check_task(task)
        return {
            "kind": "original",
            "n_classes": 10,
            "dataset": "sklearn-digits",
            "split": "fixed stratified 70/30 (1258 train / 539 test)",
            "inputs": "pixels / 16, shape (N, 64)",
        }

    def make_model(self, task: str, *, seed: int | None = None) -> nn.Module:
        self.check_task(task)
        with seeded(seed):
            return DigitsMLP(self.hidden, 10)

    def task_data(self, task: str, split: Literal["train", "test"]) -> tuple[Tensor, Tensor]:
        """Digits inputs ``(N, 64)`` float32 in ``[0, 1]`` and labels ``(N,)`` int64 (train 1258, test 539)."""
        self.check_task(task)
        x, y = _digits_tensors(check_split(split))
        return x.clone(), y.clone()


class DigitsMLPZoo(_DigitsMLPBase):
    """MLPs trained from scratch on sklearn digits, each with its own seed and random 70 % training subset.

    Independently trained networks: their hidden units are in arbitrary order, so permutation alignment
    matters when comparing them. All models share the fixed held-out test split (539 images).
    """

    name: ClassVar[str] = "digits-mlp"
    kind: ClassVar[ZooKind] = "scratch"
    subset_fraction: ClassVar[float] = 0.7

    def default_n(self, quick: bool) -> int:
        return 24 if quick else 96

    def settings(self, quick: bool) -> dict[str, Any]:
        """Training settings of ``build``."""
        return {"steps": 150 if quick else 300, "lr": 3e-3, "batch_size": 64}

    def subset_indices(self, model_seed: int) -> np.ndarray:
        """Indices into the training split used by the model with seed ``model_seed`` (sorted)."""
        n_train = _data.digits()[0].shape[0]
        k = round(self.subset_fraction * n_train)
        return np.sort(np.random.default_rng(model_seed).permutation(n_train)[:k])

    def _build_into(self, tmp: Path, *, n: int, seed: int, quick: bool, progress: ProgressFn | None) -> dict:
        cfg = self.settings(quick)
        x_tr, y_tr = self.task_data(self.task_name, "train")
        x_te, y_te = self.task_data(self.task_name, "test")
        seeds = [derive_seed(seed, i) for i in range(n)]
        subsets = [self.subset_indices(s) for s in seeds]
        data = [(x_tr[torch.from_numpy(idx)], y_tr[torch.from_numpy(idx)]) for idx in subsets]
        jobs = [
            Job(init=self.make_model(self.task_name, seed=s).state_dict(), data=i, n_classes=10, seed=s)
            for i, s in enumerate(seeds)
        ]
        t0 = time.perf_counter()
        states, stats = fit_batched(
            lambda c: DigitsMLP(self.hidden, c),
            jobs,
            data,
            progress=None if progress is None else (lambda d, t, m: progress(0, n, m)),
            **cfg,
        )
        train_s = time.perf_counter() - t0
        models = []
        for i, (s, idx, sub, state, st) in enumerate(zip(seeds, subsets, data, states, stats, strict=True)):
            model = self.make_model(self.task_name, seed=0)
            model.load_state_dict(state)
            name = f"{i:03d}_mlp"
            rel = f"models/{name}.safetensors"
            save_checkpoint(tmp / rel, model.state_dict(), zoo=self.name, task=self.task_name)
            models.append(
                {
                    "name": name,
                    "path": rel,
                    "task": self.task_name,
                    "seed": s,
                    "data": {
                        "split": "train",
                        "subset_fraction": self.subset_fraction,
                        "subset_size": len(idx),
                        "subset_rule": "sorted(numpy.random.default_rng(seed).permutation(n_train)[:subset_size])",
                        "subset_sha256": hashlib.sha256(idx.astype("<i8").tobytes()).hexdigest(),
                    },
                    "train_accuracy": evaluate(model, *sub),
                    "test_accuracy": evaluate(model, x_te, y_te),
                    "train": {k: st[k] for k in ("steps", "lr", "batch_size", "final_loss")},
                }
            )
            if progress is not None:
                progress(i + 1, n, f"{name}: test acc {models[-1]['test_accuracy']:.3f}")
        return {
            "base": None,
            "models": models,
            "tasks": {self.task_name: self.task_spec(self.task_name)},
            "architecture": {"class": "DigitsMLP", "hidden": self.hidden, "layers": ["fc1", "fc2", "head"]},
            "settings": cfg,
            "training": f"trained together: one vectorised AdamW step (torch.func.vmap) per optimiser step over up "
            f"to {CHUNK} models, each with its own initialisation, data subset and batch order",
            "timing": {"train_s": train_s},
        }


class DigitsMLPInitZoo(_DigitsMLPBase):
    """The ``digits-mlp`` architecture at random initialisation (PyTorch default init), one seed per model.

    The null case: no shared structure beyond the initialisation distribution; accuracy is near chance (0.1).
    """

    name: ClassVar[str] = "digits-mlp-init"
    kind: ClassVar[ZooKind] = "init"

    def default_n(self, quick: bool) -> int:
        return 24 if quick else 96

    def _build_into(self, tmp: Path, *, n: int, seed: int, quick: bool, progress: ProgressFn | None) -> dict:
        x_tr, y_tr = self.task_data(self.task_name, "train")
        x_te, y_te = self.task_data(self.task_name, "test")
        models = []
        for i in range(n):
            s = derive_seed(seed, i)
            model = self.make_model(self.task_name, seed=s)
            name = f"{i:03d}_init"
            rel = f"models/{name}.safetensors"
            save_checkpoint(tmp / rel, model.state_dict(), zoo=self.name, task=self.task_name)
            models.append(
                {
                    "name": name,
                    "path": rel,
                    "task": self.task_name,
                    "seed": s,
                    "data": {"trained": False},
                    "train_accuracy": evaluate(model, x_tr, y_tr),
                    "test_accuracy": evaluate(model, x_te, y_te),
                }
            )
            if progress is not None:
                progress(i + 1, n, f"{name}: test acc {models[-1]['test_accuracy']:.3f}")
        return {
            "base": None,
            "models": models,
            "tasks": {self.task_name: self.task_spec(self.task_name)},
            "architecture": {"class": "DigitsMLP", "hidden": self.hidden, "layers": ["fc1", "fc2", "head"]},
        }
