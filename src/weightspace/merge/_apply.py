"""Merge checkpoints: stream a collection unit by unit through a merge method, into memory or the source layout.

:func:`merge` is the one entry point (behind ``weightspace merge`` and the benchmarks). It merges in **ΔW space**,
one unit (tensor key) at a time, so at most one unit's N task vectors are in memory:

* **Full checkpoints** need a base. Member ``i`` of a unit is the task vector ``W_i − W_base``; the output is
  ``W_base + merge(δ_1, …, δ_N)`` for every unit, in the base's layout (single ``.safetensors`` file, HF directory
  with its ``config.json``, or sharded directory following the base's shard map) and dtypes. Base tensors that are
  not units (buffers, excluded keys) are copied verbatim.
* **Raw weights**: methods declared ``base_free`` (``linear``, ``slerp``) merge full checkpoints without a base,
  as mergekit does; the output takes the first model's layout and its tensors where nothing is merged.
* **PEFT LoRA adapters** are merged as their updates ``ΔW_i = s_i B_i A_i``, never factor-wise: ``B·A`` is not
  linear in the factors, and a gauge change ``(B R, Rᵀ A)`` leaves ``ΔW`` unchanged but changes factor averages.
  The merged ``ΔW`` is written either as a PEFT adapter of rank ``R`` (truncated SVD; the relative truncation error
  is reported per module) or, with ``format="full"``, added to the base model.

Private tensors (shapes differ across models, e.g. task heads; keys matched by ``private``; full tensors inside
adapters) cannot be merged. The output keeps the base's tensor where the base has that key in one of the models'
shapes and leaves the key out otherwise; every such key is listed in :attr:`MergeResult.not_merged`.

Everything is checked (method, parameters, base shapes and key mapping, archive bases, output path) before
anything is written (:func:`~weightspace.merge._plan.plan_merge`), and the output is written by
:class:`~weightspace.io.LayoutWriter`: it appears atomically, and an error half-way leaves the destination untouched.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from weightspace._progress import Progress, report
from weightspace.backends import RunOptions, Task, open_executor, resolve_device, to_device
from weightspace.decompose import SharedSubspace
from weightspace.errors import InputError, NonFiniteError
from weightspace.io import LayoutWriter, check_destination
from weightspace.merge._plan import FormatChoice, MergePlan, Models, PathLike, plan_merge
from weightspace.merge._registry import MergeMethod, MethodFn, merge_deltas
from weightspace.merge._result import MergeResult, UnitStats
from weightspace.units import UnitSpec, all_finite

__all__ = ["merge", "unit_seed"]

ParamValue = str | float | int | bool | None


def unit_seed(seed: int, key: str) -> int:
    """Seed of the random masks of unit ``key`` for a merge run with seed ``seed``.

    DARE-style methods draw one mask per entry from a ``torch.Generator``; with a single seed for every unit, all
    units of one shape would get the same masks. Each unit instead gets ``sha256(seed, key)`` truncated to 63 bits:
    deterministic, independent of unit order, and different across keys.

    Parameters
    ----------
    seed : int
        The run's seed (the method's ``seed`` parameter).
    key : str
        The unit's tensor key.

    Returns
    -------
    int
        A seed in ``[0, 2**63)``.

    Examples
    --------
    >>> unit_seed(0, "fc1.weight") == unit_seed(0, "fc1.weight")
    True
    >>> unit_seed(0, "fc1.weight") != unit_seed(0, "fc2.weight")
    True
    """
    digest = hashlib.sha256(f"{int(seed)}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _view(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape a unit is merged in: ``(d_out, prod(rest))`` for ≥2-D weights, ``(numel,)`` for vectors."""
    if len(shape) >= 2:
        return (shape[0], math.prod(shape[1:]))
    return (math.prod(shape),)


def _norm(t: Tensor) -> float:
    return float(torch.linalg.vector_norm(t))


def _rel(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def _wrap(err: InputError, key: str, what: str) -> InputError:
    """A core error with the unit key added, keeping its class (and so its exit code)."""
    if err.tensor is None:
        return type(err)(f"{what}: {err.message}", path=err.path, tensor=key)
    return err


def _unit_params(plan: MergePlan, spec: UnitSpec) -> dict[str, Any]:
    kwargs = dict(plan.params)
    if "seed" in kwargs and isinstance(plan.method, MergeMethod):
        kwargs["seed"] = unit_seed(kwargs["seed"], spec.name)
    if plan.archive is not None:
        kwargs["basis"] = plan.archive.unit(spec.name).basis()  # (k, rows * cols), float64
    return kwargs


def _merge_unit(plan: MergePlan, name: str, device: str = "cpu") -> tuple[dict[str, Tensor], UnitStats, float]:
    """Merge one unit (a task: it reads the unit from paths its worker sees); return its output tensors by file
    key, its statistics and ``‖merged − mean‖``."""
    coll = plan.coll
    spec = coll.unit(name)
    view = _view(spec.shape)
    dev = resolve_device(device)
    stack = coll.stack(spec.name).chunk(0, spec.rows)  # (n_models, D), the base read once
    stack = to_device(stack, dev)
    deltas = [stack[i].reshape(view) for i in range(coll.n_models)]  # N × view
    kwargs = _unit_params(plan, spec)
    if isinstance(kwargs.get("basis"), Tensor):
        kwargs["basis"] = to_device(kwargs["basis"], dev)
    try:
        merged = merge_deltas(plan.method, deltas, weights=plan.weights, **kwargs).cpu()  # float64, view
    except InputError as err:
        raise _wrap(err, spec.name, f"merging with {plan.method_name!r}") from err
    # The plain average, for the comparison column: a row mean of the stack already in memory.
    mean = stack.mean(dim=0).reshape(view).cpu()
    del deltas, stack
    outputs: dict[str, Tensor] = {}
    put = outputs.__setitem__
    mean_norm = _norm(mean)
    diff = _norm(merged - mean)
    extra: dict[str, Any] = {}
    if "seed" in kwargs and isinstance(plan.method, MergeMethod):
        extra["seed"] = kwargs["seed"]
    if plan.archive is not None:
        extra["basis_k"] = int(kwargs["basis"].shape[0])
    if plan.format == "full":
        base = plan.template
        assert base is not None  # the full plan has a template (the base, or model 0 for raw weights)
        bkey = plan.unit_out[spec.name]
        dtype, shape = plan.specs[bkey]
        full = base.read(bkey).to(torch.float64).reshape(view) + merged if plan.add_base else merged
        out = full.reshape(shape).to(dtype)
        if not all_finite(out):
            raise NonFiniteError(
                f"the merged weight is not finite in {dtype} (overflow when casting); scale the merge down "
                "(--param lam=...) or write a wider dtype (--dtype float32)",
                path=base.path,
                tensor=bkey,
            )
        put(bkey, out)
        if bkey != spec.name:
            extra["base_key"] = bkey
    else:
        target = plan.lora_out[spec.name]
        factors, err = target.factors(merged)
        for key, t in factors.items():
            put(key, t)
        extra["rank"] = plan.rank
        extra["truncation_error"] = err
    stats = UnitStats(
        name=spec.name,
        shape=tuple(spec.shape),
        kind=spec.kind,
        lora=spec.lora,
        delta_norm=_norm(merged),
        mean_delta_norm=mean_norm,
        rel_diff_from_mean=_rel(diff, mean_norm),
        **extra,
    )
    return outputs, stats, diff


def _run(
    plan: MergePlan, put: Callable[[str, Tensor], None], progress: Progress | None, run: RunOptions
) -> tuple[list[UnitStats], float | None]:
    """Merge every unit into ``put`` (then copy the base's other tensors); the stats and the overall relative
    difference from the mean. Units run on ``run``'s executor; their outputs are written here as they arrive."""
    specs = plan.coll.units
    device = str(resolve_device(run.device))
    done: dict[int, tuple[UnitStats, float]] = {}
    with open_executor(run) as ex:
        shared = ex.share(plan)
        tasks = [Task(_merge_unit, (shared, spec.name, device), f"unit '{spec.name}'") for spec in specs]
        for i, (outputs, stats, diff) in ex.run(tasks):
            for key, tensor in outputs.items():
                put(key, tensor)
            done[i] = (stats, diff)
            report(progress, "merge", len(done), len(specs))
    units = [done[i][0] for i in range(len(specs))]
    diff_sq = sum(done[i][1] ** 2 for i in range(len(specs)))
    mean_sq = sum(u.mean_delta_norm**2 for u in units)
    if plan.format == "full":
        assert plan.template is not None  # the full plan has a template
        for key in plan.copies:
            put(key, plan.template.read(key))
    return units, _rel(math.sqrt(diff_sq), math.sqrt(mean_sq))


def merge(
    models: Models,
    *,
    base: PathLike | None = None,
    method: str | MergeMethod | MethodFn,
    params: Mapping[str, ParamValue] | None = None,
    out: PathLike | None = None,
    format: FormatChoice = "auto",
    rank: int | None = None,
    subspace: SharedSubspace | PathLike | None = None,
    weights: Sequence[float] | None = None,
    dtype: str | None = None,
    allow_pickle: bool = False,
    private: Sequence[str] = (),
    exclude: Sequence[str] = (),
    progress: Progress | None = None,
    overwrite: bool = False,
    threads: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    device: str | None = None,
) -> MergeResult:
    """Merge N checkpoints (or LoRA adapters) in ΔW space; write the result in the source layout, or return it.

    Parameters
    ----------
    models : Collection, path or sequence of path
        Fine-tuned full checkpoints or PEFT LoRA adapter directories: paths (files, dirs, globs, ``@list.txt``)
        are opened into a :class:`~weightspace.collection.Collection` with ``base``, ``private``, ``exclude`` and
        ``allow_pickle``; a ``Collection`` is used as is (build it with its base; ``base``, ``private`` and
        ``exclude`` must then be left unset).
    base : path, optional
        The model the inputs were fine-tuned from (a path or a Hugging Face Hub id). Required for full checkpoints
        (task vectors are ``W_i − W_base``) unless the method is base-free (``linear``, ``slerp``: raw weights
        are merged), and for ``format="full"`` with adapters (the update is added to it).
    method : str or callable
        A name in :data:`~weightspace.merge.MERGE_METHODS` (unknown names list the valid ones), or a callable
        ``fn(deltas, **params) -> Tensor`` applied to each unit's float64 deltas.
    params : mapping of str to str, float, int or bool, optional
        Method parameters; CLI strings are coerced (``{"density": "0.3"}``) and checked against the declared
        ranges. ``seed`` (DARE methods) is the run's seed: unit ``key`` uses ``unit_seed(seed, key)``.
    out : path, optional
        Where to write the merged model (``-o/--out``): a file for a single-file base (``.safetensors``, pickle),
        else a directory. Without it nothing is written and :attr:`MergeResult.tensors` holds the model.
    format : {"auto", "full", "peft"}, default "auto"
        What to produce (``--format``): ``auto`` writes adapters for adapter inputs and a full model otherwise;
        ``full`` with adapters merges into the base (PEFT module names are matched to base keys exactly, else by a
        unique dotted suffix); ``peft`` needs adapter inputs.
    rank : int ≥ 1, optional
        Rank of a PEFT output (default: the largest source rank). The merged ``ΔW`` of N rank-r adapters
        generally has rank up to N·r, so the truncation error is reported per module.
    weights : sequence of float, optional
        One weight per model, in model order (``--weights``; a recipe's per-model ``weight``), for the methods
        that take them (``linear``, ``task_arithmetic``, ``ties``, ``dare``, ``dare_ties``); other methods
        refuse weights that are not all 1.
    dtype : {"float32", "float16", "bfloat16", "float64"}, optional
        Floating-point dtype of the written tensors (``--dtype``; default: the source's).
    subspace : SharedSubspace or path, optional
        A fitted subspace (or its ``.wsz`` archive, ``--basis-archive``) of (a superset of) these models' units,
        fitted with model-axis PCA. With ``method="subspace"``, each unit's task vectors are projected on its
        basis (shape ``(k, rows·cols)``) instead of a basis fitted from the deltas being merged. Note that a
        centered fit holds the basis of the *centered* task vectors.
    allow_pickle : bool, default False
        Read ``.bin``/``.pt`` pickles with torch's weights-only unpickler.
    private, exclude : sequence of str
        fnmatch patterns of keys to keep per model (never merged) or to leave out of the analysis (base tensors of
        excluded keys are still copied into a full output).
    progress : callable, optional
        ``progress(stage, done, total)`` after each unit.
    overwrite : bool, default False
        Replace an existing ``out`` that weightspace did not write as a merged model (``--overwrite``); without
        it such a path is refused before any work.
    threads, scheduler, client, device
        Where the units run (see :class:`~weightspace.backends.RunOptions`): ``threads`` units at once here
        (default every core) or on Dask workers, which send back each merged unit for this process to write;
        ``device`` for the merge's linear algebra. The result does not depend on them.

    Returns
    -------
    MergeResult
        The method and resolved parameters, what was produced (``format``, ``layout``, ``out``), per-unit
        statistics (``units``: norms, ``rel_diff_from_mean``, and seed / basis rows / truncation error where they
        apply), ``not_merged`` keys with the action taken, ``wall_s``; ``tensors`` when ``out`` is None.
        :meth:`MergeResult.to_dict` is the JSON form.

    Raises
    ------
    InputError
        Missing base for full checkpoints, PEFT output from full inputs, bad output path. Subclasses:
        :class:`~weightspace.errors.ParameterError` (unknown method or parameter, out-of-range value),
        :class:`~weightspace.errors.ShapeMismatchError` (base and models disagree), :class:`TensorKeyError`
        (an adapter module with no base counterpart), :class:`NonFiniteError`. Nothing is written on error.

    Examples
    --------
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from safetensors.torch import save_file
    >>> d = Path(tempfile.mkdtemp())
    >>> save_file({"w": torch.ones(3)}, d / "base.safetensors")
    >>> save_file({"w": torch.tensor([2.0, 1.0, 1.0])}, d / "a.safetensors")
    >>> save_file({"w": torch.tensor([1.0, 1.0, 3.0])}, d / "b.safetensors")
    >>> models = [d / "a.safetensors", d / "b.safetensors"]
    >>> merge(models, base=d / "base.safetensors", method="task_arithmetic", params={"lam": "0.5"}).tensors["w"]
    tensor([1.5000, 1.0000, 2.0000])
    >>> r = merge(models, base=d / "base.safetensors", method="mean", out=d / "merged.safetensors")
    >>> r.n_units, r.format, r.layout, r.tensors is None
    (1, 'full', 'safetensors', True)
    >>> from weightspace.io import open_source
    >>> open_source(d / "merged.safetensors").read("w")
    tensor([1.5000, 1.0000, 2.0000])
    """
    t0 = time.perf_counter()
    run = RunOptions.of(threads=threads, scheduler=scheduler, client=client, device=device)
    plan = plan_merge(
        models,
        base=base,
        method=method,
        params=params,
        format=format,
        rank=rank,
        subspace=subspace,
        allow_pickle=allow_pickle,
        private=private,
        exclude=exclude,
        weights=weights,
        dtype=dtype,
    )
    coll = plan.coll
    tensors: dict[str, Tensor] | None = None
    if out is None:
        collected: dict[str, Tensor] = {}
        units, rel_diff = _run(plan, collected.__setitem__, progress, run)
        tensors = {k: collected[k] for k in plan.specs if k in collected}
        dest = None
    else:
        inputs = [s.path for s in coll.sources] + ([coll.base.path] if coll.base is not None else [])
        size = sum(
            math.prod(shape) * torch.empty((), dtype=dt).element_size() for dt, shape in plan.specs.values()
        )
        dest = check_destination(
            out, plan.layout, inputs=inputs, what="merged model", overwrite=overwrite, required_bytes=size
        )
        with LayoutWriter(dest, plan.layout, plan.specs, marker="model") as writer:
            units, rel_diff = _run(plan, writer.write, progress, run)
    peft = plan.format == "peft"
    # The first module with the largest error (max keeps the first of equals).
    worst = max(units, key=lambda u: u.truncation_error or 0.0, default=None) if peft else None
    return MergeResult(
        method=plan.method_name,
        params={k: v for k, v in plan.params.items() if not isinstance(v, Tensor)},
        format=plan.format,
        layout=plan.layout.format,
        out=dest,
        models=tuple(coll.names),
        model_paths=tuple(str(s.path) for s in coll.sources),
        input="peft" if coll.is_peft else "full",
        base=None if coll.base is None else str(coll.base.path),
        basis_archive=None if plan.archive is None or plan.archive.path_ is None else str(plan.archive.path_),
        units=tuple(units),
        rel_diff_from_mean=rel_diff,
        not_merged=tuple(plan.not_merged),
        excluded=tuple(coll.excluded),
        copied_from_base=tuple(plan.copies),
        rank=plan.rank,
        adapter_config_from=coll.names[0] if peft else None,
        max_truncation_error=(0.0 if worst is None else worst.truncation_error) if peft else None,
        worst_truncation_module=None if worst is None else worst.name,
        wall_s=time.perf_counter() - t0,
        tensors=tensors,
        weights=plan.weights,
        dtype=dtype,
    )
