"""Model zoos: small real model collections built offline from real data, each with an evaluator.

Every zoo is a :class:`Zoo` registered by name. :func:`build_zoo` trains one into a directory (or reuses a
complete earlier build with the same arguments) and returns a :class:`ZooInfo`; :meth:`Zoo.accuracy`
evaluates any checkpoint, state dict or module on a task's fixed held-out split.

=================  ==========  ===============================================================================
name               kind        models
=================  ==========  ===============================================================================
digits-mlp         scratch     64→64→64→10 MLPs trained from scratch on sklearn digits (seed + 70 % subset)
digits-mlp-init    init        the same MLPs untrained (random init; the null case)
mnist1d-cnn        finetune    1-D CNN pretrained on MNIST-1D (``base.safetensors``), fine-tuned on 20 tasks
digits-vit         finetune    tiny ViT pretrained on digits (``base.safetensors``), fine-tuned on 20 tasks
minilm-lora        lora        PEFT LoRA (r=8, query/value) + head on all-MiniLM-L6-v2, BBC News tasks
=================  ==========  ===============================================================================

Layout of a built zoo::

    DIR/zoo.json                    # written last: {"zoo", "version", "seed", "n", "quick", "base", "models", "tasks"}
    DIR/base.safetensors            # fine-tune zoos only
    DIR/models/<name>.safetensors   # minilm-lora: DIR/models/<name>/ (PEFT adapter directory)

Checkpoints are float32 safetensors state dicts whose ``__metadata__`` carries ``weightspace.zoo`` and
``weightspace.task``.

Examples
--------
>>> from weightspace.zoo import build_zoo, get_zoo
>>> info = build_zoo("digits-mlp", "zoos/digits-mlp", quick=True)  # doctest: +SKIP
>>> get_zoo("digits-mlp").accuracy(info.models[0].path)  # doctest: +SKIP
0.95...
"""

from __future__ import annotations

import os

from weightspace._registry import Registry
from weightspace.zoo._base import ModelSource, Zoo, ZooKind
from weightspace.zoo._checkpoint import read_checkpoint
from weightspace.zoo._cnn import MNIST1DCNNZoo
from weightspace.zoo._manifest import ZooInfo, ZooModel, load_zoo_info
from weightspace.zoo._mlp import DigitsMLPInitZoo, DigitsMLPZoo
from weightspace.zoo._text import MiniLMLoRAZoo
from weightspace.zoo._train import ProgressFn, pinned_threads, train_threads
from weightspace.zoo._vit import DigitsViTZoo

__all__ = [
    "ModelSource",
    "ProgressFn",
    "Zoo",
    "ZooInfo",
    "ZooKind",
    "ZooModel",
    "build_zoo",
    "get_zoo",
    "load_zoo_info",
    "pinned_threads",
    "read_checkpoint",
    "train_threads",
    "zoo_names",
]

_ZOOS: Registry[Zoo] = Registry("zoo")
for _zoo in (DigitsMLPZoo(), DigitsMLPInitZoo(), MNIST1DCNNZoo(), DigitsViTZoo(), MiniLMLoRAZoo()):
    _ZOOS.register(_zoo.name, _zoo)
del _zoo


def zoo_names() -> list[str]:
    """Names of the registered zoos, sorted."""
    return _ZOOS.names()


def get_zoo(name: str) -> Zoo:
    """The zoo registered as ``name``.

    Raises
    ------
    ParameterError
        ``name`` is not registered; the message lists the valid names.
    """
    return _ZOOS.get(name)


def build_zoo(
    name: str,
    out_dir: str | os.PathLike[str],
    *,
    n: int | None = None,
    seed: int = 0,
    quick: bool = False,
    force: bool = False,
    progress: ProgressFn | None = None,
) -> ZooInfo:
    """Build zoo ``name`` into ``out_dir`` (see :meth:`Zoo.build`), reusing an identical complete build.

    Parameters
    ----------
    name : str
        One of :func:`zoo_names`.
    out_dir : str or os.PathLike
        Zoo directory (absent, empty, or an earlier zoo, which is replaced).
    n : int, optional
        Number of models (default: the zoo's ``default_n(quick)``).
    seed : int
        Zoo seed (≥ 0).
    quick : bool
        Fewer models and steps.
    force : bool
        Rebuild even when an identical build is present.
    progress : callable, optional
        ``progress(done, total, message)`` after each model.

    Returns
    -------
    ZooInfo
        The parsed ``zoo.json``.
    """
    return get_zoo(name).build(out_dir, n=n, seed=seed, quick=quick, force=force, progress=progress)
