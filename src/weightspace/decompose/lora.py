"""Factored HOSVD of LoRA units, from the factors only: ``ΔW_i ≈ U (M + C_i) Vᵀ``.

A LoRA update is ``ΔW_i = L_i R_i`` with ``L_i = s_i B_i`` (rows × r) and ``R_i = A_i`` (r × cols). Dense, it has
rows·cols numbers; factored, r·(rows + cols). This fit never forms a rows × cols matrix:

* **Mode scatters from the factors.** ``S1 = Σ_i L_i (R_i R_iᵀ) L_iᵀ = M1 M1ᵀ`` with
  ``M1 = [L_1 K_1ᵀ, …, L_N K_Nᵀ]`` (rows × N·r), where ``K_i`` is the R factor of the QR of ``R_iᵀ``
  (``K_iᵀ K_i = R_i R_iᵀ``); likewise ``S2 = M2 M2ᵀ`` with ``M2 = [R_iᵀ J_iᵀ]`` and ``J_iᵀ J_i = L_iᵀ L_i``.
  ``U`` and ``V`` are the leading left singular vectors of ``M1`` and ``M2``: the work happens in the N·r-wide
  span, and the mode spectra are singular values of those matrices (never squared).
* **Cores.** ``G_i = Uᵀ ΔW_i V = (Uᵀ L_i)(R_i V)`` (k1 × k2). The mean update ``μ = mean_i ΔW_i`` (rank ≤ N·r) is
  kept in the same factored space as its own core ``M = mean_i G_i``; the stored coefficients are the centered
  cores ``C_i = G_i − M`` (``center=False``: ``M = 0``). Reconstruction is ``U (M + C_i) Vᵀ``.

Because the mean is stored as ``U M Vᵀ``, the subspace has to hold it too: ``U`` and ``V`` come from the
*uncentered* scatters ``Σ_i ΔW_i ΔW_iᵀ = Σ_i (ΔW_i − μ)(ΔW_i − μ)ᵀ + N μμᵀ`` (centering only decides how the
coefficients are expressed). Ranks, mode EVRs and the captured fraction therefore refer to the collection's energy
``E = Σ_i ‖ΔW_i‖² = ‖M1‖_F² = ‖M2‖_F²``, reported beside the mean energy fraction. Everything depends on the
``ΔW_i`` only, so rotating the factors (``B R``, ``Rᵀ A``) changes nothing.

Two routes find the leading singular vectors of ``M1`` and ``M2``:

* ``exact`` — a thin SVD, ``O(rows · (N r)²)``: the whole spectrum;
* ``randomized`` — a randomized range finder with ``b = k + 16`` columns and two power iterations (Halko,
  Martinsson & Tropp), ``O(rows · N r · b)``: the leading ``b`` singular values; EVRs still divide by the exact
  ``E``.

``auto`` takes the randomized route when the span is over four blocks wide, and the exact one when a kept component
is ill-conditioned there (``σ_k / σ_1 < 1e-7``) or a variance fraction is not reached within a quarter of the span.
The draws come from a seeded ``torch.Generator``, so fits are deterministic.

References
----------
Kaushik et al., "The Universal Weight Subspace Hypothesis", arXiv:2512.05117 (HOSVD of LoRA collections);
Gabrielsson et al., "Compress then Serve: Serving Thousands of LoRA Adapters with Little Overhead",
arXiv:2407.00066 (joint diagonalisation: shared U, V and per-adapter cores);
Halko, Martinsson & Tropp, "Finding structure with randomness", SIAM Review 53 (2011).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from pydantic import StrictInt

from weightspace.decompose._gram import Tick
from weightspace.decompose._unitfit import (
    UNIT_FITS,
    FitParams,
    Residuals,
    TensorStore,
    UnitFit,
)
from weightspace.decompose.hosvd import TuckerRecord, TuckerUnit, _ranks
from weightspace.decompose.pca import ILL_CONDITIONED, PCAUnit
from weightspace.decompose.rank import choose_rank, sign_fix, zero_tolerance
from weightspace.errors import ParameterError, ShapeMismatchError
from weightspace.units import UnitMember, UnitSpec, UnitStack

__all__ = [
    "OVERSAMPLE",
    "POWER_ITERATIONS",
    "AutoUnit",
    "LoraHOSVDFit",
    "LoraTuckerRecord",
    "LoraTuckerUnit",
    "lora_hosvd",
]

OVERSAMPLE = 16
POWER_ITERATIONS = 2
_WIDTH_PER_BLOCK = 4  # randomized only pays when the span is wider than this many blocks
_SOLVERS = ("auto", "exact", "randomized")
Factors = tuple[torch.Tensor, torch.Tensor]
Ranks = int | float | tuple[int | float, int | float]


@dataclass
class LoraHOSVDFit:
    """A factored HOSVD of N LoRA updates.

    Attributes
    ----------
    u : Tensor of shape (rows, k1)
    v : Tensor of shape (cols, k2)
        Orthonormal, sign-fixed columns.
    mean_core : Tensor of shape (k1, k2)
        ``M = Uᵀ μ V`` (zeros without centering).
    cores : Tensor of shape (n_models, k1, k2)
        Centered cores ``C_i = Uᵀ ΔW_i V − M``.
    mode1_values, mode2_values : Tensor
        Singular values of ``M1`` / ``M2`` (square roots of the mode-scatter eigenvalues), decreasing: the whole
        spectrum on the exact route, the leading ``b`` on the randomized route.
    energy : float
        ``E = Σ_i ‖ΔW_i‖²``.
    mean_sq_norm : float
        ``‖μ‖²`` (exact route only; NaN on the randomized route, where it would cost a Gram of the whole span).
    solver : str
        ``exact`` or ``randomized``.
    """

    n_models: int
    center: bool
    modes: tuple[int, ...]
    u: torch.Tensor
    v: torch.Tensor
    mean_core: torch.Tensor
    cores: torch.Tensor
    mode1_values: torch.Tensor
    mode2_values: torch.Tensor
    energy: float
    mean_sq_norm: float
    solver: str

    @property
    def k1(self) -> int:
        return int(self.u.shape[1])

    @property
    def k2(self) -> int:
        return int(self.v.shape[1])

    @property
    def captured_energy(self) -> float:
        """``Σ_i ‖M + C_i‖²``: the energy the factored reconstructions hold."""
        return float(((self.cores + self.mean_core) ** 2).sum())

    @property
    def captured_fraction(self) -> float:
        """``Σ_i ‖U (M + C_i) Vᵀ‖² / E`` (1 − the relative squared reconstruction error, pooled)."""
        return self.captured_energy / self.energy if self.energy > 0 else 0.0

    @property
    def mean_energy_fraction(self) -> float:
        """``‖μ‖² / (‖μ‖² + mean_i ‖ΔW_i − μ‖²)``, NaN where ``‖μ‖²`` was not computed."""
        if math.isnan(self.mean_sq_norm):
            return float("nan")
        return self.mean_sq_norm * self.n_models / self.energy if self.energy > 0 else 0.0

    @property
    def held_mean_energy_fraction(self) -> float:
        """The same fraction for what the archive holds: ``‖M‖² / (‖M‖² + mean_i ‖C_i‖²)``."""
        mean_sq = float((self.mean_core**2).sum())
        denom = mean_sq + float((self.cores**2).sum()) / max(1, self.n_models)
        return mean_sq / denom if denom > 0 else 0.0

    def reconstruct(self, i: int) -> torch.Tensor:
        """Model i's update ``U (M + C_i) Vᵀ``, dense, shape (rows, cols) (for checks on small units)."""
        return self.u @ (self.mean_core + self.cores[i]) @ self.v.T


def _blocks(factors: Sequence[Factors], name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors as ``(N, rows, r)`` and ``(N, r, cols)`` float64 blocks (zero-padded to the largest rank)."""
    if not factors:
        raise ShapeMismatchError("no LoRA factors to fit", tensor=name)
    rows, cols = factors[0][0].shape[0], factors[0][1].shape[1]
    rmax = max(int(left.shape[1]) for left, _ in factors)
    lb = torch.zeros(len(factors), rows, rmax, dtype=torch.float64)
    rb = torch.zeros(len(factors), rmax, cols, dtype=torch.float64)
    for i, (left, right) in enumerate(factors):
        if left.shape[0] != rows or right.shape[1] != cols or left.shape[1] != right.shape[0]:
            raise ShapeMismatchError(
                f"member {i} has factors {tuple(left.shape)} × {tuple(right.shape)}; member 0 gives a "
                f"{rows} × {cols} update",
                tensor=name,
            )
        r = int(left.shape[1])
        lb[i, :, :r] = left
        rb[i, :r] = right
    return lb, rb


def _mode_matrix(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``[L_i K_iᵀ]_i`` of shape (rows, N·r′) whose Gram is ``Σ_i L_i R_i R_iᵀ L_iᵀ``.

    Parameters
    ----------
    left : Tensor of shape (n, rows, r)
    right : Tensor of shape (n, r, cols)
    """
    k = torch.linalg.qr(right.transpose(1, 2), mode="r").R  # (n, r', r) with K_iᵀ K_i = R_i R_iᵀ
    blocks = left @ k.transpose(1, 2)  # (n, rows, r')
    return blocks.permute(1, 0, 2).reshape(left.shape[1], -1)  # (rows, n * r')


def _left_exact(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if min(m.shape) == 0:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(m.shape[0], 0, dtype=torch.float64)
    u, s, _ = torch.linalg.svd(m, full_matrices=False)
    return s, u


def _left_randomized(m: torch.Tensor, block: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Leading ``block`` singular values and left vectors of ``m`` by a randomized range finder.

    The draw is on the height side and every step uses ``m`` through ``m mᵀ``-invariant operations, so the result
    depends on the mode scatter only: factors rotated by ``B R``, ``Rᵀ A`` give the same vectors.
    """
    omega = torch.randn(m.shape[0], block, generator=generator, dtype=torch.float64)  # (height, b)
    q = torch.linalg.qr(m @ torch.linalg.qr(m.T @ omega).Q).Q  # (height, b)
    for _ in range(POWER_ITERATIONS):
        z = torch.linalg.qr(m.T @ q).Q  # (width, b)
        q = torch.linalg.qr(m @ z).Q
    small = q.T @ m  # (b, width)
    uu, s, _ = torch.linalg.svd(small, full_matrices=False)
    return s, q @ uu


def _rank(sv: torch.Tensor, rank: int | float, tol: float, energy: float, complete: bool) -> int | None:
    """The shared rank rule on a spectrum; None if a fraction is not reached within a partial spectrum."""
    if complete or isinstance(rank, int):
        return choose_rank(sv, rank, tol)
    # The energy the partial spectrum leaves out, as one trailing value: fractions refer to the exact E.
    rest = max(energy - float((sv**2).sum()), 0.0) ** 0.5
    k = choose_rank(torch.cat([sv, torch.tensor([rest], dtype=torch.float64)]), rank, tol)
    return k if k <= sv.numel() else None


def _mode_basis(
    m: torch.Tensor,
    rank: int | float,
    *,
    n_models: int,
    n_features: int,
    energy: float,
    route: str,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``(vectors (height, k), spectrum, route used)`` for one mode matrix ``m`` (height × width)."""
    width = min(m.shape)
    block = min(width, (int(rank) if isinstance(rank, int) else 2 * OVERSAMPLE) + OVERSAMPLE)
    while route == "randomized" or (route == "auto" and block * _WIDTH_PER_BLOCK < width):
        sv, vecs = _left_randomized(m, block, generator)
        tol = zero_tolerance(sv, n_models, n_features, energy**0.5)
        k = _rank(sv, rank, tol, energy, complete=block >= width)
        conditioned = k is not None and (k == 0 or float(sv[k - 1]) >= ILL_CONDITIONED * float(sv[0]))
        if k is not None and (conditioned or route == "randomized"):
            return sign_fix(vecs[:, :k].contiguous()), sv, "randomized"
        if k is not None or block >= width:
            break  # ill-conditioned for the randomized values (auto), or a forced route that saw everything
        block = min(width, 2 * block)  # a fraction not reached within the leading values: widen
    sv, vecs = _left_exact(m)
    tol = zero_tolerance(sv, n_models, n_features, energy**0.5)
    k = choose_rank(sv, rank, tol)
    return sign_fix(vecs[:, :k].contiguous()), sv, "exact"


def lora_hosvd(
    factors: UnitStack | Sequence[Factors],
    ranks: Ranks,
    *,
    center: bool = True,
    modes: Sequence[int] = (1, 2),
    solver: str = "auto",
    seed: int = 0,
    tick: Tick | None = None,
) -> LoraHOSVDFit:
    """Factored HOSVD of N LoRA updates ``ΔW_i = L_i R_i``, from the factors only.

    Parameters
    ----------
    factors : UnitStack or sequence of (L, R)
        A stack whose members are all factored, or pairs ``L_i`` (rows × r_i, scaling folded in) and ``R_i``
        (r_i × cols). Ranks may differ between members.
    ranks : int, float or pair
        ``k1``/``k2`` as counts (capped by the numerical rank) or energy fractions in (0, 1); one value for both.
    center : bool, default True
        Store the mean as its own core and center the coefficients (the subspace is the same either way).
    modes : sequence of {1, 2}, default (1, 2)
        Compressed modes; an uncompressed mode keeps the identity (``U = I`` or ``V = I``).
    solver : {"auto", "exact", "randomized"}, default "auto"
    seed : int, default 0
        Seed of the randomized route's draws.
    tick : callable, optional
        Called after each mode and after the cores (progress).

    Returns
    -------
    LoraHOSVDFit

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> pairs = [(torch.randn(6, 2, generator=g), torch.randn(2, 5, generator=g)) for _ in range(4)]
    >>> fit = lora_hosvd(pairs, (6, 5))
    >>> (fit.k1, fit.k2), round(fit.captured_fraction, 6)
    ((6, 5), 1.0)
    >>> bool(torch.allclose(fit.reconstruct(1), pairs[1][0].double() @ pairs[1][1].double()))
    True
    """
    if solver not in _SOLVERS:
        raise ParameterError(
            f"The 'solver' parameter of lora_hosvd must be one of {', '.join(map(repr, _SOLVERS))}. "
            f"Got {solver!r} instead."
        )
    modes = tuple(sorted(set(modes)))
    if not modes or any(m not in (1, 2) for m in modes):
        raise ParameterError(
            f"The 'modes' parameter of lora_hosvd must be a subset of (1, 2). Got {modes!r} instead."
        )
    if isinstance(factors, UnitStack):
        name = factors.spec.name
        pairs = []
        for i, member in enumerate(factors.members):
            f = member.factors()
            if f is None:
                raise ShapeMismatchError(
                    f"member {i} is not a LoRA update; the factored fit needs factors", tensor=name
                )
            pairs.append(f)
    else:
        name, pairs = "unit", [(left.to(torch.float64), right.to(torch.float64)) for left, right in factors]
    lb, rb = _blocks(pairs, name)  # (n, rows, r), (n, r, cols)
    n, rows, cols = lb.shape[0], lb.shape[1], rb.shape[2]
    r1, r2 = _ranks(ranks)
    # Σ_i ‖L_i R_i‖² = Σ_i ⟨L_iᵀ L_i, R_i R_iᵀ⟩ = trace S1 = trace S2
    energy = float(((lb.transpose(1, 2) @ lb) * (rb @ rb.transpose(1, 2))).sum())
    routes, bases, values = [], [], []
    for mode, rank, size in ((1, r1, rows), (2, r2, cols)):
        # (rows, n * r') with S1 = m mᵀ, or (cols, n * r') with S2 = m mᵀ
        mat = _mode_matrix(lb, rb) if mode == 1 else _mode_matrix(rb.transpose(1, 2), lb.transpose(1, 2))
        vecs, sv, used = _mode_basis(
            mat,
            rank if mode in modes else size,
            n_models=n,
            n_features=rows * cols,
            energy=energy,
            route=solver,
            generator=torch.Generator().manual_seed(seed + mode),
        )
        del mat
        routes.append(used)
        values.append(sv)
        bases.append(vecs if mode in modes else torch.eye(size, dtype=torch.float64))
        if tick is not None:
            tick()
    u, v = bases
    g = (u.T @ lb) @ (rb @ v)  # (n, k1, r) @ (n, r, k2) -> raw cores (n, k1, k2)
    mean_core = g.mean(0) if center else torch.zeros(u.shape[1], v.shape[1], dtype=torch.float64)
    mean_sq = float("nan")
    if "randomized" not in routes:
        lcat = lb.permute(1, 0, 2).reshape(rows, -1)  # (rows, n * r)
        rcat = rb.reshape(-1, cols)  # (n * r, cols)
        mean_sq = float(((lcat.T @ lcat) * (rcat @ rcat.T)).sum()) / n**2 if center else 0.0
    if tick is not None:
        tick()
    return LoraHOSVDFit(
        n_models=n,
        center=center,
        modes=modes,
        u=u,
        v=v,
        mean_core=mean_core,
        cores=g - mean_core,
        mode1_values=values[0],
        mode2_values=values[1],
        energy=energy,
        mean_sq_norm=mean_sq,
        solver="randomized" if "randomized" in routes else "exact",
    )


class AutoUnit(UnitFit):
    """``auto``: each unit gets the method that stores it best; never fitted itself.

    LoRA units go to :class:`LoraTuckerUnit` (which :attr:`~UnitFit.specialises` this name), every other unit to
    the :attr:`fallback`, :class:`~weightspace.decompose.pca.PCAUnit`. :func:`~weightspace.decompose.unit_fit_for`
    resolves it, so no archive ever records a unit under this name.
    """

    method = "auto"
    fallback = PCAUnit

    @classmethod
    def supports(cls, spec: UnitSpec) -> bool:
        return False


class LoraTuckerRecord(TuckerRecord):
    """Manifest record of a factored LoRA HOSVD unit.

    Attributes
    ----------
    solver : str
        ``exact`` or ``randomized`` (see :func:`lora_hosvd`).
    energy : float
        ``E = Σ_i ‖ΔW_i‖²`` of the fitted models.
    captured_energy : float
        ``Σ_i ‖M + C_i‖²``; ``evr_at_k = captured_energy / energy``.
    held_mean_energy_fraction : float
        ``‖M‖² / (‖M‖² + mean_i ‖C_i‖²)`` (``mean_energy_fraction`` is the exact one of the inputs, NaN on the
        randomized route).
    seed : int
        Seed of the randomized route.
    """

    solver: str = "exact"
    energy: float = float("nan")
    captured_energy: float = float("nan")
    held_mean_energy_fraction: float = float("nan")
    seed: StrictInt = 0


class LoraTuckerUnit(TuckerUnit):
    """Factored HOSVD of a LoRA unit from its factors: ``ΔW_i ≈ U (M + C_i) Vᵀ``, no dense update anywhere.

    Stored tensors: ``U`` (rows, k1), ``V`` (cols, k2) and ``mean_core`` (k1, k2): no rows × cols tensor.
    Coefficients are the centered cores, ``(n_models, k1, k2)``. Specialises ``hosvd`` and ``auto`` for LoRA units
    (units whose every member is ``s·B·A``); other units fall back to :class:`~weightspace.decompose.TuckerUnit`.
    Projection (:meth:`transform_member`, :meth:`residuals`) uses a new adapter's factors.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> stack = UnitStack.from_factors(
    ...     [(torch.randn(6, 2, generator=g), torch.randn(2, 5, generator=g)) for _ in range(4)], name="w")
    >>> from weightspace.decompose._unitfit import MemoryStore
    >>> unit = LoraTuckerUnit.fit(stack, FitParams(n_components=3), MemoryStore())
    >>> unit.k, sorted(unit.stored_layout().items())
    ((3, 3), [('U', (6, 3)), ('V', (5, 3)), ('mean_core', (3, 3))])
    >>> bool(torch.allclose(unit.transform_member(stack.members[2]), unit.coefficients[2]))
    True
    """

    method = "lora-hosvd"
    record_type = LoraTuckerRecord
    fallback = TuckerUnit
    specialises = (TuckerUnit.method, AutoUnit.method)

    @classmethod
    def supports(cls, spec: UnitSpec) -> bool:
        return spec.lora and spec.kind == "matrix"

    @classmethod
    def fit(
        cls, stack: UnitStack, params: FitParams, store: TensorStore, tick: Tick | None = None
    ) -> LoraTuckerUnit:
        solver = "auto" if params.svd_solver == "auto" else "exact"  # gram / tsqr ask for the exact route
        fit = lora_hosvd(
            stack, params.n_components, center=params.center, modes=params.modes, solver=solver, tick=tick
        )
        spec = stack.spec
        store.declare(cls.layout(spec, (fit.k1, fit.k2)))
        store.write("U", fit.u)
        store.write("V", fit.v)
        store.write("mean_core", fit.mean_core)
        record = LoraTuckerRecord(
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
            solver=fit.solver,
            energy=fit.energy,
            captured_energy=fit.captured_energy,
            held_mean_energy_fraction=fit.held_mean_energy_fraction,
        )
        return cls(spec, fit.cores, store, record)

    @classmethod
    def layout(cls, spec: UnitSpec, coef_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        k1, k2 = coef_shape
        return {"U": (spec.rows, k1), "V": (spec.cols, k2), "mean_core": (k1, k2)}

    # -- description ---------------------------------------------------------------------------------------
    @property
    def energy(self) -> float:
        """``Σ_i ‖ΔW_i‖²`` of the fitted models."""
        return float(self._record.energy)  # type: ignore[attr-defined]

    @property
    def explained_variance_ratio(self) -> torch.Tensor:
        """Mode-1 ``σ_j² / E`` against the exact energy (the spectrum may hold only its leading values)."""
        sv = self.singular_values
        return sv**2 / self.energy if self.energy > 0 else torch.zeros_like(sv)

    def mean_core(self) -> torch.Tensor:
        """``M``, float64 of shape (k1, k2)."""
        return self.tensor("mean_core")

    def mean(self) -> torch.Tensor:
        """The mean update ``U M Vᵀ``, dense, float64 of shape (rows, cols) (formed in memory only)."""
        u, v = self.factors()
        return u @ self.mean_core() @ v.T

    # -- maths ---------------------------------------------------------------------------------------------
    def transform(self, x: torch.Tensor) -> torch.Tensor:
        u, v = self.factors()
        x = x.to(torch.float64).reshape(self.spec.rows, self.spec.cols)
        return u.T @ x @ v - self.mean_core()  # (k1, k2)

    def inverse_transform(self, coefficients: torch.Tensor) -> torch.Tensor:
        u, v = self.factors()
        return u @ (self.mean_core() + coefficients.to(torch.float64)) @ v.T

    def transform_member(self, member: UnitMember) -> torch.Tensor:
        f = member.factors()
        if f is None:
            return self.transform(member.full())
        u, v = self.factors()
        return (u.T @ f[0]) @ (f[1] @ v) - self.mean_core()  # (k1, r) @ (r, k2)

    def residuals(self, member: UnitMember | torch.Tensor) -> Residuals:
        f = member.factors() if isinstance(member, UnitMember) else None
        if f is None:
            return super().residuals(member)
        left, right = f  # (rows, r), (r, cols)
        u, v = self.factors()
        m = self.mean_core()
        ul, rv = u.T @ left, right @ v  # (k1, r), (r, k2)
        g = ul @ rv  # Uᵀ x V
        gr = right @ right.T  # (r, r)
        x_sq = float(((left.T @ left) * gr).sum())
        # x − U Uᵀ x V Vᵀ = L⊥ R + U (Uᵀ L) R⊥, two terms with orthogonal column spaces.
        l_perp = left - u @ ul
        r_perp = right - rv @ v.T
        res_sq = float(((l_perp.T @ l_perp) * gr).sum()) + float(((ul.T @ ul) * (r_perp @ r_perp.T)).sum())
        mean_only = x_sq - 2.0 * float((g * m).sum()) + float((m * m).sum())
        # The mean U M Vᵀ lies in the span, so the basis alone projects exactly as mean + basis does.
        return Residuals(
            coefficients=g - m,
            x_sq=x_sq,
            mean_plus_basis_sq=max(res_sq, 0.0),
            mean_only_sq=max(mean_only, 0.0),
            basis_only_sq=max(res_sq, 0.0),
        )

    def inverse_transform_svd(self, coefficients: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        u, v = self.factors()
        p, s, qh = torch.linalg.svd(self.mean_core() + coefficients.to(torch.float64), full_matrices=False)
        return u @ p, s, v @ qh.T  # (rows, m), (m,), (cols, m)

    def shared_factors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        u, v = self.factors()
        return u, self.coefficients + self.mean_core(), v


UNIT_FITS.register(AutoUnit.method, AutoUnit)
UNIT_FITS.register(LoraTuckerUnit.method, LoraTuckerUnit)
