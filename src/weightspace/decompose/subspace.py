"""``SharedSubspace``: the one fitted object of weightspace, and the ``.wsz`` archive is its saved form.

``__init__`` stores keyword-only hyperparameters and nothing else (scikit-learn contract). ``fit`` fits every
unit of a collection with the registered unit-fit class of ``method`` (see
:mod:`weightspace.decompose._unitfit`), either in memory or, with ``out=``, streaming each unit's stored tensors
straight into the archive's member files (memory ``O(N² + one chunk)`` per unit). ``save`` writes an archive
from a fit held in memory; ``load`` opens one lazily (stored tensors are read when used). Compress, project,
reconstruct, the ``subspace`` merge and coefficient-only adapters all work through this object, so they share
one rank rule, one zero tolerance and one projection.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from weightspace._atomic import check_output
from weightspace._progress import report
from weightspace._validation import Interval, Kind, Options, PairOf, validate_params
from weightspace.backends import RunOptions, Task, open_executor, resolve_device
from weightspace.collection import Collection
from weightspace.decompose._archive import (
    EXTRA_MEMBERS,
    STORAGE_DTYPES,
    Archive,
    ArchiveWriter,
    BaseRecord,
    Manifest,
    MemberDigest,
    ModelRecord,
    PrivateRecord,
    iter_private_specs,
    model_record,
    unit_member_name,
)
from weightspace.decompose._fitjobs import MemberFit, fit_member, fit_unit, hash_sources
from weightspace.decompose._project import ProjectResult, project_models
from weightspace.decompose._unitfit import (
    DEFAULT_CHUNK_BYTES,
    UNIT_FITS,
    FitParams,
    MemoryStore,
    UnitFit,
    unit_fit_for,
)
from weightspace.decompose.hosvd import TuckerUnit
from weightspace.decompose.lora import AutoUnit
from weightspace.decompose.pca import PCAUnit
from weightspace.decompose.rank import choose_rank, sign_flips, zero_tolerance
from weightspace.errors import ArchiveError, NotFittedError, ParameterError, ShapeMismatchError, TensorKeyError
from weightspace.io import DTYPES, PeftSource
from weightspace.units import UnitSpec, UnitStack

__all__ = ["SharedSubspace"]

Progress = Callable[[str, int, int], None]
PathLike = str | os.PathLike[str]


@dataclass
class _Provenance:
    """Where the fitted models came from: what ``save`` and ``reconstruct`` need besides the unit fits."""

    kind: str = "full"
    delta: bool = False
    base: BaseRecord | None = None
    models: list[ModelRecord] | None = None
    private: list[PrivateRecord] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    collection: Collection | None = None
    archive: Archive | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    # Optional archive members (EXTRA_MEMBERS) by name: the tensors to write (an archive-backed fit copies its own).
    members: dict[str, Mapping[str, torch.Tensor]] = field(default_factory=dict)


class SharedSubspace:
    """The shared weight subspace of a model collection, one fitted decomposition per unit (layer weight).

    Parameters
    ----------
    n_components : int, float or pair, default 16
        Components per unit: an int count (capped by the unit's numerical rank), or a float in (0, 1) read as
        the fraction of centered variance to keep. Two-mode methods (``hosvd``) take a pair ``(k1, k2)`` too.
    method : str, default ``auto``
        A registered decomposition (:data:`~weightspace.decompose.UNIT_FITS`): ``pca`` is model-axis PCA
        (basis of flattened weights), ``hosvd`` zero-centered Tucker on the weight axes (``μ + U C_i Vᵀ``; 1-D
        units fall back to PCA; LoRA units get the factored fit, ``lora-hosvd``, which never forms a dense
        update). ``auto`` fits LoRA units factored and every other unit with PCA.
    center : bool, default True
        Subtract the mean model. Without centering the first component mostly re-discovers the mean.
    svd_solver : {``auto``, ``gram``, ``tsqr``}, default ``auto``
        ``auto`` uses the float64 Gram route and switches to a streamed TSQR when a kept component has
        ``σ_k/σ_1 < 1e-7``.
    modes : tuple of int, default (1, 2)
        Tucker modes to compress.
    chunk_bytes : int
        Memory budget for one streamed chunk (float64, across all models).
    storage_dtype : {``float32``, ``float64``, ``float16``, ``bfloat16``}, default ``float32``
        dtype of the stored means, bases and coefficients when saved.

    Attributes
    ----------
    units_ : dict of str to UnitFit
        One fitted unit per unit key, in natural order.
    layer_keys_ : list of str
    n_models_ : int
    model_names_ : list of str
    path_ : Path or None
        The archive this fit lives in (after ``fit(out=...)``, ``save`` or ``load``).
    manifest_ : Manifest or None
        The archive's typed manifest.
    mean_ : dict of str to Tensor of shape unit_shape
    basis_ : dict of str to Tensor of shape (n_components, prod(unit_shape))
        PCA units: orthonormal rows.
    factors_ : dict of str to tuple of Tensor
        Tucker units: ``(U (rows, k1), V (cols, k2))``.
    coefficients_ : dict of str to Tensor
        ``(n_models, k)`` for PCA units, ``(n_models, k1, k2)`` for Tucker units.
    singular_values_ : dict of str to Tensor of shape (n_models,)
        Full spectrum used for rank selection (Tucker: mode-1 singular values).
    explained_variance_ratio_ : dict of str to Tensor
        Against the full spectrum.
    n_components_ : dict of str to int or tuple of int
    method_ : dict of str to str

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> models = [{"w": torch.randn(4, 6, generator=g), "b": torch.randn(4, generator=g)} for _ in range(5)]
    >>> ss = SharedSubspace(n_components=2).fit(models)
    >>> ss.n_components_["w"], tuple(ss.basis_["w"].shape)
    (2, (2, 24))
    >>> coef = ss.transform(models[0])
    >>> tuple(coef["w"].shape)
    (2,)
    >>> SharedSubspace(n_components=0).fit(models)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    weightspace.errors.ParameterError: The 'n_components' parameter of SharedSubspace must be an int >= 1 or ...
    """

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "n_components": [Interval(int, 1, None), Interval(float, 0, 1, closed="neither")],
        "center": [Kind((bool,), "a bool")],
        "svd_solver": [Options(("auto", "gram", "tsqr"))],
        "modes": [Options(((1, 2), (1,), (2,)))],
        "chunk_bytes": [Interval(int, 1024, None)],
        "storage_dtype": [Options(tuple(STORAGE_DTYPES))],
    }

    def __init__(
        self,
        *,
        n_components: int | float | tuple[int | float, int | float] = 16,
        method: str = AutoUnit.method,
        center: bool = True,
        svd_solver: str = "auto",
        modes: tuple[int, ...] = (1, 2),
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        storage_dtype: str = "float32",
    ):
        self.n_components = n_components
        self.method = method
        self.center = center
        self.svd_solver = svd_solver
        self.modes = modes
        self.chunk_bytes = chunk_bytes
        self.storage_dtype = storage_dtype

    _PARAM_NAMES: ClassVar[tuple[str, ...]] = (
        "n_components",
        "method",
        "center",
        "svd_solver",
        "modes",
        "chunk_bytes",
        "storage_dtype",
    )

    def get_params(self) -> dict[str, Any]:
        """Hyperparameters as passed to ``__init__``."""
        return {name: getattr(self, name) for name in self._PARAM_NAMES}

    def _validate(self) -> None:
        params = self.get_params()
        rules = dict(self._parameter_constraints)
        rules["method"] = [Options(UNIT_FITS.names())]
        if isinstance(self.n_components, tuple):
            # A two-mode method may take (k1, k2); each entry obeys the scalar rule.
            rules["n_components"] = [PairOf(tuple(self._parameter_constraints["n_components"]))]
        validate_params("SharedSubspace", rules, params)

    def _fit_params(self, run: RunOptions | None = None, cache_bytes: int | None = None) -> FitParams:
        run = run if run is not None else RunOptions()
        return FitParams(
            n_components=self.n_components,
            center=self.center,
            svd_solver=self.svd_solver,
            modes=tuple(self.modes),
            chunk_bytes=self.chunk_bytes,
            device=str(resolve_device(run.device)),
            cache_bytes=run.cache_bytes if cache_bytes is None else cache_bytes,
        )

    # -- fitting -----------------------------------------------------------------------------------------
    def fit(
        self,
        X: Collection | Sequence[Mapping[str, torch.Tensor]],
        *,
        out: PathLike | None = None,
        progress: Progress | None = None,
        overwrite: bool = False,
        threads: int | None = None,
        scheduler: str | None = None,
        client: Any = None,
        device: str | None = None,
        run: RunOptions | None = None,
    ) -> SharedSubspace:
        """Fit one decomposition per unit.

        Units are independent: they run ``threads`` at a time on this machine (default: every core), or on Dask
        workers (``scheduler``/``client``) that read their units from the paths they see and, with ``out``, write
        their own archive members. Whatever the backend, each unit's maths (and float64 accumulation order) is
        the same, so results agree to float64 rounding.

        Parameters
        ----------
        X : Collection or sequence of mapping of str to Tensor
            Models (members: task vectors with a base, raw weights otherwise). In-memory models must share keys
            and shapes.
        out : path, optional
            Stream the fit straight into an archive at ``out`` (replaced atomically; memory stays bounded) and
            return the fit backed by it. Without ``out`` everything is held in memory (``save`` writes it).
        progress : callable, optional
            ``progress("units", done, total)`` after each unit.
        overwrite : bool, default False
            Let ``out`` replace a path that is not a weightspace archive (refused otherwise, before any work).
        threads : int, optional
            Units in flight on this machine (memory is per unit in flight); default every core.
        scheduler : str, optional
            ``local``, ``local:N`` (a LocalCluster of N workers) or ``tcp://HOST:PORT``: fit on Dask.
        client : distributed.Client, optional
            A running Dask client instead of ``scheduler``.
        device : {"cpu", "cuda", "auto"}, optional
            Where the linear algebra runs (default cpu).
        run : RunOptions, optional
            All of the above at once (keywords given here take precedence).

        Returns
        -------
        self
        """
        self._validate()
        if out is not None:
            check_output(out, "archive", overwrite=overwrite)
        opts = RunOptions.of(run, threads=threads, scheduler=scheduler, client=client, device=device)
        self._fit_params(opts)  # a bad device fails before anything is read
        stacks, names, prov = _inputs(X, hash_base=out is None)
        self._reset()
        coll = X if isinstance(X, Collection) else None
        if out is None:
            with open_executor(opts) as ex:
                params = self._fit_params(opts, ex.task_bytes(opts.cache_bytes))
                shared = ex.share(coll) if coll is not None else None
                tasks = [
                    Task(
                        fit_unit,
                        (shared if coll is not None else st, st.spec.name, self.method, params),
                        _label(st),
                    )
                    for st in stacks
                ]
                fitted: dict[int, UnitFit] = {}
                for i, unit in ex.run(tasks):
                    fitted[i] = unit
                    report(progress, "units", len(fitted), len(stacks))
            self.units_ = {st.spec.name: fitted[i] for i, st in enumerate(stacks)}
            self.n_models_ = len(names)
            self.model_names_ = list(names)
            self._prov = prov
            return self
        with ArchiveWriter(out, self.storage_dtype, overwrite=overwrite) as writer, open_executor(opts) as ex:
            params = self._fit_params(opts, ex.task_bytes(opts.cache_bytes))
            shared = ex.share(coll) if coll is not None else None
            # The same workers hash the sources (for the manifest), first: that also warms their page cache. A
            # few models per task keep the per-task overhead of thousands of tiny models small.
            todo = [] if coll is None else [-1] * (coll.base is not None) + list(range(coll.n_models))
            step = max(1, -(-len(todo) // (4 * ex.slots)))
            hashes = [todo[j : j + step] for j in range(0, len(todo), step)]
            tasks = [
                Task(hash_sources, (shared, batch), f"hashing models {batch[0]}…{batch[-1]}") for batch in hashes
            ]
            tasks += [
                Task(
                    fit_member,
                    (
                        shared if coll is not None else st,
                        st.spec.name,
                        self.method,
                        params,
                        str(writer.member_path(i)),
                        self.storage_dtype,
                    ),
                    _label(st),
                )
                for i, st in enumerate(stacks)
            ]
            members: dict[int, MemberFit] = {}
            hashed = 0
            for t, result in ex.run(tasks):
                if t < len(hashes):
                    assert coll is not None
                    for j, digest in zip(hashes[t], result, strict=True):
                        (coll.base if j < 0 else coll.sources[j]).remember_sha256(digest)  # type: ignore[union-attr]
                    hashed += len(result)
                    report(progress, "hash", hashed, len(todo))
                    continue
                members[t - len(hashes)] = result
                report(progress, "units", len(members), len(stacks))
            units = [_from_member(stacks[i].spec, members[i], i) for i in range(len(stacks))]
            digests = {unit_member_name(i): members[i].digest for i in range(len(stacks))}
            if coll is not None:
                prov.base = _base_record(coll)
            self._write_rest(writer, units, names, prov, digests=digests)
        return self._adopt(Archive(out, verify=False))

    def size_estimate(self, X: Collection, *, floor: bool = False) -> int:
        """Bytes of tensor data a fit of ``X`` would write at the requested ranks, from shapes alone.

        The sum of :meth:`size_estimates`. Headers and the manifest come on top. Nothing is read, so it can
        refuse an archive before anything is written.

        Parameters
        ----------
        X : Collection
        floor : bool, default False
            The least any fit writes instead: every unit at zero components (a dense unit's mean, nothing of a
            factored LoRA unit) plus the private tensors; a lower bound for the free-space check.

        Returns
        -------
        int
        """
        return sum(self.size_estimates(X, floor=floor).values())

    def size_estimates(self, X: Collection, *, floor: bool = False) -> dict[str, int]:
        """Per unit (and per private tensor), the bytes a fit of ``X`` would write, from shapes alone.

        Each unit's stored tensors and coefficients at its method's requested coefficient shape (integer ranks
        capped by the unit's shape, the number of models and, for LoRA units, the sum of the adapters' ranks; a
        variance fraction counted as one component, the least it keeps), in the storage dtype; each private
        tensor at its source size summed over the models.

        Parameters
        ----------
        X : Collection
        floor : bool, default False
            As in :meth:`size_estimate`.

        Returns
        -------
        dict of str to int
            Unit or private key → bytes, in the collection's order.
        """
        self._validate()
        params = self._fit_params()
        item = STORAGE_DTYPES[self.storage_dtype].itemsize
        n = X.n_models
        out: dict[str, int] = {}
        for spec in X.units:
            cls = unit_fit_for(self.method, spec)
            span = None
            if spec.lora:  # the members' joint rank is at most the sum of their ranks
                span = sum(src.modules[spec.name].rank for src in X.sources if isinstance(src, PeftSource))
            coef = cls.requested_coef_shape(spec, n, params, span)
            if floor:
                coef = tuple(0 for _ in coef)
            stored = sum(math.prod(shape) for shape in cls.layout(spec, coef).values())
            out[spec.name] = (stored + n * math.prod(coef)) * item
        for key in X.private:
            out[key] = sum(
                math.prod(entry.shape) * DTYPES[entry.dtype][1]
                for entry in (src.entries.get(key) for src in X.sources)
                if entry is not None
            )
        return out

    def _reset(self) -> None:
        self.units_: dict[str, UnitFit] = {}
        self.n_models_ = 0
        self.model_names_: list[str] = []
        self.path_: Path | None = None
        self.manifest_: Manifest | None = None
        self._prov = _Provenance()
        if hasattr(self, "_ipca"):
            del self._ipca

    def _adopt(self, archive: Archive) -> SharedSubspace:
        """Become the fit stored in ``archive`` (lazy: stored tensors are read when used)."""
        m = archive.manifest
        units: dict[str, UnitFit] = {}
        for rec in m.units:
            cls = UNIT_FITS.get(rec.method)
            coef = archive.coefficients(rec.name)
            try:
                units[rec.name] = cls.from_record(rec, coef, archive.unit_source(rec.name))
            except ShapeMismatchError as err:
                raise ArchiveError(err.message, path=archive.path, tensor=rec.name) from None
            archive.check_unit_layout(rec.name, units[rec.name].stored_layout())
            if units[rec.name].n_models != len(m.models):
                raise ArchiveError(
                    f"stored coefficients have {units[rec.name].n_models} rows for {len(m.models)} models",
                    path=archive.path,
                    tensor=rec.name,
                )
        self.units_ = units
        self.n_models_ = len(m.models)
        self.model_names_ = [r.name for r in m.models]
        self.path_ = archive.path
        self.manifest_ = m
        self._prov = _Provenance(
            kind=m.kind,
            delta=m.delta,
            base=m.base,
            models=list(m.models),
            private=list(m.private),
            excluded=list(m.excluded),
            archive=archive,
            extras=dict(m.extras),
        )
        return self

    @classmethod
    def load(cls, path: PathLike, *, verify: bool = True) -> SharedSubspace:
        """Open a saved subspace (a ``.wsz`` archive) lazily; hyperparameters come from its manifest.

        Parameters
        ----------
        path : path
            The archive directory.
        verify : bool, default True
            Check every member's sha256 first.

        Returns
        -------
        SharedSubspace
        """
        archive = Archive(path, verify=verify)
        m = archive.manifest
        n_comp: Any = tuple(m.n_components) if isinstance(m.n_components, list) else m.n_components
        obj = cls(
            n_components=n_comp,
            method=m.method,
            center=m.center,
            svd_solver=m.svd_solver,
            modes=tuple(m.modes),
            storage_dtype=m.storage_dtype,
        )
        obj._reset()
        return obj._adopt(archive)

    def save(self, path: PathLike, *, overwrite: bool = False) -> Path:
        """Write this fit as an archive at ``path`` (replaced atomically); returns the path.

        Unit members of an archive-backed fit are hard-linked (or copied) when nothing about them changed. An
        existing ``path`` that is not a weightspace archive is replaced only with ``overwrite=True``.
        """
        self._check_fitted()
        self._rewrite(Path(path), overwrite=overwrite)
        return Path(path)

    def project(
        self,
        models: Sequence[PathLike] | Sequence[Mapping[str, torch.Tensor]],
        *,
        add: bool = False,
        base: PathLike | None = None,
        allow_pickle: bool = False,
        progress: Progress | None = None,
        threads: int | None = None,
        scheduler: str | None = None,
        client: Any = None,
    ) -> ProjectResult:
        """Residuals of unseen models against this subspace, beside the mean-only baseline.

        Units run ``threads`` at a time (or on Dask); each unit's stored tensors are read once for all models,
        and the models' members are projected in batched products.

        Parameters
        ----------
        models : sequence of path-like, or of mapping of str to Tensor
            MODELS as on the command line (files, dirs, globs, ``@list``), or in-memory members keyed by unit.
        add : bool, default False
            Append the projected models (coefficients, private tensors, source records) to the saved archive,
            without refitting.
        base : path, optional
            Base model for task-vector subspaces (default: the recorded path; sha256 checked).

        Returns
        -------
        ProjectResult
        """
        self._check_fitted()
        run = RunOptions.of(threads=threads, scheduler=scheduler, client=client)
        return project_models(
            self, models, add=add, base=base, allow_pickle=allow_pickle, progress=progress, run=run
        )

    def _private_reader(
        self,
    ) -> tuple[dict[str, tuple[torch.dtype, tuple[int, ...]]], Callable[[str], torch.Tensor]]:
        return _private_plan(self._prov, self.model_names_)

    def _rewrite(
        self,
        path: Path,
        *,
        extra_models: Sequence[ModelRecord] = (),
        extra_coefficients: Mapping[str, torch.Tensor] | None = None,
        private: tuple[dict[str, tuple[torch.dtype, tuple[int, ...]]], Callable[[str], torch.Tensor]]
        | None = None,
        overwrite: bool = False,
    ) -> None:
        """Write the fit (plus added models) as an archive at ``path`` and adopt it."""
        with ArchiveWriter(path, self.storage_dtype, overwrite=overwrite) as writer:
            units = [self._write_unit(writer, i, unit) for i, unit in enumerate(self.units_.values())]
            coefs = {u.spec.name: u.coefficients for u in units}
            if extra_coefficients:
                coefs = {k: torch.cat([c, extra_coefficients[k].to(torch.float64)]) for k, c in coefs.items()}
            names = [*self.model_names_, *(m.name for m in extra_models)]
            models = [*_model_records(self._prov, self.model_names_, [u.spec for u in units]), *extra_models]
            self._write_rest(writer, units, names, self._prov, coefficients=coefs, models=models, private=private)
        self._adopt(Archive(path, verify=False))

    def _write_unit(self, writer: ArchiveWriter, i: int, unit: UnitFit) -> UnitFit:
        member = unit_member_name(i)
        arc = self._prov.archive
        rec = unit.record()
        if (
            arc is not None
            and rec.member is not None
            and arc.manifest.storage_dtype == writer.storage_dtype
            and getattr(unit.source, "archive", None) is arc
        ):
            writer.link_or_copy(arc.member_file(rec.member), member)
        else:
            store = writer.unit_store(i)
            layout = unit.stored_layout()
            store.declare(layout)
            for name in layout:
                store.write(name, unit.tensor(name))
        return _with_member(unit, i)

    def _write_rest(
        self,
        writer: ArchiveWriter,
        units: Sequence[UnitFit],
        names: Sequence[str],
        prov: _Provenance,
        *,
        coefficients: Mapping[str, torch.Tensor] | None = None,
        models: Sequence[ModelRecord] | None = None,
        private: tuple[dict[str, tuple[torch.dtype, tuple[int, ...]]], Callable[[str], torch.Tensor]]
        | None = None,
        digests: Mapping[str, MemberDigest] | None = None,
    ) -> None:
        writer.write_coefficients(coefficients or {u.spec.name: u.coefficients for u in units})
        specs, read = private or _private_plan(prov, names)
        writer.write_private(specs, read)
        for member, tensors in prov.members.items():
            writer.write_member(member, tensors)
        if prov.archive is not None:
            for member in EXTRA_MEMBERS:
                if member in prov.archive.manifest.members and member not in prov.members:
                    writer.link_or_copy(prov.archive.member_file(member), member)
        if models is None:
            models = _model_records(prov, names, [u.spec for u in units])
        writer.finish(
            {
                "method": self.method,
                "n_components": list(self.n_components)
                if isinstance(self.n_components, tuple)
                else self.n_components,
                "center": self.center,
                "svd_solver": self.svd_solver,
                "modes": list(self.modes),
                "storage_dtype": self.storage_dtype,
                "kind": prov.kind,
                "delta": prov.delta,
                "base": prov.base,
                "models": list(models),
                "units": [u.record() for u in units],
                "private": prov.private,
                "excluded": prov.excluded,
                "extras": prov.extras,
            },
            digests,
        )

    def partial_fit(self, X: Mapping[str, torch.Tensor] | Sequence[Mapping[str, torch.Tensor]]) -> SharedSubspace:
        """Add one model (or a batch) to a PCA fit without revisiting earlier models (exact incremental SVD).

        Components are kept up to the rank of the data seen so far, so ``partial_fit`` over all models equals
        ``fit`` (to float64 rounding); ``n_components`` truncates only the exposed attributes. Memory is that of
        the untruncated basis, ``O(n_seen · D)`` per unit. Model-axis PCA only.

        References
        ----------
        Ross et al., "Incremental Learning for Robust Visual Tracking", IJCV 2008 (mean-corrected update).
        """
        self._validate()
        batch = [X] if isinstance(X, Mapping) else list(X)
        if not batch:
            return self
        if not hasattr(self, "_ipca"):
            shapes = {k: tuple(v.shape) for k, v in batch[0].items()}
            if any(unit_fit_for(self.method, UnitSpec(k, s)) is not PCAUnit for k, s in shapes.items()):
                raise ParameterError(f"partial_fit supports method={PCAUnit.method!r} only")
            self._reset()
            self._ipca: dict[str, _IPCAState] = {}
            self._shapes: dict[str, tuple[int, ...]] = shapes
            self._prov = _Provenance()
        for i, model in enumerate(batch):
            _check_model_keys(model, self._shapes, f"partial_fit batch item {i}")
        for key in self._shapes:
            x_new = torch.stack([m[key].reshape(-1).to(torch.float64) for m in batch])  # (b, D)
            self._ipca_update(key, x_new)
        self.n_models_ += len(batch)
        self.model_names_ += [f"model-{j}" for j in range(self.n_models_ - len(batch), self.n_models_)]
        for key in self._shapes:
            self.units_[key] = self._ipca_expose(key)
        return self

    def _ipca_update(self, key: str, x_new: torch.Tensor) -> None:
        st = self._ipca.get(key)
        b = x_new.shape[0]
        batch_mean = x_new.mean(0) if self.center else torch.zeros(x_new.shape[1], dtype=torch.float64)
        if st is None:
            u, s, vh = torch.linalg.svd(x_new - batch_mean, full_matrices=False)
            self._ipca[key] = _IPCAState(b, batch_mean, s, vh, u * s)
            return
        n = st.n
        if self.center:
            mean = (n * st.mean + b * batch_mean) / (n + b)
            correction = ((n * b / (n + b)) ** 0.5) * (st.mean - batch_mean)
            stacked = torch.cat([st.s[:, None] * st.vh, x_new - batch_mean, correction[None]])
        else:
            mean = st.mean
            stacked = torch.cat([st.s[:, None] * st.vh, x_new])
        _, s, vh = torch.linalg.svd(stacked, full_matrices=False)
        # Past models' coefficients in the new basis: x_i − μ_new = c_i V_old + (μ_old − μ_new).
        coef = st.coef @ (st.vh @ vh.T) + ((st.mean - mean) @ vh.T)[None]
        coef = torch.cat([coef, (x_new - mean) @ vh.T])
        self._ipca[key] = _IPCAState(n + b, mean, s, vh, coef)

    def _ipca_expose(self, key: str) -> UnitFit:
        st = self._ipca[key]
        sv = torch.zeros(st.n, dtype=torch.float64)
        sv[: min(st.n, st.s.numel())] = st.s[: st.n]
        tol = zero_tolerance(sv, st.n, st.vh.shape[1], float(st.coef.norm()))
        sv = torch.where(sv > tol, sv, torch.zeros_like(sv))
        k = choose_rank(sv, self._fit_params().scalar_rank, tol)
        flips = sign_flips(st.coef[:, :k])  # the same rule as fit: largest-|coefficient| model positive
        spec = UnitSpec(key, self._shapes[key])
        total = float((sv**2).sum())
        mean_sq = float(st.mean @ st.mean)
        denom = mean_sq + total / st.n
        record = PCAUnit.make_record(spec, sv, k, "incremental", mean_sq / denom if denom > 0 else 0.0)
        store = MemoryStore(
            {"mean": st.mean.reshape(spec.shape), "basis": (st.vh[:k] * flips[:, None]).reshape(k, *spec.shape)}
        )
        return PCAUnit(spec, st.coef[:, :k] * flips, store, record)

    # -- using a fit -------------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not getattr(self, "units_", None):
            raise NotFittedError(
                "This SharedSubspace instance is not fitted yet. Call 'fit' with appropriate arguments before "
                "using this estimator."
            )

    def unit(self, name: str) -> UnitFit:
        """The fitted unit ``name``."""
        self._check_fitted()
        try:
            return self.units_[name]
        except KeyError:
            raise TensorKeyError("not a unit of this subspace", tensor=name) from None

    def model_index(self, name: str) -> int:
        """Position of fitted model ``name``."""
        self._check_fitted()
        try:
            return self.model_names_.index(name)
        except ValueError:
            listing = ", ".join(repr(n) for n in self.model_names_[:10])
            raise ParameterError(f"no model {name!r} in this subspace; models: {listing}") from None

    def transform(self, X: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Coefficients of one model (its members, e.g. task vectors) in every unit's subspace.

        Parameters
        ----------
        X : mapping of str to Tensor
            Unit name → member of the unit's shape.

        Returns
        -------
        dict of str to Tensor
            ``(k,)`` per PCA unit, ``(k1, k2)`` per Tucker unit.
        """
        self._check_fitted()
        _check_model_keys(X, self.unit_shapes_, "transform input")
        return {key: unit.transform(X[key].to(torch.float64)) for key, unit in self.units_.items()}

    def inverse_transform(self, coefficients: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Members from coefficients (``μ + c Vₖ`` or ``μ + U C Vᵀ``), each in its unit's shape, float64."""
        self._check_fitted()
        out = {}
        for key, unit in self.units_.items():
            if key not in coefficients:
                raise TensorKeyError("no coefficients given for this unit", tensor=key)
            out[key] = unit.inverse_transform(coefficients[key]).reshape(unit.spec.shape)
        return out

    def reconstruct(self, i: int | str) -> dict[str, torch.Tensor]:
        """Fitted model ``i``'s (index or name) members from its stored coefficients, float64."""
        self._check_fitted()
        idx = self.model_index(i) if isinstance(i, str) else int(i)
        return {key: unit.member(idx).reshape(unit.spec.shape) for key, unit in self.units_.items()}

    # -- fitted attributes (views over units_) -----------------------------------------------------------
    @property
    def layer_keys_(self) -> list[str]:
        self._check_fitted()
        return list(self.units_)

    @property
    def unit_shapes_(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(u.spec.shape) for k, u in self.units_.items()}

    @property
    def mean_(self) -> dict[str, torch.Tensor]:
        return {k: u.mean().reshape(u.spec.shape) for k, u in self.units_.items()}

    @property
    def basis_(self) -> dict[str, torch.Tensor]:
        return {k: u.basis() for k, u in self.units_.items() if isinstance(u, PCAUnit)}

    @property
    def factors_(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {k: u.factors() for k, u in self.units_.items() if isinstance(u, TuckerUnit)}

    @property
    def coefficients_(self) -> dict[str, torch.Tensor]:
        return {k: u.coefficients for k, u in self.units_.items()}

    @property
    def singular_values_(self) -> dict[str, torch.Tensor]:
        return {k: u.singular_values for k, u in self.units_.items()}

    @property
    def explained_variance_ratio_(self) -> dict[str, torch.Tensor]:
        return {k: u.explained_variance_ratio for k, u in self.units_.items()}

    @property
    def n_components_(self) -> dict[str, int | tuple[int, ...]]:
        return {k: u.k for k, u in self.units_.items()}

    @property
    def method_(self) -> dict[str, str]:
        return {k: u.method for k, u in self.units_.items()}

    @property
    def kind_(self) -> str:
        """``peft`` for a collection of PEFT adapters, ``full`` otherwise."""
        return self._prov.kind

    @property
    def delta_(self) -> bool:
        """True when members are task vectors (a base was given, or PEFT adapters)."""
        return self._prov.delta

    @property
    def base_(self) -> BaseRecord | None:
        return self._prov.base

    @property
    def models_(self) -> list[ModelRecord]:
        """Per-model source records (what ``reconstruct`` needs)."""
        return _model_records(self._prov, self.model_names_, [u.spec for u in self.units_.values()])

    @property
    def private_(self) -> list[PrivateRecord]:
        return list(self._prov.private)

    @property
    def archive_(self) -> Archive | None:
        """The archive backing this fit, if any."""
        return self._prov.archive


def _label(stack: UnitStack) -> str:
    return f"unit '{stack.spec.name}'"


class _Unread:
    """The tensor source of a unit fitted elsewhere, whose stored tensors are read back from its archive only."""

    def read(self, name: str) -> torch.Tensor:
        raise RuntimeError("this unit was fitted into an archive; load the archive to read its tensors")


def _from_member(spec: UnitSpec, fit: MemberFit, index: int) -> UnitFit:
    """The unit a worker fitted into member ``index`` (record and coefficients; tensors stay in the member)."""
    cls = UNIT_FITS.get(fit.record.method)
    unit = cls(spec, fit.coefficients, _Unread(), fit.record)
    return _with_member(unit, index)


def _with_member(unit: UnitFit, index: int) -> UnitFit:
    """The same fitted unit whose record names its format-2 archive member."""
    unit._record = unit.record().model_copy(update={"member": unit_member_name(index)})
    return unit


@dataclass
class _IPCAState:
    """Untruncated incremental-SVD state of one unit: ``X_c = coef @ vh`` with ``coef = U diag(s)``."""

    n: int
    mean: torch.Tensor  # (D,)
    s: torch.Tensor  # (m,)
    vh: torch.Tensor  # (m, D)
    coef: torch.Tensor  # (n, m)


def _check_model_keys(model: Mapping[str, torch.Tensor], shapes: Mapping[str, tuple[int, ...]], what: str) -> None:
    for key, shape in shapes.items():
        if key not in model:
            raise TensorKeyError(f"{what} lacks this unit", tensor=key)
        if tuple(model[key].shape) != tuple(shape):
            raise ShapeMismatchError(
                f"{what} has shape {tuple(model[key].shape)}, the fit has {shape}", tensor=key
            )


def _inputs(
    X: Collection | Sequence[Mapping[str, torch.Tensor]], *, hash_base: bool = True
) -> tuple[list[UnitStack], list[str], _Provenance]:
    if isinstance(X, Collection):
        prov = _Provenance(
            kind="peft" if X.is_peft else "full",
            delta=X.is_delta,
            base=_base_record(X) if hash_base else None,
            private=[
                PrivateRecord(key=p.key, reason=p.reason, shapes={m: list(s) for m, s in p.shapes.items()})
                for p in X.private.values()
            ],
            excluded=list(X.excluded),
            collection=X,
            # A collection may carry what an archive of it must also store (an aligned collection: its
            # permutations, so that reconstruct can undo them).
            extras=dict(getattr(X, "archive_extras", {})),
            members=dict(getattr(X, "archive_members", {})),
        )
        return [X.stack(u.name) for u in X.units], list(X.names), prov
    models = list(X)
    if models and not isinstance(models[0], Mapping):
        raise ParameterError(
            "fit takes a Collection or in-memory state dicts; for paths use Collection.from_paths(paths)"
        )
    if len(models) < 2:
        raise ParameterError(f"fit needs at least 2 models, got {len(models)}")
    first = models[0]
    shapes = {k: tuple(v.shape) for k, v in first.items()}
    for i, m in enumerate(models[1:], 1):
        _check_model_keys(m, shapes, f"model {i}")
    stacks = [UnitStack.from_tensors([m[k] for m in models], name=k) for k in first]
    return stacks, [f"model-{i}" for i in range(len(models))], _Provenance()


def _base_record(collection: Collection) -> BaseRecord | None:
    if collection.base is None:
        return None
    b = collection.base
    return BaseRecord(path=str(Path(b.path).resolve()), format=b.format, sha256=b.sha256())


def _model_records(prov: _Provenance, names: Sequence[str], units: Sequence[UnitSpec]) -> list[ModelRecord]:
    if prov.models is not None:
        return list(prov.models)
    if prov.collection is not None:
        coll = prov.collection
        owned = {
            name: [k for k in coll.private if k in src.entries]
            for name, src in zip(coll.names, coll.sources, strict=True)
        }
        prov.models = [
            model_record(name, src, units, owned[name]) for name, src in zip(coll.names, coll.sources, strict=True)
        ]
        return list(prov.models)
    # In-memory models: rebuilt as float32 safetensors files keyed by unit name.
    return [
        ModelRecord(
            name=name,
            source_format="memory",
            dtypes={u.name: "F32" for u in units},
            private=[],
            key_order=[u.name for u in units],
        )
        for name in names
    ]


def _private_plan(
    prov: _Provenance, names: Sequence[str]
) -> tuple[dict[str, tuple[torch.dtype, tuple[int, ...]]], Callable[[str], torch.Tensor]]:
    if prov.collection is not None:
        coll = prov.collection
        where: dict[str, tuple[int, str]] = {}
        specs: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
        for stored, i, key, spec in iter_private_specs(coll.names, coll.sources, list(coll.private)):
            where[stored] = (i, key)
            specs[stored] = spec
        return specs, lambda stored: coll.read_private(*where[stored])
    if prov.archive is not None:
        arc = prov.archive
        specs = arc.private_specs()

        def read(stored: str) -> torch.Tensor:
            model, key = stored.split("/", 1)
            return arc.private(model, key)

        return specs, read
    return {}, lambda stored: torch.empty(0)
