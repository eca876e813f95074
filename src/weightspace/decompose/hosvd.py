"""Zero-centered HOSVD of order 1–2 of one unit (Tucker on the weight axes, model axis left free).

With ``X_iᶜ = X_i − μ`` (rows × cols):

* mode-1 scatter ``S1 = Σ_i X_iᶜ X_iᶜᵀ`` (rows × rows) → ``U`` (rows × k1),
* mode-2 scatter ``S2 = Σ_i X_iᶜᵀ X_iᶜ`` (cols × cols) → ``V`` (cols × k2),
* per-model core ``C_i = Uᵀ X_iᶜ V`` (k1 × k2), reconstruction ``μ + U C_i Vᵀ``.

Storage is ``rows·k1 + cols·k2 + N·k1·k2 (+ μ)``. ``modes=(1,)`` keeps mode 2 whole (order-1 HOSVD, ``V = I``),
``modes=(2,)`` keeps mode 1 whole. Both scatters come from one pass using the shift ``x_0`` (``Σ y yᵀ − N ȳȳᵀ``
with ``y = x − x_0``), the cores from a second pass; memory is ``O(rows² + cols² + rows·cols)``, one model at a
time. The captured fraction ``Σ_i ‖C_i‖² / Σ_i ‖X_iᶜ‖²`` is this method's explained-variance ratio.

References
----------
Kaushik et al., "The Universal Weight Subspace Hypothesis", arXiv:2512.05117 (zero-centered HOSVD);
De Lathauwer et al., "A multilinear singular value decomposition", SIAM J. Matrix Anal. Appl. 21 (2000).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import Field, StrictInt

from weightspace.backends import resolve_device, to_device
from weightspace.decompose._gram import MemberReader, Tick
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
from weightspace.decompose.pca import PCAUnit
from weightspace.decompose.rank import choose_rank, sign_fix, zero_tolerance
from weightspace.errors import ParameterError
from weightspace.units import UnitSpec, UnitStack

__all__ = ["HOSVDUnitFit", "TuckerRecord", "TuckerUnit", "hosvd", "hosvd_cores", "hosvd_factors"]

Ranks = int | float | tuple[int | float, int | float]


@dataclass
class HOSVDUnitFit:
    """A fitted HOSVD unit.

    Attributes
    ----------
    mean : Tensor of shape (rows, cols)
    u : Tensor of shape (rows, k1)
    v : Tensor of shape (cols, k2)
    cores : Tensor of shape (n_models, k1, k2) or None before :func:`hosvd_cores`
    mode1_values, mode2_values : Tensor of shape (rows,), (cols,)
        Mode singular values ``sqrt(eig(S1))``, ``sqrt(eig(S2))``, decreasing.
    total_energy : float
        ``Σ_i ‖X_iᶜ‖²``.
    """

    n_models: int
    center: bool
    mean: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor
    mode1_values: torch.Tensor
    mode2_values: torch.Tensor
    total_energy: float
    raw_sq_norm: float
    mean_sq_norm: float
    modes: tuple[int, ...]
    cores: torch.Tensor | None = None

    @property
    def k1(self) -> int:
        return self.u.shape[1]

    @property
    def k2(self) -> int:
        return self.v.shape[1]

    @property
    def captured_fraction(self) -> float:
        """``Σ ‖C_i‖² / Σ ‖X_iᶜ‖²`` (needs the cores)."""
        if self.cores is None or self.total_energy <= 0:
            return 0.0 if self.total_energy <= 0 else float("nan")
        return float((self.cores**2).sum()) / self.total_energy

    @property
    def mean_energy_fraction(self) -> float:
        spread = self.total_energy / self.n_models
        denom = self.mean_sq_norm + spread
        return self.mean_sq_norm / denom if denom > 0 else 0.0

    def reconstruct(self, i: int) -> torch.Tensor:
        """Model i's member, ``μ + U C_i Vᵀ``, shape (rows, cols)."""
        if self.cores is None:
            raise ValueError("cores not computed")
        return self.mean + self.u @ self.cores[i] @ self.v.T


def _ranks(ranks: Ranks) -> tuple[int | float, int | float]:
    if isinstance(ranks, tuple):
        if len(ranks) != 2:
            raise ParameterError(f"HOSVD ranks must be one value or a pair (k1, k2). Got {ranks!r} instead.")
        return ranks
    return ranks, ranks


def _eig_desc(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    evals, evecs = torch.linalg.eigh((s + s.T) / 2)
    evals, evecs = evals.cpu(), evecs.cpu()
    order = torch.argsort(evals, descending=True, stable=True)
    return evals[order].clamp_min(0).sqrt(), evecs[:, order]


def hosvd_factors(
    stack: UnitStack,
    ranks: Ranks,
    *,
    center: bool = True,
    modes: Sequence[int] = (1, 2),
    tick: Tick | None = None,
    device: str | torch.device | None = None,
    reader: MemberReader | None = None,
) -> HOSVDUnitFit:
    """Pass 1: mean, mode scatters, and the mode factors ``U``, ``V`` (cores not yet computed).

    ``device`` runs the scatters and eigendecompositions there; ``reader`` (shared with :func:`hosvd_cores`) keeps
    the members of a unit that fits its cache, so the cores pass does not read them again.
    """
    modes = tuple(sorted(set(modes)))
    if not modes or any(m not in (1, 2) for m in modes):
        raise ParameterError(f"The 'modes' parameter of hosvd must be a subset of (1, 2). Got {modes!r} instead.")
    spec, n = stack.spec, stack.n
    rows, cols = spec.rows, spec.cols
    dev = resolve_device(device)
    rd = reader if reader is not None else MemberReader(stack, tick=tick)
    if center:
        shift = rd[0].clone()  # (rows, cols): y = x − x_0 keeps a dominant mean from cancelling
        rd.set_shift(shift)
    else:
        shift = torch.zeros(rows, cols, dtype=torch.float64)
    acc = torch.zeros(rows, cols, dtype=torch.float64, device=dev)
    s1 = torch.zeros(rows, rows, dtype=torch.float64, device=dev)
    s2 = torch.zeros(cols, cols, dtype=torch.float64, device=dev)
    for i in range(n):
        y = to_device(rd[i], dev)  # (rows, cols)
        acc += y
        s1.addmm_(y, y.T)
        s2.addmm_(y.T, y)
    raw_sq = float(rd.sq_norms.sum())
    ybar = acc / n
    if center:
        s1 -= n * (ybar @ ybar.T)
        s2 -= n * (ybar.T @ ybar)
        mean = shift + ybar.cpu()
    else:
        mean = torch.zeros(rows, cols, dtype=torch.float64)
    total = float(s1.trace().clamp_min(0))
    sv1, e1 = _eig_desc(s1)
    sv2, e2 = _eig_desc(s2)
    del s1, s2
    r1, r2 = _ranks(ranks)
    data_norm = raw_sq**0.5
    k1 = choose_rank(sv1, r1, zero_tolerance(sv1, n, rows * cols, data_norm)) if 1 in modes else rows
    k2 = choose_rank(sv2, r2, zero_tolerance(sv2, n, rows * cols, data_norm)) if 2 in modes else cols
    u = sign_fix(e1[:, :k1].contiguous()) if 1 in modes else torch.eye(rows, dtype=torch.float64)
    v = sign_fix(e2[:, :k2].contiguous()) if 2 in modes else torch.eye(cols, dtype=torch.float64)
    mean_sq = float((mean * mean).sum())
    return HOSVDUnitFit(n, center, mean, u, v, sv1, sv2, total, raw_sq, mean_sq, modes)


def hosvd_cores(
    stack: UnitStack,
    fit: HOSVDUnitFit,
    *,
    tick: Tick | None = None,
    device: str | torch.device | None = None,
    reader: MemberReader | None = None,
) -> torch.Tensor:
    """Pass 2: per-model cores ``C_i = Uᵀ (X_i − μ) V``, shape (n_models, k1, k2); also stored on ``fit``."""
    dev = resolve_device(device)
    rd = reader if reader is not None else MemberReader(stack, tick=tick)
    offset = fit.mean if rd.shift is None else fit.mean - rd.shift  # what to take off a (shifted) member
    offset_d, u_t, v = to_device(offset, dev), to_device(fit.u.T.contiguous(), dev), to_device(fit.v, dev)
    cores = torch.empty(stack.n, fit.k1, fit.k2, dtype=torch.float64)
    for i in range(stack.n):
        cores[i] = (u_t @ (to_device(rd[i], dev) - offset_d) @ v).cpu()  # (k1, k2)
    fit.cores = cores
    return cores


def hosvd(
    stack: UnitStack | Sequence[torch.Tensor], ranks: Ranks, *, center: bool = True, modes: Sequence[int] = (1, 2)
) -> HOSVDUnitFit:
    """Zero-centered HOSVD of order 1–2 of one unit, in memory.

    Parameters
    ----------
    stack : UnitStack or sequence of Tensor
        N members of shape (rows, cols).
    ranks : int, float or pair
        ``k1``/``k2`` as counts or per-mode energy fractions in (0, 1); one value applies to both modes.
    center : bool, default True
    modes : sequence of {1, 2}, default (1, 2)

    Returns
    -------
    HOSVDUnitFit

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> ws = [torch.randn(6, 5, generator=g) for _ in range(4)]
    >>> fit = hosvd(ws, (6, 5))
    >>> tuple(fit.cores.shape), round(fit.captured_fraction, 6)
    ((4, 6, 5), 1.0)
    >>> bool(torch.allclose(fit.reconstruct(2), ws[2].double()))
    True
    """
    if not isinstance(stack, UnitStack):
        stack = UnitStack.from_tensors(list(stack))
    fit = hosvd_factors(stack, ranks, center=center, modes=modes)
    hosvd_cores(stack, fit)
    return fit


class TuckerRecord(UnitRecord):
    """Manifest record of a zero-centered HOSVD (Tucker) unit.

    Attributes
    ----------
    k1, k2 : int
        Mode ranks.
    modes : list of int
        Compressed modes.
    mode1_singular_values, mode2_singular_values : list of float
        ``sqrt(eig(S1))``, ``sqrt(eig(S2))``, decreasing.
    """

    k1: StrictInt
    k2: StrictInt
    modes: list[StrictInt] = Field(default_factory=lambda: [1, 2])
    mode1_singular_values: list[float] = Field(default_factory=list)
    mode2_singular_values: list[float] = Field(default_factory=list)


class TuckerUnit(UnitFit):
    """Zero-centered HOSVD of order 1–2 of one unit: ``X_i ≈ μ + U C_i Vᵀ``.

    Stored tensors: ``mean`` (the unit's shape), ``U`` (rows, k1), ``V`` (cols, k2). Coefficients are the cores,
    ``(n_models, k1, k2)``. 1-D units fall back to :class:`~weightspace.decompose.pca.PCAUnit`.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> stack = UnitStack.from_tensors([torch.randn(6, 5, generator=g) for _ in range(4)], name="w")
    >>> from weightspace.decompose._unitfit import MemoryStore
    >>> unit = TuckerUnit.fit(stack, FitParams(n_components=(6, 5)), MemoryStore())
    >>> unit.k, round(unit.evr_at_k, 6)
    ((6, 5), 1.0)
    """

    method = "hosvd"
    record_type = TuckerRecord
    fallback = PCAUnit
    coef_axes = 2

    @classmethod
    def supports(cls, spec: UnitSpec) -> bool:
        return spec.kind == "matrix"

    @classmethod
    def max_components(cls, spec: UnitSpec, n_models: int, params: FitParams) -> int | None:
        # Each compressed mode keeps at most its own dimension.
        dims = [d for mode, d in ((1, spec.rows), (2, spec.cols)) if mode in params.modes]
        return max(dims) if dims else None

    @classmethod
    def fit(cls, stack: UnitStack, params: FitParams, store: TensorStore, tick: Tick | None = None) -> TuckerUnit:
        # One reader for both passes: a unit that fits params.cache_bytes is read once.
        reader = MemberReader(stack, cache_bytes=params.cache_bytes, tick=tick)
        fit = hosvd_factors(
            stack,
            params.n_components,
            center=params.center,
            modes=params.modes,
            device=params.device,
            reader=reader,
        )
        cores = hosvd_cores(stack, fit, device=params.device, reader=reader)
        reader.close()
        spec = stack.spec
        store.declare(cls.layout(spec, (fit.k1, fit.k2)))
        store.write("mean", fit.mean.reshape(spec.shape))
        store.write("U", fit.u)
        store.write("V", fit.v)
        record = TuckerRecord(
            name=spec.name,
            shape=list(spec.shape),
            rows=spec.rows,
            cols=spec.cols,
            kind=spec.kind,
            lora=spec.lora,
            method=cls.method,
            k1=fit.k1,
            k2=fit.k2,
            modes=list(fit.modes),
            mode1_singular_values=fit.mode1_values.tolist(),
            mode2_singular_values=fit.mode2_values.tolist(),
            evr_at_k=fit.captured_fraction,
            mean_energy_fraction=fit.mean_energy_fraction,
        )
        return cls(spec, cores, store, record)

    @property
    def coef_shape(self) -> tuple[int, ...]:
        return (int(self._record.k1), int(self._record.k2))  # type: ignore[attr-defined]

    @classmethod
    def requested_coef_shape(
        cls, spec: UnitSpec, n_models: int, params: FitParams, span: int | None = None
    ) -> tuple[int, ...]:
        out = []
        for mode, rank, dim in zip((1, 2), _ranks(params.n_components), (spec.rows, spec.cols), strict=True):
            want = int(rank) if isinstance(rank, int) else 1  # a fraction keeps at least one component
            out.append(min(want, dim, dim if span is None else span) if mode in params.modes else dim)
        return tuple(out)

    @property
    def modes(self) -> tuple[int, ...]:
        return tuple(self._record.modes)  # type: ignore[attr-defined]

    @property
    def singular_values(self) -> torch.Tensor:
        return torch.tensor(self._record.mode1_singular_values, dtype=torch.float64)  # type: ignore[attr-defined]

    @property
    def mode2_singular_values(self) -> torch.Tensor:
        return torch.tensor(self._record.mode2_singular_values, dtype=torch.float64)  # type: ignore[attr-defined]

    @classmethod
    def layout(cls, spec: UnitSpec, coef_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        k1, k2 = coef_shape
        return {"mean": tuple(spec.shape), "U": (spec.rows, k1), "V": (spec.cols, k2)}

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(U (rows, k1), V (cols, k2))``, float64."""
        return self.tensor("U"), self.tensor("V")

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        u, v = self.factors()
        xc = x.to(torch.float64).reshape(self.spec.rows, self.spec.cols) - self.mean()
        return u.T @ xc @ v  # (k1, k2)

    def inverse_transform(self, coefficients: torch.Tensor) -> torch.Tensor:
        u, v = self.factors()
        return self.mean() + u @ coefficients.to(torch.float64) @ v.T

    def members(self, indices: Sequence[int]) -> torch.Tensor:
        """``μ + U C_i Vᵀ`` for each index, batched: shape (len(indices), rows, cols)."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        with self.pinned():
            u, v = self.factors()
            return self.mean()[None] + (u[None] @ self.coefficients[idx]) @ v.T[None]  # (b, rows, cols)

    def residuals_many(self, stack: UnitStack, *, budget_bytes: int = DEFAULT_CHUNK_BYTES) -> list[Residuals]:
        """Residuals of unseen members in groups (batched products; factors read once, a shared base once per
        group)."""
        rows, cols = self.spec.rows, self.spec.cols
        out: list[Residuals] = []
        with self.pinned():
            mean = self.mean()
            u, v = self.factors()
            for g0, g1 in member_groups(stack.n, self.spec.numel, budget_bytes):
                x = UnitStack(stack.spec, stack.members[g0:g1]).chunk(0, rows).reshape(-1, rows, cols)
                xc = x - mean
                c = u.T @ xc @ v  # (b, k1, k2)
                fit_err = xc - u @ c @ v.T
                raw_err = x - u @ (u.T @ x @ v) @ v.T  # x − U Uᵀ x V Vᵀ
                sq = [t.reshape(t.shape[0], -1).pow(2).sum(dim=1) for t in (x, fit_err, xc, raw_err)]
                out += [
                    Residuals(c[j].clone(), float(sq[0][j]), float(sq[1][j]), float(sq[2][j]), float(sq[3][j]))
                    for j in range(x.shape[0])
                ]
        return out

    @classmethod
    def buffer_shapes(cls, spec: UnitSpec, coef_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        k1, k2 = coef_shape
        return {"u": (spec.rows, k1), "v": (spec.cols, k2)}

    def parametrisation(
        self, k: int | tuple[int, ...], *, init: str = "zero", use_mean: bool = True
    ) -> Parametrisation:
        k1, k2 = (int(k[0]), int(k[1])) if isinstance(k, tuple) else (int(k), int(k))
        u, v = self.factors()
        u, v = u[:, :k1], v[:, :k2]  # factor columns are sorted by decreasing mode energy
        start = torch.zeros(k1, k2, dtype=torch.float64)
        if init == "mean" and k1 and k2:
            start = self.coefficients.mean(0)[:k1, :k2]  # (k1, k2) mean core
        return Parametrisation(
            self.spec.name,
            self.method,
            tuple(self.spec.shape),
            {"u": u.contiguous(), "v": v.contiguous()},
            self.mean() if use_mean else None,
            start,
        )

    @staticmethod
    def synthesize(buffers: Mapping[str, torch.Tensor], coef: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        # k1, k2 are small, so (U C) first is the cheap order.
        return (buffers["u"] @ coef) @ buffers["v"].T  # (rows, cols)

    @staticmethod
    def lowrank_apply(
        x: torch.Tensor, buffers: Mapping[str, torch.Tensor], coef: torch.Tensor
    ) -> torch.Tensor | None:
        u, v = buffers["u"], buffers["v"]
        rows, k1 = u.shape
        cols, k2 = v.shape
        tokens = x.numel() // max(1, cols)
        dense = rows * k2 * (k1 + cols)  # (U C) then (U C) Vᵀ
        lowrank = tokens * (cols * k2 + k2 * k1 + k1 * rows)
        if lowrank >= dense:
            return None
        z = F.linear(x.to(u.dtype), v.T)  # (..., k2)
        return F.linear(F.linear(z, coef), u)  # (..., k1) then (..., rows)


UNIT_FITS.register(TuckerUnit.method, TuckerUnit)
