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

* ``exact`` — a thin SVD of ``M``, ``O(rows · (N r)²)``: the whole spectrum;
* ``randomized`` — a randomized range finder (Halko, Martinsson & Tropp): ``Q = orth(S Ω)`` for a Gaussian
  ``Ω`` with ``b = k + 10`` columns, ``S`` applied through the factors (``L (K_iᵀ K_i (Lᵀ Ω))``, with ``K_i`` from
  the Cholesky factor of the r × r Gram), then the SVD of ``Qᵀ M``: three products with the stacked factors,
  ``O(rows · N r · b)``, and the leading ``b`` singular values; EVRs still divide by the exact ``E``. The draw is on
  the rows side, so the result depends on ``S`` alone and keeps the gauge invariance.

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
import torch.nn.functional as F
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
from weightspace.decompose.rank import choose_rank, sign_fix, sign_flips, zero_tolerance
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

OVERSAMPLE = 10
POWER_ITERATIONS = 0
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


def _stacked(factors: Sequence[Factors], name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``[L_1 … L_N]`` (rows, N·r) and ``[R_1; …; R_N]`` (N·r, cols), float64, ranks zero-padded to the largest."""
    if not factors:
        raise ShapeMismatchError("no LoRA factors to fit", tensor=name)
    rows, cols = factors[0][0].shape[0], factors[0][1].shape[1]
    for i, (left, right) in enumerate(factors):
        if left.shape[0] != rows or right.shape[1] != cols or left.shape[1] != right.shape[0]:
            raise ShapeMismatchError(
                f"member {i} has factors {tuple(left.shape)} × {tuple(right.shape)}; member 0 gives a "
                f"{rows} × {cols} update",
                tensor=name,
            )
    r = max(int(left.shape[1]) for left, _ in factors)
    lefts = [F.pad(left, (0, r - left.shape[1])) if left.shape[1] < r else left for left, _ in factors]
    rights = [F.pad(right, (0, 0, 0, r - right.shape[0])) if right.shape[0] < r else right for _, right in factors]
    return torch.cat(lefts, dim=1).to(torch.float64), torch.cat(rights, dim=0).to(torch.float64)


def _gram_factor(x: torch.Tensor, *, precise: bool) -> torch.Tensor:
    """Upper-triangular ``K_i`` (n, r', r) with ``K_iᵀ K_i = x_iᵀ x_i`` for blocks ``x`` of shape (n, h, r).

    ``precise``: from the QR of ``x_i`` (full accuracy in every direction). Otherwise from the Cholesky factor of
    the r × r Gram (one small product per block; its smallest directions carry ``√eps``-level error, which only the
    randomized route's approximate values see), falling back to QR for singular blocks.
    """
    if precise or x.shape[1] < x.shape[2]:
        return torch.linalg.qr(x, mode="r").R
    chol, info = torch.linalg.cholesky_ex(x.transpose(1, 2) @ x)
    k = chol.transpose(1, 2).contiguous()
    bad = info != 0
    if bool(bad.any()):
        k[bad] = torch.linalg.qr(x[bad], mode="r").R
    return k


class _Mode:
    """One mode's scatter ``S = Σ_i L_i (K_iᵀ K_i) L_iᵀ``, kept as the stacked factors and r × r blocks.

    For mode 1, ``L_i`` are the left factors and ``K_iᵀ K_i = R_i R_iᵀ``; for mode 2 the roles swap. ``S = M Mᵀ``
    with ``M = [L_1 K_1ᵀ, …, L_N K_Nᵀ]``, which only the exact route forms.

    Parameters
    ----------
    lcat : Tensor of shape (height, n * r)
        ``[L_1, …, L_N]``.
    other : Tensor of shape (n, h, r)
        The other side's factors as blocks (``R_iᵀ`` for mode 1, ``L_i`` for mode 2), ``K_i`` come from them.
    """

    def __init__(self, lcat: torch.Tensor, other: torch.Tensor):
        self.lcat = lcat
        self.other = other
        self.n = int(other.shape[0])
        self.k = _gram_factor(other, precise=False)  # (n, r', r)

    @property
    def width(self) -> int:
        return min(int(self.lcat.shape[0]), self.n * int(self.k.shape[1]))

    def matrix(self) -> torch.Tensor:
        """``M`` with factors ``K_i`` from QR (full accuracy), shape (height, n * r')."""
        return self.right(self.lcat, _gram_factor(self.other, precise=True))

    def right(self, c: torch.Tensor, k: torch.Tensor | None = None) -> torch.Tensor:
        """``c · blockdiag(K_iᵀ)`` for ``c`` of shape (b, n * r): shape (b, n * r')."""
        k = self.k if k is None else k
        b, (n, rr, r) = c.shape[0], k.shape
        blocks = c.reshape(b, n, r).permute(1, 0, 2) @ k.transpose(1, 2)  # (n, b, r')
        return blocks.permute(1, 0, 2).reshape(b, n * rr)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``S x`` for ``x`` of shape (height, b), through the factors (two thin products and r × r blocks)."""
        n, _, r = self.k.shape
        z = (self.lcat.T @ x).reshape(n, r, -1)  # (n, r, b)
        z = self.k.transpose(1, 2) @ (self.k @ z)  # K_iᵀ K_i z_i
        return self.lcat @ z.reshape(n * r, -1)  # (height, b)


def _modes(lcat: torch.Tensor, rcat: torch.Tensor, n: int) -> tuple[_Mode, _Mode]:
    """The two modes of updates ``L_i R_i`` given stacked: ``lcat`` (rows, n·r), ``rcat`` (n·r, cols)."""
    rows, cols = lcat.shape[0], rcat.shape[1]
    r = lcat.shape[1] // n
    lb = lcat.reshape(rows, n, r).permute(1, 0, 2)  # (n, rows, r), a view
    rbt = rcat.reshape(n, r, cols).transpose(1, 2)  # (n, cols, r): R_iᵀ, a view
    return _Mode(lcat, rbt), _Mode(rcat.T, lb)


def _left_exact(mode: _Mode) -> tuple[torch.Tensor, torch.Tensor]:
    m = mode.matrix()
    if min(m.shape) == 0:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(m.shape[0], 0, dtype=torch.float64)
    u, s, _ = torch.linalg.svd(m, full_matrices=False)
    return s, u


def _left_randomized(
    mode: _Mode, block: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Leading ``block`` singular values and left vectors of ``M`` by a randomized range finder on ``S = M Mᵀ``.

    The draw is on the height side and the range is found through ``S`` alone; the values come from the SVD of
    ``Qᵀ M`` (not squared). Factors rotated by ``B R``, ``Rᵀ A`` give the same ``S`` and the same ``Qᵀ M`` up to
    a rotation on the right, hence the same result.

    Returns
    -------
    sv : Tensor of shape (block,)
    vecs : Tensor of shape (height, block)
    projected : Tensor of shape (block, n * r)
        ``vecsᵀ [L_1 … L_N]`` (reused for the cores).
    """
    omega = torch.randn(mode.lcat.shape[0], block, generator=generator, dtype=torch.float64)  # (height, b)
    q = torch.linalg.qr(mode.apply(omega)).Q  # (height, b)
    for _ in range(POWER_ITERATIONS):
        q = torch.linalg.qr(mode.apply(q)).Q
    c = q.T @ mode.lcat  # (b, n * r)
    uu, s, _ = torch.linalg.svd(mode.right(c), full_matrices=False)  # Qᵀ M = Ũ Σ …
    return s, q @ uu, uu.T @ c


def _rank(sv: torch.Tensor, rank: int | float, tol: float, energy: float, complete: bool) -> int | None:
    """The shared rank rule on a spectrum; None if a fraction is not reached within a partial spectrum."""
    if complete or isinstance(rank, int):
        return choose_rank(sv, rank, tol)
    # The energy the partial spectrum leaves out, as one trailing value: fractions refer to the exact E.
    rest = max(energy - float((sv**2).sum()), 0.0) ** 0.5
    k = choose_rank(torch.cat([sv, torch.tensor([rest], dtype=torch.float64)]), rank, tol)
    return k if k <= sv.numel() else None


def _mode_basis(
    mode: _Mode,
    rank: int | float,
    *,
    n_features: int,
    energy: float,
    route: str,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, str, torch.Tensor]:
    """``(vectors (height, k), spectrum, route used, vectorsᵀ [L_1 … L_N] (k, n * r))`` for one mode."""
    width = mode.width
    block = min(width, (int(rank) if isinstance(rank, int) else 2 * OVERSAMPLE) + OVERSAMPLE)
    while route == "randomized" or (route == "auto" and block * _WIDTH_PER_BLOCK < width):
        sv, vecs, proj = _left_randomized(mode, block, generator)
        tol = zero_tolerance(sv, mode.n, n_features, energy**0.5)
        k = _rank(sv, rank, tol, energy, complete=block >= width)
        conditioned = k is not None and (k == 0 or float(sv[k - 1]) >= ILL_CONDITIONED * float(sv[0]))
        if k is not None and (conditioned or route == "randomized"):
            flips = sign_flips(vecs[:, :k])
            return vecs[:, :k] * flips, sv, "randomized", proj[:k] * flips[:, None]
        if k is not None or block >= width:
            break  # ill-conditioned for the randomized values (auto), or a forced route that saw everything
        block = min(width, 2 * block)  # a fraction not reached within the leading values: widen
    sv, vecs = _left_exact(mode)
    tol = zero_tolerance(sv, mode.n, n_features, energy**0.5)
    k = choose_rank(sv, rank, tol)
    vecs = sign_fix(vecs[:, :k].contiguous())
    return vecs, sv, "exact", vecs.T @ mode.lcat


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
    lcat, rcat = _stacked(pairs, name)  # (rows, n * r), (n * r, cols)
    n, rows, cols = len(pairs), lcat.shape[0], rcat.shape[1]
    r1, r2 = _ranks(ranks)
    del pairs
    mode1, mode2 = _modes(lcat, rcat, n)
    # Σ_i ‖L_i R_i‖² = Σ_i tr(L_iᵀ L_i R_i R_iᵀ) = Σ_i ‖J_i K_iᵀ‖² = trace S1 = trace S2
    energy = float(((mode2.k @ mode1.k.transpose(1, 2)) ** 2).sum())
    routes, bases, projected, values = [], [], [], []
    for mode, data, rank, size in ((1, mode1, r1, rows), (2, mode2, r2, cols)):
        vecs, sv, used, proj = _mode_basis(
            data,
            rank if mode in modes else size,
            n_features=rows * cols,
            energy=energy,
            route=solver,
            generator=torch.Generator().manual_seed(seed + mode),
        )
        if mode not in modes:  # the identity: its projection is the factors themselves
            vecs, proj = torch.eye(size, dtype=torch.float64), data.lcat
        routes.append(used)
        values.append(sv)
        bases.append(vecs)
        projected.append(proj)
        if tick is not None:
            tick()
    u, v = bases
    ul = projected[0].reshape(u.shape[1], n, -1).permute(1, 0, 2)  # Uᵀ L_i: (n, k1, r)
    rv = projected[1].reshape(v.shape[1], n, -1).permute(1, 2, 0)  # R_i V: (n, r, k2)
    g = ul @ rv  # raw cores Uᵀ ΔW_i V: (n, k1, k2)
    mean_core = g.mean(0) if center else torch.zeros(u.shape[1], v.shape[1], dtype=torch.float64)
    mean_sq = float("nan")
    if "randomized" not in routes:
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
