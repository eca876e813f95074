"""``align``: remove the permutation (and, opt-in, scaling) symmetries of a collection before comparing weights.

Procedure, for N models and a permutation spec (derived, built in or from a file):

1. **Reference.** The medoid of the models by weight distance (the model with the smallest summed Euclidean
   distance to the others, over the shared unit tensors), or ``reference=NAME``. With a base (task vectors) the
   base is the reference: it fixes the unit order that ``W_i − W_base`` is taken in, and it is never changed.
2. **Scale** (``symmetries`` has ``scale``): each model's scale groups are canonicalised (unit-norm incoming
   weights); the reference too. Only valid for ReLU-like (positively homogeneous) activations.
3. **Permutation** (``symmetries`` has ``permutation``): each model is matched to the reference by Git Re-Basin
   weight matching (seeded random group order per model, stop at a sweep without improvement).
4. ``to="mean"``: then, round after round, each model is re-matched to the mean of the aligned models (started
   from step 3), until a round changes no permutation (at most ``MAX_ROUNDS``).

Everything random comes from ``seed`` (the group order of model ``i`` in round ``r`` uses
``numpy.random.default_rng([seed, i, r])``), so the result is a deterministic function of the inputs and the seed.
Alignment never changes what a model computes; the aligned checkpoints keep their layout, keys and dtypes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from weightspace._atomic import atomic_dir, atomic_write_text, check_output
from weightspace._progress import Progress, report
from weightspace._validation import Interval, Kind, Options, validate_params
from weightspace.align._file import resolve_spec
from weightspace.align._match import (
    Transform,
    canonical_scales,
    few_threads,
    match_permutations,
    transform_state,
    transform_tensor,
)
from weightspace.align._result import (
    ALIGN_MEMBER,
    AlignmentRecord,
    AlignResult,
    ModelAlignment,
    alignment_tensors,
)
from weightspace.align._source import AlignedCollection
from weightspace.align._spec import PermutationSpec, check_spec
from weightspace.collection import Collection, as_collection
from weightspace.errors import InputError, ParameterError
from weightspace.io import DTYPES, Layout, LayoutWriter, ModelSource, output_name

__all__ = [
    "SCALE_WARNING",
    "SYMMETRIES",
    "AlignOptions",
    "align",
    "align_collection",
    "aligned_null_grams",
]

SYMMETRIES = ("permutation", "scale")
SCALE_WARNING = (
    "scale symmetry holds only for ReLU-like (positively homogeneous) activations: the state dict cannot tell "
    "which activation a net uses, so the rescaled models compute the same function only if yours are ReLU-like"
)
ALIGNMENT_JSON = "alignment.json"
SPEC_JSON = "spec.json"
MAX_ROUNDS = 20

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class AlignOptions:
    """How to align (the keyword arguments of :func:`align`, as one value for ``analyze``/``compress``).

    Attributes
    ----------
    reference : str, optional
        Model name of the reference (default: the medoid; with a base, the base).
    to : {"reference", "mean"}
        Align to the reference, or iteratively to the mean of the aligned models.
    spec : PermutationSpec, path or str, optional
        A spec, a YAML/JSON file, a built-in (``"vit:heads=4"``, ``"bert"``, ``"sequential"``), or None to detect.
    symmetries : tuple of str
        ``("permutation",)``, ``("permutation", "scale")`` or ``("scale",)``.
    seed : int
    max_iter : int
        Most coordinate-descent sweeps per matching.

    Examples
    --------
    >>> AlignOptions(to="mean").symmetries
    ('permutation',)
    >>> AlignOptions(symmetries=("rotation",))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    weightspace.errors.ParameterError: The 'symmetries' parameter of align must be a non-empty subset of ...
    """

    reference: str | None = None
    to: str = "reference"
    spec: PermutationSpec | PathLike | None = None
    symmetries: tuple[str, ...] = ("permutation",)
    seed: int = 0
    max_iter: int = 100

    def __post_init__(self) -> None:
        validate_params(
            "align",
            {
                "to": [Options(("reference", "mean"))],
                "seed": [Interval(int, 0, None)],
                "max_iter": [Interval(int, 1, None)],
                "reference": [Options((None,)), Kind(str, "a model name")],
            },
            {"to": self.to, "seed": self.seed, "max_iter": self.max_iter, "reference": self.reference},
        )
        sym = tuple(self.symmetries) if not isinstance(self.symmetries, str) else (self.symmetries,)
        if not sym or any(s not in SYMMETRIES for s in sym) or len(set(sym)) != len(sym):
            raise ParameterError(
                f"The 'symmetries' parameter of align must be a non-empty subset of {', '.join(SYMMETRIES)}. "
                f"Got {self.symmetries!r} instead."
            )
        object.__setattr__(self, "symmetries", tuple(s for s in SYMMETRIES if s in sym))


# ------------------------------------------------------------------------------------------------ engine
@dataclass
class _Models:
    """What the engine aligns: N models loaded one at a time (float64 state dicts)."""

    n: int
    load: Callable[[int], dict[str, torch.Tensor]]
    unit_keys: list[str]


@dataclass
class _Fit:
    transforms: list[Transform]
    before: list[float]
    after: list[float]
    sweeps: list[int]
    rounds: int
    converged: bool


def _dist(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], keys: Sequence[str]) -> float:
    return math.sqrt(sum(float(((a[k] - b[k]) ** 2).sum()) for k in keys))


def _fit(models: _Models, spec: PermutationSpec, sizes: Mapping[str, int], opts: AlignOptions, **kw: Any) -> _Fit:
    """Find every model's transform (see the module docstring); ``ref_state`` is a fixed reference (a base)."""
    with few_threads(max(sizes.values(), default=0)):
        return _fit_threads(models, spec, sizes, opts, **kw)


def _fit_threads(
    models: _Models,
    spec: PermutationSpec,
    sizes: Mapping[str, int],
    opts: AlignOptions,
    *,
    ref: int | None,
    ref_state: Mapping[str, torch.Tensor] | None = None,
    progress: Progress | None = None,
    stage: str = "align",
) -> _Fit:
    scale = "scale" in opts.symmetries and spec.has_scale
    permute = "permutation" in opts.symmetries
    keys = models.unit_keys

    def canon(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        if not scale:
            return state, {}
        c = canonical_scales(state, spec, sizes)
        return transform_state(state, spec, Transform(scales=c)), c

    def match(
        target: Mapping[str, torch.Tensor],
        st: Mapping[str, torch.Tensor],
        i: int,
        r: int,
        init: Mapping[str, torch.Tensor] | None,
    ) -> tuple[dict[str, torch.Tensor], int]:
        if not permute:
            return {}, 0
        scored = {k: target[k] for k in keys}
        return match_permutations(
            scored, st, spec, sizes, seed=[opts.seed, i, r], init=init, max_iter=opts.max_iter
        )

    n = models.n
    raw_ref = dict(ref_state) if ref_state is not None else models.load(ref if ref is not None else 0)
    target, _ = canon(dict(raw_ref))
    transforms: list[Transform] = []
    before, after, sweeps = [0.0] * n, [0.0] * n, [0] * n
    converged = True
    raw_sum = {k: torch.zeros_like(raw_ref[k]) for k in keys} if opts.to == "mean" else None
    total = n * (1 if opts.to == "reference" else 2)
    for i in range(n):
        raw = raw_ref if (i == ref and ref_state is None) else models.load(i)
        st, c = canon(raw)
        if i == ref and ref_state is None:
            perms, sw = ({g.name: torch.arange(sizes[g.name]) for g in spec.groups} if permute else {}), 0
        else:
            perms, sw = match(target, st, i, 0, None)
        converged &= sw < opts.max_iter
        tf = Transform(perms, c)
        transforms.append(tf)
        sweeps[i] = sw
        if raw_sum is None:
            aligned = transform_state({k: st[k] for k in keys}, spec, Transform(perms))
            before[i] = _dist(st, target, keys)
            after[i] = _dist(aligned, target, keys)
        else:
            for k in keys:
                raw_sum[k] += st[k]
        report(progress, stage, i + 1, total)
    if raw_sum is None:
        return _Fit(transforms, before, after, sweeps, 0, converged)

    # Align to the mean: in each round every model is matched to the mean of the previous round's aligned models
    # (which this round's matches accumulate into the next mean), until a round changes nothing.
    rounds, changed = 0, True
    mean = _mean_of(models, spec, transforms, keys)
    while changed and rounds < MAX_ROUNDS:
        rounds += 1
        changed = False
        acc = {k: torch.zeros_like(v) for k, v in mean.items()}
        for i in range(n):
            st, _ = canon(models.load(i))
            perms, sw = match(mean, st, i, rounds, transforms[i].perms)
            converged &= sw < opts.max_iter
            sweeps[i] = sw
            if any(not torch.equal(perms[g], transforms[i].perms[g]) for g in perms):
                changed = True
                transforms[i] = Transform(perms, transforms[i].scales)
            aligned = transform_state({k: st[k] for k in keys}, spec, Transform(transforms[i].perms))
            for k in keys:
                acc[k] += aligned[k]
        mean = {k: v / n for k, v in acc.items()}
    converged &= not changed
    raw_mean = {k: v / n for k, v in raw_sum.items()}
    for i in range(n):
        st, _ = canon(models.load(i))
        before[i] = _dist(st, raw_mean, keys)
        after[i] = _dist(
            transform_state({k: st[k] for k in keys}, spec, Transform(transforms[i].perms)), mean, keys
        )
        report(progress, stage, n + i + 1, total)
    return _Fit(transforms, before, after, sweeps, rounds, converged)


def _mean_of(
    models: _Models, spec: PermutationSpec, transforms: Sequence[Transform], keys: Sequence[str]
) -> dict[str, torch.Tensor]:
    acc: dict[str, torch.Tensor] = {}
    for i in range(models.n):
        raw = models.load(i)
        st = transform_state({k: raw[k] for k in keys}, spec, transforms[i])
        for k in keys:
            acc[k] = acc[k] + st[k] if k in acc else st[k].clone()
    return {k: v / models.n for k, v in acc.items()}


# ------------------------------------------------------------------------------------------------ collections
def _shapes(src: ModelSource) -> dict[str, tuple[int, ...]]:
    return {k: tuple(e.shape) for k, e in src.entries.items()}


def _collection_models(coll: Collection, spec: PermutationSpec) -> _Models:
    unit_keys = [u.name for u in coll.units]
    keys = list(dict.fromkeys([*unit_keys, *spec.keys]))

    def load(i: int) -> dict[str, torch.Tensor]:
        src = coll.sources[i]
        return {k: src.read(k).to(torch.float64) for k in keys if k in src.entries}

    return _Models(coll.n_models, load, unit_keys)


def _unit_grams(coll: Collection, chunk_bytes: int = 32 << 20) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per unit: the uncentered Gram of the members (N × N) and their mean (flattened), float64."""
    out = {}
    for u in coll.units:
        stack = coll.stack(u.name)
        gram = torch.zeros(coll.n_models, coll.n_models, dtype=torch.float64)
        mean = torch.empty(u.numel, dtype=torch.float64)
        for r0, r1 in stack.row_chunks(chunk_bytes):
            x = stack.chunk(r0, r1)  # (n_models, (r1 - r0) * cols)
            gram += x @ x.T
            mean[r0 * u.cols : r1 * u.cols] = x.mean(dim=0)
        out[u.name] = (gram, mean)
    return out


def _medoid(gram: torch.Tensor) -> int:
    d2 = gram.diagonal().unsqueeze(0) + gram.diagonal().unsqueeze(1) - 2 * gram
    dist = d2.clamp_min(0).sqrt()  # (n, n)
    return int(torch.argmin(dist.sum(dim=1)))


def _check_collection(coll: Collection, opts: AlignOptions) -> None:
    if coll.is_peft:
        raise InputError(
            "these are LoRA adapters: adapters of one base share the base's unit order (ΔW = s·B·A is added to the "
            "same weights), so they need no alignment; drop --align",
            path=coll.sources[0].path,
        )
    if coll.base is not None:
        if opts.reference is not None or opts.to != "reference":
            raise InputError(
                "with --base the base is the reference (task vectors W_i − W_base need the base's unit order); "
                "drop --reference/--to mean",
                path=coll.base.path,
            )
        if "scale" in opts.symmetries:
            raise InputError(
                "scale canonicalisation rescales every model but not the base, so task vectors would stop meaning "
                "anything; use --symmetries permutation with --base",
                path=coll.base.path,
            )
    if opts.reference is not None and opts.reference not in coll.names:
        listing = ", ".join(repr(n) for n in coll.names[:10])
        raise ParameterError(f"--reference {opts.reference!r} is not one of the models ({listing})")


def _resolve(coll: Collection, opts: AlignOptions, first: int) -> tuple[PermutationSpec, dict[str, int]]:
    src = coll.base if coll.base is not None else coll.sources[first]
    spec = resolve_spec(opts.spec, _shapes(src), configs=src.configs, order=list(src.entries), path=src.path)
    spec_path = opts.spec if opts.spec is not None and not isinstance(opts.spec, PermutationSpec) else None
    if spec_path is not None and not Path(os.fspath(spec_path)).exists():
        spec_path = None  # a built-in name: errors name the model
    sizes = check_spec(spec, _shapes(src), path=src.path, spec_path=spec_path)
    for s in coll.sources:
        check_spec(spec, _shapes(s), path=s.path, spec_path=spec_path if s is src else None, sizes=sizes)
    return spec, sizes


def _notes(spec: PermutationSpec, opts: AlignOptions, fit: _Fit) -> list[str]:
    notes = list(spec.notes)
    if "scale" in opts.symmetries:
        notes.append(SCALE_WARNING)
        if spec.has_scale:
            notes.append(
                "distances before and after are both measured between scale-canonicalised models (the 'before' "
                "is canonical but unpermuted), so they show what the permutation does"
            )
        else:
            notes.append("no group of this spec has a scale symmetry, so nothing was rescaled")
    if not fit.converged:
        notes.append(
            "matching stopped at its iteration limit for some model(s) (max_iter or the round limit); "
            "the alignment is valid but may not be a local optimum"
        )
    return notes


def align_collection(
    collection: Collection, options: AlignOptions | None = None, *, progress: Progress | None = None
) -> tuple[AlignedCollection, AlignResult]:
    """Align a collection in memory: an :class:`AlignedCollection` of aligned views, and the result.

    Parameters
    ----------
    collection : Collection
        Full checkpoints (optionally with a base); LoRA adapters are refused (they need no alignment).
    options : AlignOptions, optional
    progress : callable, optional
        ``progress("align", done, total)``.

    Returns
    -------
    AlignedCollection
        Reads every model permuted/rescaled; its ``archive_extras``/``archive_members`` are what an archive of it
        stores so that ``reconstruct`` returns the original models.
    AlignResult
    """
    t0 = time.perf_counter()
    opts = options or AlignOptions()
    coll = collection
    _check_collection(coll, opts)
    names = list(coll.names)
    if coll.base is not None:
        ref = None
    elif opts.reference is not None:
        ref = names.index(opts.reference)
    else:
        ref = _medoid(sum(g for g, _ in _unit_grams(coll).values()))  # type: ignore[arg-type]
    spec, sizes = _resolve(coll, opts, ref or 0)
    if "scale" not in opts.symmetries:
        spec = spec.without_scale()
    models = _collection_models(coll, spec)
    ref_state = None
    if coll.base is not None:
        base = coll.base
        ref_state = {k: base.read(k).to(torch.float64) for k in dict.fromkeys([*models.unit_keys, *spec.keys])}
    fit = _fit(models, spec, sizes, opts, ref=ref, ref_state=ref_state, progress=progress)
    reference = "<base>" if ref is None else names[ref]
    rows = [
        ModelAlignment(
            name=name,
            path=str(src.path),
            distance_before=fit.before[i],
            distance_after=fit.after[i],
            moved_units=fit.transforms[i].moved(),
            sweeps=fit.sweeps[i],
            permutations={g: p.tolist() for g, p in fit.transforms[i].perms.items()},
            scales={g: c.tolist() for g, c in fit.transforms[i].scales.items()},
        )
        for i, (name, src) in enumerate(zip(names, coll.sources, strict=True))
    ]
    result = AlignResult(
        models=rows,
        reference=reference,
        to=opts.to,
        symmetries=list(opts.symmetries),
        seed=opts.seed,
        spec=spec.to_dict(),
        spec_text=spec.describe(_shapes(coll.base if coll.base is not None else coll.sources[ref or 0])),
        groups=dict(sizes),
        rounds=fit.rounds,
        converged=fit.converged,
        notes=_notes(spec, opts, fit),
        wall_s=time.perf_counter() - t0,
        transforms=fit.transforms,
    )
    record = AlignmentRecord(
        spec=spec.to_dict(),
        symmetries=list(opts.symmetries),
        reference=reference,
        to=opts.to,
        seed=opts.seed,
        groups=dict(sizes),
        models=names,
    )
    aligned = AlignedCollection(
        coll,
        spec,
        fit.transforms,
        archive_extras={"alignment": record.model_dump(mode="json")},
        archive_members={ALIGN_MEMBER: alignment_tensors(names, fit.transforms)},
    )
    return aligned, result


def _check_out(out: Path, coll: Collection, *, overwrite: bool = False) -> None:
    """The output policy of every command (:func:`weightspace._atomic.check_output`), before any matching."""
    inputs = [s.path for s in coll.sources] + ([coll.base.path] if coll.base else [])
    check_output(out, "aligned", overwrite=overwrite, inputs=inputs, what="aligned models")


def _write(out: Path, aligned: AlignedCollection, result: AlignResult) -> AlignResult:
    rows = []
    with atomic_dir(out) as tmp:  # recognised as an align output by its alignment.json
        for name, src, row in zip(aligned.names, aligned.sources, result.models, strict=True):
            layout = Layout.of(src)
            fmt = layout.format
            dest = tmp / output_name(name, "torch" if fmt == "torch" else fmt)
            specs = {k: (_torch_dtype(e.dtype, src), e.shape) for k, e in src.entries.items()}
            with LayoutWriter(dest, layout, specs, label=out / dest.name) as w:
                for key in src.entries:
                    w.write(key, src.read(key))
            rows.append(replace(row, output=str(out / dest.name)))
        result = replace(result, models=rows, out=str(out))
        atomic_write_text(tmp / SPEC_JSON, json.dumps(result.spec, indent=1))
        atomic_write_text(tmp / ALIGNMENT_JSON, json.dumps(result.to_dict(), indent=1))
    return result


def _torch_dtype(tag: str, src: ModelSource) -> torch.dtype:
    dt = DTYPES[tag][0]
    if dt is None:
        raise InputError(f"dtype {tag} cannot be written", path=src.path)
    return dt


def align(
    models: Collection | Sequence[PathLike] | PathLike,
    *,
    out: PathLike | None = None,
    reference: str | None = None,
    to: str = "reference",
    spec: PermutationSpec | PathLike | None = None,
    symmetries: Sequence[str] = ("permutation",),
    seed: int = 0,
    base: PathLike | None = None,
    max_iter: int = 100,
    allow_pickle: bool = False,
    private: Sequence[str] = (),
    exclude: Sequence[str] = (),
    progress: Progress | None = None,
    overwrite: bool = False,
) -> AlignResult:
    """Align a collection's hidden units (and, opt-in, their scales) to a reference or to their mean.

    Parameters
    ----------
    models : Collection, or sequence of path-like
        N ≥ 2 full checkpoints (files, directories, globs, ``@list.txt``). LoRA adapters are refused: adapters of
        one base need no alignment.
    out : path, optional
        Directory to write every aligned model into, in its source format (keys, dtypes, metadata and configs
        kept), with ``alignment.json`` (this result) and ``spec.json`` (the spec, reusable with ``spec=``).
        Written atomically.
    reference : str, optional
        Name of the reference model (default: the medoid by weight distance).
    to : {"reference", "mean"}
        ``mean``: iteratively align to the mean of the aligned models.
    spec : PermutationSpec, path or str, optional
        A spec, a YAML/JSON spec file, a built-in (``"vit:heads=4"``, ``"bert"``, ``"sequential"``), or None to
        detect (ViT keys → ``vit``, BERT keys → ``bert``, else a sequential MLP/CNN chain).
    symmetries : sequence of str, default ("permutation",)
        Add ``"scale"`` to canonicalise per-unit scales (ReLU-like nets only: the state dict cannot tell).
    seed : int
        Seeds the group order of the matching; the result is deterministic given it.
    base : path, optional
        Task vectors: every model is aligned to the base, which is not changed.
    max_iter : int
        Most sweeps per matching.
    allow_pickle, private, exclude
        As for :class:`~weightspace.collection.Collection`.
    progress : callable, optional
    overwrite : bool, default False
        Let ``out`` replace a path that is not an earlier ``align`` output (refused otherwise, before any work).

    Returns
    -------
    AlignResult

    Examples
    --------
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from weightspace.io import save_safetensors
    >>> d = Path(tempfile.mkdtemp())
    >>> g = torch.Generator().manual_seed(0)
    >>> w = {"net.0.weight": torch.randn(6, 4, generator=g), "net.2.weight": torch.randn(3, 6, generator=g)}
    >>> p = torch.randperm(6, generator=g)
    >>> save_safetensors(d / "a.safetensors", w)
    >>> shuffled = {"net.0.weight": w["net.0.weight"][p], "net.2.weight": w["net.2.weight"][:, p]}
    >>> save_safetensors(d / "b.safetensors", shuffled)
    >>> res = align([d / "a.safetensors", d / "b.safetensors"], reference="a")
    >>> res.models[1].distance_before > 0, res.models[1].distance_after
    (True, 0.0)
    """
    opts = AlignOptions(
        reference=reference, to=to, spec=spec, symmetries=tuple(symmetries), seed=seed, max_iter=max_iter
    )
    coll = as_collection(models, base=base, allow_pickle=allow_pickle, private=private, exclude=exclude)
    if out is not None:
        _check_out(Path(out), coll, overwrite=overwrite)
    aligned, result = align_collection(coll, opts, progress=progress)
    if out is not None:
        result = _write(Path(out), aligned, result)
    return result


# ------------------------------------------------------------------------------------------------ aligned null
def _draw_seed(seed: int, draw: int, model: int, unit: str) -> int:
    digest = hashlib.sha256(f"align-null\0{seed}\0{draw}\0{model}\0{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _gram32(n: int, numel: int, row: Callable[[int], torch.Tensor]) -> torch.Tensor:
    """Gram (float64) of ``n`` rows ``row(i)`` held as float32 (half a float64 stack), summed in column chunks."""
    x = torch.empty(n, numel, dtype=torch.float32)  # (n_models, D)
    for i in range(n):
        x[i] = row(i).reshape(-1)
    gram = torch.zeros(n, n, dtype=torch.float64)
    step = max(1, (16 << 20) // (8 * n))
    for c0 in range(0, numel, step):
        xc = x[:, c0 : c0 + step].to(torch.float64)  # (n_models, chunk)
        gram += xc @ xc.T
    return gram


def aligned_null_grams(
    collection: Collection,
    result: AlignResult,
    options: AlignOptions,
    *,
    n_null: int,
    seed: int,
    progress: Progress | None = None,
) -> dict[str, list[torch.Tensor]]:
    """Centered Gram matrices of a matched Gaussian null, aligned by the same procedure as the collection.

    Each draw is N models with the collection's shapes, ``x_i = μ + r_i z_i / ‖z_i‖`` per unit (μ the raw mean
    of the members, ``r_i = ‖x_i − μ‖`` the raw centered norms, ``z_i`` iid standard Gaussian), plus the base for
    task vectors: the spread of the collection with nothing shared beyond its mean. The draw is then aligned with
    the same spec, symmetries, reference rule (medoid, the same reference index, or the base), target and seed,
    and the centered Gram of its aligned members is returned per unit. Alignment alone pulls unrelated models
    together, so an aligned collection must be compared with this, never with a raw null.

    Parameters
    ----------
    collection : Collection
        The *unaligned* collection.
    result : AlignResult
        Its alignment (for the spec and the reference).
    options : AlignOptions
        The options it was aligned with.
    n_null : int
        Draws.
    seed : int
        Seeds the draws (with the draw, model and unit).

    Returns
    -------
    dict of str to list of Tensor of shape (n_models, n_models), float64
        Per unit, one double-centered Gram per draw.
    """
    from weightspace.align._file import spec_from_dict

    coll = collection
    n = coll.n_models
    units = list(coll.units)
    unit_keys = [u.name for u in units]
    spec = spec_from_dict(result.spec).restrict(unit_keys)
    if "scale" not in options.symmetries:
        spec = spec.without_scale()
    sizes = {g.name: result.groups[g.name] for g in spec.groups}
    stats = _unit_grams(coll)
    base = coll.base
    base_state = (
        {u.name: base.read(u.name).to(torch.float64).reshape(u.shape) for u in units} if base is not None else None
    )
    mean = {u.name: stats[u.name][1].reshape(u.shape) for u in units}
    radius = {}
    for u in units:
        g = stats[u.name][0]
        centered = g - g.mean(0, keepdim=True) - g.mean(1, keepdim=True) + g.mean()
        radius[u.name] = centered.diagonal().clamp_min(0).sqrt()  # (n,) ‖x_i − μ‖
    ref = None
    if base is None:
        ref = coll.names.index(result.reference) if options.reference is not None else None

    def member(d: int, i: int, u: Any) -> torch.Tensor:
        gen = torch.Generator().manual_seed(_draw_seed(seed, d, i, u.name))
        z = torch.randn(u.numel, generator=gen, dtype=torch.float64)
        scale = radius[u.name][i] / z.norm().clamp_min(torch.finfo(torch.float64).tiny)
        return mean[u.name] + (z * scale).reshape(u.shape)

    out: dict[str, list[torch.Tensor]] = {k: [] for k in unit_keys}
    for d in range(n_null):

        def load(i: int, d: int = d) -> dict[str, torch.Tensor]:
            st = {u.name: member(d, i, u) for u in units}
            if base_state is not None:
                st = {k: v + base_state[k] for k, v in st.items()}
            return st

        models = _Models(n, load, unit_keys)
        r = ref
        if base is None and r is None:
            gram = torch.zeros(n, n, dtype=torch.float64)
            for u in units:
                gram += _gram32(n, u.numel, lambda i, u=u, d=d: member(d, i, u))
            r = _medoid(gram)
        fit = _fit(
            models,
            spec,
            sizes,
            options,
            ref=r,
            ref_state=base_state,
            progress=progress,
            stage=f"align null {d + 1}/{n_null}",
        )
        for u in units:
            entries = spec.entries(u.name)
            shift = base_state[u.name] if base_state is not None else 0.0

            def aligned(
                i: int,
                u: Any = u,
                d: int = d,
                entries: Any = entries,
                shift: Any = shift,
                tfs: Any = fit.transforms,
            ) -> torch.Tensor:
                # Task-vector nulls are aligned as full weights (base + member), then the base is taken off again.
                return transform_tensor(member(d, i, u) + shift, entries, tfs[i]) - shift

            gram = _gram32(n, u.numel, aligned)
            centered = gram - gram.mean(0, keepdim=True) - gram.mean(1, keepdim=True) + gram.mean()
            out[u.name].append((centered + centered.T) / 2)
    return out
