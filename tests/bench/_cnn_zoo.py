"""A real ``mnist1d-cnn`` zoo layout with *untrained* models, for the adaptation benchmark tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from weightspace.io import save_safetensors
from weightspace.zoo import get_zoo

FAKE_TASKS = ("perm-0", "pair-0-1", "reverse", "perm-1")


def write_fake_zoo(root: Path, tasks: tuple[str, ...] = FAKE_TASKS) -> Path:
    """A real ``mnist1d-cnn`` zoo layout (real architecture, real data) with *untrained* models.

    The base is a seeded random init and each "fine-tuned" model is the base plus a small seeded perturbation
    and a random head, so building it takes milliseconds instead of a training run.
    """
    zoo = get_zoo("mnist1d-cnn")
    gen = torch.Generator().manual_seed(3)
    base = zoo.make_model("pretrain", seed=11).state_dict()
    root.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt", "weightspace.zoo": "mnist1d-cnn", "weightspace.task": "pretrain"}
    save_safetensors(root / "base.safetensors", {k: v.contiguous() for k, v in base.items()}, meta)
    models = []
    for i, task in enumerate(tasks):
        head = zoo.make_model(task, seed=100 + i).state_dict()
        sd = {
            k: (head[k] if k.startswith("head.") else v + 0.05 * torch.randn(v.shape, generator=gen)).contiguous()
            for k, v in base.items()
        }
        sd["head.weight"], sd["head.bias"] = head["head.weight"], head["head.bias"]
        rel = f"models/{i:03d}_{task}.safetensors"
        (root / "models").mkdir(exist_ok=True)
        save_safetensors(root / rel, sd, {**meta, "weightspace.task": task})
        models.append(
            {"name": f"{i:03d}_{task}", "path": rel, "task": task, "seed": 100 + i, "test_accuracy": 0.5}
        )
    doc = {
        "zoo": "mnist1d-cnn",
        "version": 1,
        "seed": 0,
        "n": len(models),
        "quick": True,
        "base": "base.safetensors",
        "base_task": "pretrain",
        "models": models,
        "tasks": {t: zoo.task_spec(t) for t in ("pretrain", *tasks)},
        "head_prefix": "head.",
        "settings": {"finetune": {"steps": 3, "lr": 3e-3, "batch_size": 64}},
    }
    (root / "zoo.json").write_text(json.dumps(doc), encoding="utf-8")
    return root
