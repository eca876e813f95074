"""Model zoos: small real model collections built offline from real data, each with an evaluator.

Every zoo is a :class:`Zoo` registered by name. :func:`build_zoo` trains one into a directory (or reuses a
complete earlier build with the same arguments) and returns a :class:`ZooInfo`; :meth:`Zoo.accuracy`
evaluates any checkpoint, state dict or module on a task's fixed held-out split.

=================  ==========  ===============================================================================
name               kind        models
=================  ==========  ===============================================================================
digits-mlp         scratch     64→64→64→10 MLPs trained from scratch on sklearn digits (seed + 70 % subset)
digits-mlp-init    init        the same MLPs untrained (random init; the null case)
mnist1d-cnn        finetune    1-D CNN pretrained on MNIST-1D (``base.safetensors``), fine-tuned on up to 156
                               tasks (permutations, pairs, subsets, relabellings, transforms, noise levels)
digits-vit         finetune    tiny ViT pretrained on digits (``base.safetensors``), fine-tuned the same way
minilm-lora        lora        PEFT LoRA (r=8, query/value) + head on all-MiniLM-L6-v2, BBC News tasks
=================  ==========  ===============================================================================

Small models are trained many at a time (one vectorised optimiser step for up to 96 models, see
``_batched.py``), so zoos of N ≥ 96 — enough to test k = 16 directions against N — build in about a minute.
:func:`cached_zoo` keeps builds in a content-addressed cache keyed by every build parameter.

Layout of a built zoo::

    DIR/zoo.json                    # written last: {"zoo", "version", "seed", "n", "quick", "build_key",
                                    #   "build_params", "base", "models", "tasks"}; byte-identical per key
    DIR/timing.json                 # wall times of the build (vary from run to run)
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
from pathlib import Path

from weightspace._registry import Registry
from weightspace.zoo._base import ModelSource, Zoo, ZooKind
from weightspace.zoo._checkpoint import read_checkpoint
from weightspace.zoo._cnn import MNIST1DCNNZoo
from weightspace.zoo._data import cache_dir
from weightspace.zoo._manifest import ZooInfo, ZooModel, build_key, load_zoo_info
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
    "build_key",
    "build_zoo",
    "cached_zoo",
    "get_zoo",
    "load_zoo_info",
    "pinned_threads",
    "read_checkpoint",
    "train_threads",
    "zoo_cache_dir",
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


def zoo_cache_dir() -> Path:
    """Root of the content-addressed zoo cache: ``$WEIGHTSPACE_ZOO_CACHE``, else ``<cache_dir>/zoos``.

    ``cache_dir`` is ``$WEIGHTSPACE_CACHE_DIR`` or ``~/.cache/weightspace``.
    """
    env = os.environ.get("WEIGHTSPACE_ZOO_CACHE")
    return Path(env) if env else cache_dir() / "zoos"


def cached_zoo(
    name: str,
    *,
    n: int | None = None,
    seed: int = 0,
    quick: bool = False,
    cache: str | os.PathLike[str] | None = None,
    progress: ProgressFn | None = None,
) -> ZooInfo:
    """Build zoo ``name`` into the content-addressed cache, or reuse the build already there.

    The directory is ``<cache>/<name>-<first 16 hex digits of build_key>``, where ``build_key`` hashes every
    build parameter (:meth:`Zoo.build_params`: ``n``, ``seed``, ``quick``, settings, tasks, threads, code
    version). Any change of parameters therefore lands in a new directory; the same parameters find the
    finished build (tests, a second demo run, benchmarks all share it).

    Parameters
    ----------
    name : str
        One of :func:`zoo_names`.
    n, seed, quick
        As for :func:`build_zoo`.
    cache : path, optional
        Cache root (default :func:`zoo_cache_dir`).
    progress : callable, optional
        ``progress(done, total, message)``.

    Returns
    -------
    ZooInfo
    """
    zoo = get_zoo(name)
    n = zoo.default_n(bool(quick)) if n is None else n
    key = build_key(zoo.build_params(n=n, seed=seed, quick=bool(quick)))
    root = Path(cache) if cache is not None else zoo_cache_dir()
    return zoo.build(root / f"{name}-{key[:16]}", n=n, seed=seed, quick=quick, progress=progress)
