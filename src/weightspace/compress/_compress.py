"""``compress``: fit the shared subspace of a collection and save it as an archive, in one streaming pass.

``compress(models, out, ...)`` is ``SharedSubspace(...).fit(collection, out=out)``: each unit is fitted and its
stored tensors streamed straight into its own archive member, so peak memory is about ``N² + one chunk`` per
unit on top of the interpreter. What it returns is measured on disk, with the ratio in honest words.

For PEFT adapters the default method (``auto``) stores every LoRA unit factored (shared ``U``, ``V`` and
per-adapter cores, no dense update). Before anything is written, the archive's size is estimated from the shapes at
the requested ranks; for LoRA inputs an archive estimated larger than the adapters is refused unless
``allow_larger=True``.

Before any work, the output is checked (:func:`weightspace._atomic.check_output`): an existing path that is not a
weightspace archive is refused unless ``overwrite``, an output that is or holds an input is always refused, the
file system must accept writes and have room for at least the archive's unavoidable part (each dense unit's mean,
and the private tensors, in the storage dtype) — so a collection whose headers declare terabytes fails in a second, not
after hours.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from weightspace._atomic import check_output
from weightspace._progress import Progress
from weightspace._words import ratio_words
from weightspace.align import AlignOptions, align_collection
from weightspace.collection import Collection, as_collection
from weightspace.decompose import DEFAULT_CHUNK_BYTES, STORAGE_DTYPES, AutoUnit, SharedSubspace
from weightspace.errors import InputError, ParameterError

__all__ = ["CompressResult", "UnitSummary", "compress", "storage_dtype_for"]

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class UnitSummary:
    """One unit of a compressed archive.

    Attributes
    ----------
    name : str
    shape : list of int
    method : str
        The unit-fit that was used (1-D units under a two-mode method fall back to PCA).
    k : int or list of int
        Components kept (per mode for two-mode methods).
    evr_at_k : float
        Fraction of the unit's centered variance the kept components hold.
    """

    name: str
    shape: list[int]
    method: str
    k: int | list[int]
    evr_at_k: float


@dataclass(frozen=True)
class CompressResult:
    """What ``compress`` wrote, measured on disk.

    Attributes
    ----------
    archive : str
    n_models, n_units, n_private : int
    method : str
    archive_bytes, models_bytes : int
        Size of the archive and of the source checkpoints on disk.
    ratio : float
        ``models_bytes / archive_bytes``: above 1 the archive is smaller.
    ratio_words : str
        The same in words: ``"21× smaller"`` or ``"4.2× larger"``.
    estimated_bytes : int
        Tensor bytes estimated from the shapes before fitting, at the requested ranks (see
        :meth:`~weightspace.decompose.SharedSubspace.size_estimate`).
    units : list of UnitSummary
    wall_s : float
    duplicates : list of list of str
        Groups of models with identical content (they distort the spectrum).
    alignment : dict or None
        With ``align``: the alignment (:meth:`~weightspace.align.AlignResult.to_dict`) the archive stores.
    """

    archive: str
    n_models: int
    n_units: int
    method: str
    archive_bytes: int
    models_bytes: int
    ratio: float
    units: list[UnitSummary]
    n_private: int
    wall_s: float
    ratio_words: str = ""
    estimated_bytes: int = 0
    duplicates: list[list[str]] = field(default_factory=list)
    alignment: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (the ``--json`` output)."""
        return asdict(self)


def storage_dtype_for(coll: Collection, choice: str = "auto") -> str:
    """``choice``, or for ``"auto"`` the storage dtype that keeps the sources' precision.

    ``float64`` when any decomposed tensor is stored as F64 (float32 storage would erase differences below
    ~1e-7 relative while the float64 spectrum reports them as explained), else ``float32``.
    """
    if choice != "auto":
        return choice
    wide = any(
        src.entries[u.name].dtype == "F64" for src in coll.sources for u in coll.units if u.name in src.entries
    )
    return "float64" if wide else "float32"


def compress(
    models: Collection | Sequence[PathLike],
    out: PathLike,
    *,
    base: PathLike | None = None,
    method: str = AutoUnit.method,
    n_components: int | float | tuple[int | float, int | float] = 16,
    center: bool = True,
    svd_solver: str = "auto",
    modes: tuple[int, ...] = (1, 2),
    storage_dtype: str = "auto",
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    allow_pickle: bool = False,
    private: Sequence[str] = (),
    exclude: Sequence[str] = (),
    align: AlignOptions | bool | None = None,
    allow_larger: bool = False,
    progress: Progress | None = None,
    overwrite: bool = False,
    threads: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    device: str | None = None,
) -> CompressResult:
    """Fit the shared subspace of ``models`` and write it as an archive at ``out``.

    Parameters
    ----------
    models : Collection or sequence of path-like
        A :class:`~weightspace.collection.Collection`, or MODELS as on the command line (files, directories,
        globs, ``@list.txt``); ``base``, ``allow_pickle``, ``private`` and ``exclude`` apply to paths only.
    out : path
        Archive directory (conventionally ``*.wsz``); a previous archive there is replaced atomically.
    method, n_components, center, svd_solver, modes, chunk_bytes
        As in :class:`~weightspace.decompose.SharedSubspace` (default ``auto``: LoRA units factored, others PCA).
    storage_dtype : str, default "auto"
        One of :data:`~weightspace.decompose.STORAGE_DTYPES`, or ``auto``: ``float64`` when a source tensor is
        F64, else ``float32`` (see :func:`storage_dtype_for`).
    align : AlignOptions or bool, optional
        Align the models first (``True``: default :class:`~weightspace.align.AlignOptions`). The archive
        stores every model's permutations (``align.safetensors``) and the alignment (manifest
        ``extras["alignment"]``), so :func:`~weightspace.compress.reconstruct` returns each model in its
        original unit order (``aligned=True`` for the aligned one).
    allow_larger : bool, default False
        Write the archive of PEFT adapters even when, estimated from the shapes, it would be larger than the
        adapters (otherwise an :class:`~weightspace.errors.InputError` says both sizes, before anything is written).
    progress : callable, optional
        ``progress(stage, done, total)``.
    overwrite : bool, default False
        Replace an existing ``out`` that is not a weightspace archive (refused otherwise, before any work).
    threads, scheduler, client, device
        Where the units run (see :class:`~weightspace.backends.RunOptions`): ``threads`` units at once here
        (default every core), or Dask workers (``scheduler="local:N"``, ``"tcp://HOST:PORT"``, or ``client=``)
        that write their own archive members; ``device`` for the linear algebra. Results do not depend on them.

    Returns
    -------
    CompressResult

    Examples
    --------
    >>> import tempfile, torch
    >>> from weightspace.io import save_safetensors
    >>> d = tempfile.mkdtemp()
    >>> g = torch.Generator().manual_seed(0)
    >>> for i in range(4):
    ...     save_safetensors(f"{d}/m{i}.safetensors", {"fc.weight": torch.randn(8, 8, generator=g)})
    >>> res = compress([d], f"{d}/a.wsz", n_components=2)
    >>> res.n_models, res.units[0].k
    (4, 2)
    >>> res.ratio_words == ratio_words(res.models_bytes, res.archive_bytes)
    True
    """
    t0 = time.perf_counter()
    coll = as_collection(models, base=base, allow_pickle=allow_pickle, private=private, exclude=exclude)
    storage_dtype = storage_dtype_for(coll, storage_dtype)
    if storage_dtype not in STORAGE_DTYPES:
        raise ParameterError(
            f"The 'storage_dtype' parameter of compress must be one of 'auto', "
            f"{', '.join(repr(d) for d in STORAGE_DTYPES)}. Got {storage_dtype!r} instead."
        )
    ss = SharedSubspace(
        n_components=n_components,
        method=method,
        center=center,
        svd_solver=svd_solver,
        modes=modes,
        chunk_bytes=chunk_bytes,
        storage_dtype=storage_dtype,
    )
    estimates = ss.size_estimates(coll)
    estimate = sum(estimates.values())
    source_bytes = sum(src.nbytes_on_disk() for src in coll.sources)
    if coll.is_peft and estimate > source_bytes and not allow_larger:
        big = max(estimates, key=estimates.__getitem__)
        advice = (
            "Fewer components (--rank) keep it smaller; a factored archive pays off when the adapters outnumber the "
            "components"
            if method == AutoUnit.method
            else f"Fewer components, or the default method {AutoUnit.method!r} (LoRA units stored factored), keep it "
            "smaller"
        )
        raise InputError(
            f"method {method!r} would write about {estimate / 1e6:,.2f} MB of tensors for {source_bytes / 1e6:,.2f} "
            f"MB of adapters ({ratio_words(source_bytes, estimate)}; estimated from the shapes at the requested ranks, "
            f"nothing written; the largest part is '{big}', {estimates[big] / 1e6:,.2f} MB). {advice}; pass "
            "allow_larger=True (--allow-larger) to write it anyway"
        )
    inputs = [s.path for s in coll.sources] + ([coll.base.path] if coll.base is not None else [])
    largest = max(coll.units, key=lambda u: u.numel)
    check_output(
        out,
        "archive",
        overwrite=overwrite,
        inputs=inputs,
        required_bytes=ss.size_estimate(coll, floor=True),
        detail=f"the largest unit is '{largest.name}' of shape {tuple(largest.shape)} ({largest.numel:,} values)",
    )
    alignment = None
    if align:
        coll, result = align_collection(
            coll, align if isinstance(align, AlignOptions) else None, progress=progress
        )
        alignment = result.to_dict()
    ss.fit(
        coll,
        out=out,
        progress=progress,
        threads=threads,
        scheduler=scheduler,
        client=client,
        device=device,
        overwrite=overwrite,
    )
    archive_bytes = sum(p.stat().st_size for p in ss.path_.rglob("*") if p.is_file())  # type: ignore[union-attr]
    model_bytes = sum(m.source_bytes for m in ss.models_)
    units = [
        UnitSummary(
            name=u.spec.name,
            shape=list(u.spec.shape),
            method=u.method,
            k=list(u.k) if isinstance(u.k, tuple) else u.k,
            evr_at_k=u.evr_at_k,
        )
        for u in ss.units_.values()
    ]
    return CompressResult(
        archive=str(out),
        n_models=ss.n_models_,
        n_units=len(units),
        method=method,
        archive_bytes=archive_bytes,
        models_bytes=model_bytes,
        ratio=model_bytes / archive_bytes if archive_bytes else float("inf"),
        units=units,
        n_private=len(coll.private),
        wall_s=time.perf_counter() - t0,
        alignment=alignment,
        ratio_words=ratio_words(model_bytes, archive_bytes),
        estimated_bytes=estimate,
    )
