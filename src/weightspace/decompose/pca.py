"""Model-axis PCA of one unit: the paper's main method, streamed and in float64.

Per unit, ``X`` is N × D (row i = model i's weight, flattened) and ``X_c = X − 1μᵀ``. Two passes:

1. *Spectrum* (:func:`pca_spectrum`): ``G = X_c X_cᵀ`` streamed over row chunks (or built from LoRA factors),
   ``eigh(G) = U diag(σ²) Uᵀ``. If a requested component is ill-conditioned on this route
   (``σ_k/σ_1 < 1e-7``, where squaring has eaten the float64 precision) the spectrum is recomputed from a
   streamed tall-skinny QR of ``X_cᵀ`` instead (``svd_solver="auto"``; force with ``"gram"`` / ``"tsqr"``).
2. *Components* (:func:`pca_components`): ``V_k = diag(1/σ_k) U_kᵀ X_c``, streamed again; the mean and each
   basis chunk go to a ``sink`` (e.g. straight into an archive file) or are assembled in memory.

Coefficients of model i are row i of ``U_k Σ_k``. Signs are fixed so the largest-magnitude entry of each
column of ``U_k`` is positive. Memory is ``O(N² + N · chunk)`` plus whatever the sink keeps.

References
----------
Kaushik et al., "The Universal Weight Subspace Hypothesis", arXiv:2512.05117.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from pydantic import Field, StrictInt

from weightspace.backends import resolve_device, to_device
from weightspace.decompose._gram import (
    ChunkStream,
    GramResult,
    Tick,
    centered_gram,
    factored_gram,
    tsqr_r,
)
from weightspace.decompose._unitfit import (
    DEFAULT_CHUNK_BYTES,
    UNIT_FITS,
    FitParams,
    Parametrisation,
    Residuals,
    TensorStore,
    UnitFit,
    UnitRecord,
    member_groups,
)
from weightspace.decompose.rank import choose_rank, explained_variance_ratio, sign_fix, sign_flips, zero_tolerance
from weightspace.errors import ParameterError
from weightspace.units import UnitSpec, UnitStack

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "ILL_CONDITIONED",
    "PCARecord",
    "PCASpectrum",
    "PCAUnit",
    "PCAUnitFit",
    "pca_basis",
    "pca_components",
    "pca_spectrum",
]

ILL_CONDITIONED = 1e-7
SvdSolver = Literal["auto", "gram", "tsqr"]
Sink = Callable[[int, int, torch.Tensor, torch.Tensor], None]


@dataclass
class PCASpectrum:
    """Phase-1 result for one unit.

    Attributes
    ----------
    n_models, n_features : int
        N and D.
    singular_values : Tensor of shape (n_models,)
        Full spectrum of ``X_c``, decreasing; values within the zero tolerance are set to 0.
    left : Tensor of shape (n_models, k)
        Sign-fixed left singular vectors ``U_k``.
    k : int
        Components kept.
    solver : str
        ``"gram"``, ``"factored-gram"``, ``"covariance"`` or ``"tsqr"``: the route that produced the spectrum.
    gram : GramResult
        The centered Gram matrix and mean inner products the spectrum came from (``Rᵀ R`` on the TSQR route);
        enough to evaluate leave-one-out fits without touching the data again. On the covariance route (more
        models than features, no Gram asked for) ``gram.gram`` is empty.
    components : Tensor of shape (k, n_features) or None
        The sign-fixed basis when the route already produced it (covariance route); phase 2 then reads nothing.
    """

    n_models: int
    n_features: int
    center: bool
    singular_values: torch.Tensor
    left: torch.Tensor
    k: int
    solver: str
    gram: GramResult
    components: torch.Tensor | None = None

    @property
    def raw_sq_norm(self) -> float:
        """``‖X‖_F²``."""
        return self.gram.raw_sq_norm

    @property
    def mean_sq_norm(self) -> float:
        """``‖μ‖²``."""
        return self.gram.mean_sq_norm

    @property
    def explained_variance_ratio(self) -> torch.Tensor:
        """Tensor of shape (n_models,): ``σ_j² / Σ σ²`` against the full spectrum."""
        return explained_variance_ratio(self.singular_values)

    @property
    def total_variance(self) -> float:
        """``‖X_c‖_F²``."""
        return float((self.singular_values**2).sum())

    @property
    def coefficients(self) -> torch.Tensor:
        """Tensor of shape (n_models, k): ``U_k Σ_k``."""
        return self.left * self.singular_values[: self.k]

    @property
    def mean_energy_fraction(self) -> float:
        """``‖μ‖² / (‖μ‖² + mean_i ‖x_i − μ‖²)``: 1 when all models are the mean, 0 for a zero mean."""
        spread = self.total_variance / self.n_models
        denom = self.mean_sq_norm + spread
        return self.mean_sq_norm / denom if denom > 0 else 0.0


@dataclass
class PCAUnitFit(PCASpectrum):
    """A fitted unit held in memory.

    Attributes
    ----------
    mean : Tensor of shape (rows, cols), float64
    basis : Tensor of shape (k, rows * cols), float64, orthonormal rows
    """

    mean: torch.Tensor | None = None
    basis: torch.Tensor | None = None


def _complement_of_ones(n: int) -> torch.Tensor:
    """Orthonormal basis (n × n−1) of the vectors orthogonal to 1, from a Householder reflector."""
    v = torch.full((n,), 1.0 / n**0.5, dtype=torch.float64)
    v[0] -= 1.0
    h = torch.eye(n, dtype=torch.float64) - 2.0 * torch.outer(v, v) / float(v @ v)
    return h[:, 1:]


def _spectrum_from_gram(
    gram: torch.Tensor, center: bool, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    n = gram.shape[0]
    dev = device if device is not None else torch.device("cpu")
    g = to_device(gram, dev)
    if center and n > 1:
        # Centering makes 1 an exact null vector; deflating it keeps Gram rounding noise (~√eps·σ_1) from
        # showing up as a spurious N-th singular value.
        q = to_device(_complement_of_ones(n), dev)  # (n, n - 1)
        evals, evecs = torch.linalg.eigh(q.T @ g @ q)
        evals = torch.cat([evals.cpu(), torch.zeros(1, dtype=torch.float64)])
        evecs = torch.cat([(q @ evecs).cpu(), torch.full((n, 1), 1.0 / n**0.5, dtype=torch.float64)], dim=1)
    else:
        evals, evecs = (t.cpu() for t in torch.linalg.eigh(g))
    order = torch.argsort(evals, descending=True, stable=True)
    return evals[order].clamp_min(0).sqrt(), evecs[:, order]


def _covariance_route(
    stream: ChunkStream, n_components: int | float, device: torch.device
) -> tuple[PCASpectrum, bool]:
    """PCA of an ``N × D`` unit with ``N > D`` from its ``D × D`` covariance (the N × N Gram is never formed).

    Returns the spectrum (with ``components``) and whether a kept component is ill-conditioned on this route.
    """
    stack = stream.stack
    n, d = stack.n, stack.spec.numel
    xc, _ = stream.whole()  # (n, d), centered
    xd = to_device(xc, device)
    cov = xd.T @ xd  # (d, d)
    evals, evecs = torch.linalg.eigh((cov + cov.T) / 2)
    order = torch.argsort(evals.cpu(), descending=True, stable=True)
    sq = evals.cpu()[order].clamp_min(0)  # (d,)
    sv = torch.zeros(n, dtype=torch.float64)
    m = min(n, d)
    sv[:m] = sq[:m].sqrt()
    res = stream.result(torch.zeros(0, 0, dtype=torch.float64))
    res.raw_sq_norm = float(sq.sum()) + n * stream.mean_sq  # ‖X‖² = tr(X_cᵀ X_c) + N ‖μ‖²
    tol = zero_tolerance(sv, n, d, res.raw_sq_norm**0.5)
    k = choose_rank(sv, n_components, tol)
    ill = k > 0 and float(sv[k - 1]) < ILL_CONDITIONED * float(sv[0])
    sv = torch.where(sv > tol, sv, torch.zeros_like(sv))
    sv[max(0, min(n - int(stream.center), d)) :] = 0.0
    k = min(k, max(0, min(n - int(stream.center), d)))
    v = evecs[:, order[:k].to(evecs.device)]  # (d, k)
    left = ((xd @ v) / to_device(sv[:k], device)).cpu() if k else torch.zeros(n, 0, dtype=torch.float64)
    flips = sign_flips(left)  # the rule of every route: each column's largest-|entry| positive
    components = (v.cpu() * flips).T.contiguous()  # (k, d)
    spectrum = PCASpectrum(n, d, stream.center, sv, left * flips, k, "covariance", res, components)
    return spectrum, ill


def _spectrum_from_r(r: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    if r.shape[0] == 0:
        return torch.zeros(n, dtype=torch.float64), torch.eye(n, dtype=torch.float64)
    _, s, vh = torch.linalg.svd(r, full_matrices=True)
    sv = torch.zeros(n, dtype=torch.float64)
    sv[: s.numel()] = s
    return sv, vh.T  # columns: left singular vectors of X_c


def pca_spectrum(
    stack: UnitStack,
    n_components: int | float,
    *,
    center: bool = True,
    svd_solver: SvdSolver = "auto",
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    tick: Tick | None = None,
    device: str | torch.device | None = None,
    stream: ChunkStream | None = None,
    need_gram: bool = True,
) -> PCASpectrum:
    """Phase 1: spectrum, rank and left singular vectors of one unit.

    Parameters
    ----------
    stack : UnitStack
        N members of shape (rows, cols).
    n_components : int or float
        Count, or variance fraction in (0, 1).
    center : bool, default True
        Subtract the mean model first.
    svd_solver : {"auto", "gram", "tsqr"}
        ``auto`` uses the Gram route and falls back to TSQR when a kept component is ill-conditioned.
    chunk_bytes : int
        Budget of one float64 chunk across all members.
    tick : callable, optional
        Called after each chunk (progress).
    device : str or torch.device, optional
        Where the Gram, the eigendecomposition and the QR run (default: cpu).
    stream : ChunkStream, optional
        The unit's chunk stream, shared with phase 2 (a kept unit is then read once for both phases).
    need_gram : bool, default True
        False lets a unit with more models than features take the covariance route (``D × D``, never ``N × N``),
        whose ``gram.gram`` is empty.

    Returns
    -------
    PCASpectrum
    """
    if svd_solver not in ("auto", "gram", "tsqr"):
        raise ParameterError(
            f"The 'svd_solver' parameter must be one of 'auto', 'gram', 'tsqr'. Got {svd_solver!r} instead."
        )
    n, d = stack.n, stack.spec.numel
    dev = resolve_device(device)
    factored = stack.all_factored()
    if stream is None and not (factored and svd_solver != "tsqr"):
        stream = ChunkStream(stack, center=center, chunk_bytes=chunk_bytes, tick=tick)
    if svd_solver != "tsqr" and not factored and not need_gram and n > d and stream is not None and stream.kept:
        spectrum, ill = _covariance_route(stream, n_components, dev)
        if not (svd_solver == "auto" and ill):
            return spectrum
    if svd_solver != "tsqr" and factored:
        res = factored_gram(stack, center=center, device=dev)
        solver = "factored-gram"
    elif svd_solver != "tsqr":
        res = centered_gram(stack, center=center, chunk_bytes=chunk_bytes, tick=tick, device=dev, stream=stream)
        solver = "gram"
    else:
        res = None
        solver = "tsqr"
    if res is not None:
        sv, u = _spectrum_from_gram(res.gram, center, dev)
        tol = zero_tolerance(sv, n, d, res.raw_sq_norm**0.5)
        k = choose_rank(sv, n_components, tol)
        needs_qr = k > 0 and float(sv[k - 1]) < ILL_CONDITIONED * float(sv[0])
        if svd_solver == "auto" and needs_qr:
            res = None
            solver = "tsqr"
    if res is None:
        if stream is None:
            stream = ChunkStream(stack, center=center, chunk_bytes=chunk_bytes, tick=tick)
        r, res = tsqr_r(stack, center=center, chunk_bytes=chunk_bytes, tick=tick, device=dev, stream=stream)
        sv, u = _spectrum_from_r(r, n)
        tol = zero_tolerance(sv, n, d, res.raw_sq_norm**0.5)
        k = choose_rank(sv, n_components, tol)
    sv = torch.where(sv > tol, sv, torch.zeros_like(sv))
    sv[max(0, min(n - int(center), d)) :] = 0.0  # rank cannot exceed min(N − 1, D); beyond it is rounding noise
    k = min(k, max(0, min(n - int(center), d)))
    left = sign_fix(u[:, :k].contiguous())
    return PCASpectrum(n, d, center, sv, left, k, solver, res)


class SpectrumLike(Protocol):
    """What phase 2 needs from phase 1 (a :class:`PCASpectrum` or any record with these attributes)."""

    center: bool
    singular_values: torch.Tensor
    left: torch.Tensor
    k: int


def pca_components(
    stack: UnitStack,
    spectrum: SpectrumLike,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    sink: Sink | None = None,
    tick: Tick | None = None,
    device: str | torch.device | None = None,
    stream: ChunkStream | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Phase 2: stream the mean and the basis ``V_k = diag(1/σ_k) U_kᵀ X_c``.

    Parameters
    ----------
    stack : UnitStack
    spectrum : PCASpectrum or SpectrumLike
        From :func:`pca_spectrum` on the same stack (only ``center``, ``singular_values``, ``left``, ``k`` are used).
    sink : callable, optional
        ``sink(r0, r1, mean_chunk, basis_chunk)`` with ``mean_chunk`` of shape ``((r1 - r0) * cols,)`` and
        ``basis_chunk`` of shape ``(k, (r1 - r0) * cols)``. When given, nothing is kept in memory.
    device : str or torch.device, optional
        Where ``U_kᵀ X_c`` runs.
    stream : ChunkStream, optional
        The stream phase 1 used: a kept unit is not read again.

    Returns
    -------
    mean : Tensor of shape (rows, cols) or None
        None when a sink was given.
    basis : Tensor of shape (k, rows * cols) or None
    """
    spec, k = stack.spec, spectrum.k
    dev = resolve_device(device)
    scale = 1.0 / spectrum.singular_values[:k] if k else torch.zeros(0, dtype=torch.float64)
    keep = sink is None
    mean = torch.empty(spec.rows * spec.cols, dtype=torch.float64) if keep else None
    basis = torch.empty(k, spec.rows * spec.cols, dtype=torch.float64) if keep else None
    cols = spec.cols
    if stream is None:
        stream = ChunkStream(stack, center=spectrum.center, chunk_bytes=chunk_bytes, tick=tick)
    components = getattr(spectrum, "components", None)
    left_t = to_device(spectrum.left.T.contiguous(), dev)  # (k, n_models)
    scale_d = to_device(scale[:, None], dev)
    for r0, r1, xc, mean_c in stream:  # (n_models, c), (c,)
        if components is not None:
            basis_c = components[:, r0 * cols : r1 * cols]  # (k, c), from the covariance route
        else:
            basis_c = ((left_t @ to_device(xc, dev)) * scale_d).cpu()  # (k, c)
        if keep:
            assert mean is not None
            assert basis is not None
            mean[r0 * cols : r1 * cols] = mean_c
            basis[:, r0 * cols : r1 * cols] = basis_c
        else:
            assert sink is not None
            sink(r0, r1, mean_c, basis_c)
    if keep:
        assert mean is not None
        return mean.reshape(spec.rows, spec.cols), basis
    return None, None


def pca_basis(
    stack: UnitStack | Sequence[torch.Tensor],
    n_components: int | float,
    *,
    center: bool = True,
    svd_solver: SvdSolver = "auto",
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> PCAUnitFit:
    """Model-axis PCA of one unit, in memory: the functional core behind :class:`SharedSubspace`.

    Parameters
    ----------
    stack : UnitStack or sequence of Tensor
        N members of one shape.
    n_components : int or float
        Count or variance fraction in (0, 1).

    Returns
    -------
    PCAUnitFit
        With ``mean`` (rows, cols), ``basis`` (k, rows * cols), ``coefficients`` (N, k).

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> ws = [torch.randn(3, 4, generator=g) for _ in range(5)]
    >>> fit = pca_basis(ws, 4)
    >>> fit.k, tuple(fit.basis.shape), tuple(fit.coefficients.shape)
    (4, (4, 12), (5, 4))
    >>> recon = fit.mean.reshape(-1) + fit.coefficients[0] @ fit.basis
    >>> bool(torch.allclose(recon, ws[0].reshape(-1).double()))
    True
    """
    if not isinstance(stack, UnitStack):
        stack = UnitStack.from_tensors(list(stack))
    spectrum = pca_spectrum(stack, n_components, center=center, svd_solver=svd_solver, chunk_bytes=chunk_bytes)
    mean, basis = pca_components(stack, spectrum, chunk_bytes=chunk_bytes)
    return PCAUnitFit(**vars(spectrum), mean=mean, basis=basis)


def _row_sq(x: torch.Tensor) -> torch.Tensor:
    """Squared norm of every row of ``x`` (b, D), shape (b,)."""
    return torch.linalg.vector_norm(x, dim=1) ** 2


class PCARecord(UnitRecord):
    """Manifest record of a model-axis PCA unit.

    Attributes
    ----------
    k : int
        Components kept.
    solver : str
        Route that produced the spectrum (``gram``, ``factored-gram``, ``tsqr``, ``incremental``).
    singular_values : list of float
        Full spectrum of the centered stack (length n_models).
    evr : list of float
        Explained-variance ratio of each component against the full spectrum.
    """

    k: StrictInt
    solver: str = "gram"
    singular_values: list[float] = Field(default_factory=list)
    evr: list[float] = Field(default_factory=list)


class PCAUnit(UnitFit):
    """Model-axis PCA of one unit: ``x_i ≈ μ + c_i V`` with ``V`` of shape (k, rows * cols), orthonormal rows.

    Stored tensors: ``mean`` (the unit's shape) and ``basis`` (``(k, *shape)``). Coefficients ``(n_models, k)``.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> stack = UnitStack.from_tensors([torch.randn(3, 4, generator=g) for _ in range(5)], name="w")
    >>> from weightspace.decompose._unitfit import MemoryStore
    >>> unit = PCAUnit.fit(stack, FitParams(n_components=2), MemoryStore())
    >>> unit.k, unit.coef_shape, tuple(unit.basis().shape)
    (2, (2,), (2, 12))
    >>> bool(torch.allclose(unit.transform(unit.member(1)), unit.coefficients[1]))
    True
    """

    method = "pca"
    record_type = PCARecord

    @classmethod
    def max_components(cls, spec: UnitSpec, n_models: int, params: FitParams) -> int | None:
        # N centered models span at most N - 1 directions (N uncentered), and no more than the unit has entries.
        return max(0, min(n_models - int(params.center), spec.numel))

    @classmethod
    def fit(cls, stack: UnitStack, params: FitParams, store: TensorStore, tick: Tick | None = None) -> PCAUnit:
        # One stream for both phases: a unit that fits params.cache_bytes is read once. Factored (LoRA) members
        # take the factored-Gram route, after which the data is streamed only once: nothing to keep.
        one_pass = stack.all_factored() and params.svd_solver != "tsqr"
        chunks = ChunkStream(
            stack,
            center=params.center,
            chunk_bytes=params.chunk_bytes,
            cache_bytes=0 if one_pass else params.cache_bytes,
            tick=tick,
        )
        spectrum = pca_spectrum(
            stack,
            params.scalar_rank,
            center=params.center,
            svd_solver=params.svd_solver,  # type: ignore[arg-type]
            chunk_bytes=params.chunk_bytes,
            tick=tick,
            device=params.device,
            stream=chunks,
            need_gram=False,
        )
        spec = stack.spec
        store.declare(cls.layout(spec, (spectrum.k,)))
        cols, d = spec.cols, spec.numel

        def stream(r0: int, r1: int, mean_c: torch.Tensor, basis_c: torch.Tensor) -> None:
            store.write_flat("mean", r0 * cols, mean_c)
            for j in range(basis_c.shape[0]):
                store.write_flat("basis", j * d + r0 * cols, basis_c[j])

        pca_components(
            stack, spectrum, chunk_bytes=params.chunk_bytes, sink=stream, device=params.device, stream=chunks
        )
        chunks.close()
        record = cls.make_record(
            spec, spectrum.singular_values, spectrum.k, spectrum.solver, spectrum.mean_energy_fraction
        )
        return cls(spec, spectrum.coefficients, store, record)

    @classmethod
    def make_record(
        cls, spec: UnitSpec, singular_values: torch.Tensor, k: int, solver: str, mean_energy_fraction: float
    ) -> PCARecord:
        """The manifest record of a PCA unit with this spectrum and rank."""
        evr = explained_variance_ratio(singular_values)
        return PCARecord(
            name=spec.name,
            shape=list(spec.shape),
            rows=spec.rows,
            cols=spec.cols,
            kind=spec.kind,
            lora=spec.lora,
            method=cls.method,
            k=k,
            solver=solver,
            singular_values=singular_values.tolist(),
            evr=evr.tolist(),
            evr_at_k=float(evr[:k].sum()),
            mean_energy_fraction=mean_energy_fraction,
        )

    @property
    def coef_shape(self) -> tuple[int, ...]:
        return (int(self._record.k),)  # type: ignore[attr-defined]

    @classmethod
    def requested_coef_shape(
        cls, spec: UnitSpec, n_models: int, params: FitParams, span: int | None = None
    ) -> tuple[int, ...]:
        cap = max(0, min(n_models - int(params.center), spec.numel))
        rank = params.scalar_rank
        return (min(int(rank) if isinstance(rank, int) else 1, cap),)

    @property
    def singular_values(self) -> torch.Tensor:
        return torch.tensor(self._record.singular_values, dtype=torch.float64)  # type: ignore[attr-defined]

    @property
    def solver(self) -> str:
        return str(self._record.solver)  # type: ignore[attr-defined]

    @classmethod
    def layout(cls, spec: UnitSpec, coef_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        return {"mean": tuple(spec.shape), "basis": (coef_shape[0], *spec.shape)}

    def basis(self) -> torch.Tensor:
        """Orthonormal rows, float64, shape (k, rows * cols)."""
        return self.tensor("basis").reshape(self.coef_shape[0], self.spec.numel)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        xc = x.to(torch.float64).reshape(-1) - self.mean().reshape(-1)  # (rows * cols,)
        return self.basis() @ xc  # (k,)

    def inverse_transform(self, coefficients: torch.Tensor) -> torch.Tensor:
        mean = self.mean()
        if self.coef_shape[0] == 0:
            return mean.clone()
        return mean + (coefficients.to(torch.float64) @ self.basis()).reshape(mean.shape)

    def members(self, indices: Sequence[int]) -> torch.Tensor:
        """``μ + C[indices] V``: one GEMM for the batch, shape (len(indices), rows, cols)."""
        spec = self.spec
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        with self.pinned():
            mean = self.mean().reshape(1, -1)  # (1, D)
            if self.coef_shape[0] == 0:
                out = mean.expand(len(idx), -1).clone()
            else:
                out = torch.addmm(mean, self.coefficients[idx], self.basis())  # (b, D)
        return out.reshape(len(idx), spec.rows, spec.cols)

    def residuals_many(self, stack: UnitStack, *, budget_bytes: int = DEFAULT_CHUNK_BYTES) -> list[Residuals]:
        """Residuals of unseen members in groups: ``(b, D)`` GEMMs against the basis read once; a shared base is
        read once per group."""
        d = self.spec.numel
        out: list[Residuals] = []
        with self.pinned():
            mean = self.mean().reshape(1, d)  # (1, D)
            basis = self.basis()  # (k, D)
            # x − P x = (x_c − P x_c) + (μ − P μ): the basis-only residual is the mean+basis one plus a fixed vector.
            mean_err = mean - (mean @ basis.T) @ basis  # (1, D)
            for g0, g1 in member_groups(stack.n, d, budget_bytes):
                x = UnitStack(stack.spec, stack.members[g0:g1]).chunk(0, stack.spec.rows)  # (b, D)
                x_sq = _row_sq(x)
                xc = x.sub_(mean)  # (b, D), in place: x is not needed again
                mo_sq = _row_sq(xc)
                c = xc @ basis.T  # (b, k)
                fit_err = xc.sub_(c @ basis)  # x_c − P x_c
                mb_sq = _row_sq(fit_err)
                bo_sq = _row_sq(fit_err.add_(mean_err))  # x − P x
                out += [
                    Residuals(c[j].clone(), float(x_sq[j]), float(mb_sq[j]), float(mo_sq[j]), float(bo_sq[j]))
                    for j in range(x.shape[0])
                ]
        return out

    @classmethod
    def buffer_shapes(cls, spec: UnitSpec, coef_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        return {"basis": (coef_shape[0], spec.numel)}

    def parametrisation(
        self, k: int | tuple[int, ...], *, init: str = "zero", use_mean: bool = True
    ) -> Parametrisation:
        k = int(k[0] if isinstance(k, tuple) else k)
        basis = self.basis()[:k] if k else torch.zeros(0, self.spec.numel, dtype=torch.float64)  # (k, rows * cols)
        start = torch.zeros(k, dtype=torch.float64)
        if init == "mean" and k:
            start = self.coefficients[:, :k].mean(0)  # c̄: mean of the stored coefficient rows
        return Parametrisation(
            self.spec.name,
            self.method,
            tuple(self.spec.shape),
            {"basis": basis.contiguous()},
            self.mean() if use_mean else None,
            start,
        )

    @staticmethod
    def synthesize(buffers: Mapping[str, torch.Tensor], coef: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        basis = buffers["basis"]  # (k, rows * cols)
        if coef.numel() == 0:
            return basis.new_zeros(rows, cols)
        return (coef @ basis).reshape(rows, cols)


UNIT_FITS.register(PCAUnit.method, PCAUnit)
