"""The unit-fit protocol: one class per decomposition method, registered by name.

A *unit fit* is the fitted decomposition of one unit (one weight key across N models). Each method is one class
that owns all of its maths and its storage:

* ``fit(stack, params, store)`` — the streaming fit; stored tensors (means, bases, factors) go to ``store``,
  which is either memory or one member file of an archive;
* ``transform`` / ``inverse_transform`` / ``residuals`` — coefficients of a member, a member from coefficients,
  and the held-out errors (mean+basis, mean-only, basis-only) a projection reports;
* ``record()`` / ``from_record()`` — its typed manifest record, and the way back from an archive;
* ``parametrisation()`` / ``synthesize()`` — the frozen pieces and the differentiable map that coefficient-only
  adapters train through.

No code outside a unit-fit class branches on the method name: callers look the class up in :data:`UNIT_FITS`
(:func:`unit_fit_for` applies each class's fallback for units it cannot fit, e.g. 1-D vectors under HOSVD, and
lets a class that :attr:`UnitFit.specialises` a method take the units it supports, e.g. LoRA units under
``hosvd`` go to the factored LoRA fit).
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, model_validator

from weightspace._registry import Registry
from weightspace.backends import DEFAULT_CACHE_BYTES
from weightspace.errors import ParameterError, ShapeMismatchError
from weightspace.units import UnitMember, UnitSpec, UnitStack

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "UNIT_FITS",
    "FitParams",
    "MemoryStore",
    "Parametrisation",
    "Residuals",
    "TensorSink",
    "TensorSource",
    "TensorStore",
    "UnitFit",
    "UnitRecord",
    "member_groups",
    "unit_fit_for",
]

DEFAULT_CHUNK_BYTES = 32 * 1024 * 1024
Tick = Callable[[], None]
Rank = int | float | tuple[int | float, int | float]


@dataclass(frozen=True)
class FitParams:
    """What every unit fit reads from the estimator's hyperparameters.

    Attributes
    ----------
    n_components : int, float or pair
        Count, variance fraction in (0, 1), or per-mode pair for two-mode methods.
    center : bool
    svd_solver : str
        ``auto``, ``gram`` or ``tsqr`` (model-axis PCA only).
    modes : tuple of int
        Compressed weight modes (Tucker only).
    chunk_bytes : int
        Budget of one streamed float64 chunk across all models.
    device : str
        Where the linear algebra runs (``cpu``, ``cuda``, ``cuda:N``); a run option, never a result change.
    cache_bytes : int
        A unit whose float64 rows across all models fit in this many bytes is read once and kept between passes
        (memory per unit in flight); larger units are streamed again. A run option, never a result change.
    """

    n_components: Rank = 16
    center: bool = True
    svd_solver: str = "auto"
    modes: tuple[int, ...] = (1, 2)
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    device: str = "cpu"
    cache_bytes: int = DEFAULT_CACHE_BYTES

    @property
    def scalar_rank(self) -> int | float:
        """One rank for single-mode methods (a per-mode pair contributes its first entry)."""
        return self.n_components[0] if isinstance(self.n_components, tuple) else self.n_components


class TensorSink(Protocol):
    """Where a fit streams its stored tensors: memory, or one member file of an archive."""

    def declare(self, layout: Mapping[str, tuple[int, ...]]) -> None:
        """Announce every tensor (name → shape) before the first write."""

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write a whole tensor."""

    def write_flat(self, name: str, offset: int, flat: torch.Tensor) -> None:
        """Write a 1-D run of elements at ``offset`` of ``name``'s flattened data."""


class TensorSource(Protocol):
    """Where a fitted unit reads its stored tensors back from (float64)."""

    def read(self, name: str) -> torch.Tensor:
        """The whole tensor ``name`` in float64."""


class TensorStore(TensorSink, TensorSource, Protocol):
    """A sink that can be read back: what :meth:`UnitFit.fit` writes to."""


class MemoryStore:
    """A :class:`TensorSink` and :class:`TensorSource` that keeps float64 tensors in memory.

    Examples
    --------
    >>> s = MemoryStore()
    >>> s.declare({"w": (2, 2)})
    >>> s.write_flat("w", 2, torch.ones(2))
    >>> s.read("w").tolist()
    [[0.0, 0.0], [1.0, 1.0]]
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor] | None = None) -> None:
        self.tensors: dict[str, torch.Tensor] = {k: v.to(torch.float64) for k, v in (tensors or {}).items()}

    def declare(self, layout: Mapping[str, tuple[int, ...]]) -> None:
        for name, shape in layout.items():
            self.tensors[name] = torch.zeros(shape, dtype=torch.float64)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        self.tensors[name].copy_(tensor.reshape(self.tensors[name].shape))

    def write_flat(self, name: str, offset: int, flat: torch.Tensor) -> None:
        self.tensors[name].view(-1)[offset : offset + flat.numel()] = flat

    def read(self, name: str) -> torch.Tensor:
        return self.tensors[name]


class UnitRecord(BaseModel):
    """The manifest record of one fitted unit; each method extends it with its own fields.

    Attributes
    ----------
    name : str
        The unit's tensor key.
    shape : list of int
        The weight's shape in its own layout.
    rows, cols : int
        Its 2-D view.
    kind : str
        ``matrix`` or ``vector``.
    lora : bool
        True when every model gave the unit as a factored LoRA update.
    method : str
        The registered unit-fit name.
    member : str or None
        The archive member holding the unit's stored tensors (format 2; None in format-1 archives).
    evr_at_k : float
        Fraction of the centered variance the kept components hold.
    mean_energy_fraction : float
        ``‖μ‖² / (‖μ‖² + mean_i ‖x_i − μ‖²)``.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    shape: list[StrictInt]
    rows: StrictInt
    cols: StrictInt
    kind: str = "matrix"
    lora: StrictBool = False
    method: str
    member: str | None = None
    evr_at_k: float = float("nan")
    mean_energy_fraction: float = float("nan")

    @model_validator(mode="before")
    @classmethod
    def _null_is_nan(cls, data: object) -> object:
        """A float statistic written as null (not computed; the manifest is strict JSON) reads back as NaN."""
        if isinstance(data, dict):
            floats = {name for name, f in cls.model_fields.items() if f.annotation in (float, "float")}
            return {k: float("nan") if v is None and k in floats else v for k, v in data.items()}
        return data

    def spec(self) -> UnitSpec:
        """The :class:`~weightspace.units.UnitSpec` this record describes."""
        return UnitSpec(self.name, tuple(self.shape), lora=self.lora)


@dataclass(frozen=True)
class Residuals:
    """Squared errors of one member against one fitted unit (all float64 scalars).

    Attributes
    ----------
    coefficients : Tensor
        The member's coefficients, shape :attr:`UnitFit.coef_shape`.
    x_sq : float
        ``‖x‖²``.
    mean_plus_basis_sq, mean_only_sq, basis_only_sq : float
        ``‖x − μ − P(x − μ)‖²``, ``‖x − μ‖²`` and ``‖x − P x‖²`` with ``P`` the unit's projector.
    """

    coefficients: torch.Tensor
    x_sq: float
    mean_plus_basis_sq: float
    mean_only_sq: float
    basis_only_sq: float


@dataclass
class Parametrisation:
    """The frozen pieces of one unit as a coefficient-only adapter uses them.

    Attributes
    ----------
    unit : str
    method : str
        Registered unit-fit name; :meth:`UnitFit.synthesize` of that class maps coefficients to a tensor.
    shape : tuple of int
        The unit's shape in its own layout.
    buffers : dict of str to Tensor
        Frozen tensors (e.g. a PCA basis of shape (k, rows * cols), or Tucker factors).
    mean : Tensor of shape (rows, cols) or None
    init : Tensor
        Initial coefficients, shape ``coef_shape``.
    """

    unit: str
    method: str
    shape: tuple[int, ...]
    buffers: dict[str, torch.Tensor]
    mean: torch.Tensor | None
    init: torch.Tensor

    @property
    def spec(self) -> UnitSpec:
        return UnitSpec(self.unit, self.shape)

    @property
    def k(self) -> int | tuple[int, ...]:
        """``k`` for one coefficient axis, a tuple for more."""
        dims = tuple(int(d) for d in self.init.shape)
        return dims[0] if len(dims) == 1 else dims

    def check(self) -> None:
        """Raise :class:`ShapeMismatchError` if the pieces do not fit together."""
        cls = UNIT_FITS.get(self.method)
        want = cls.buffer_shapes(self.spec, tuple(int(d) for d in self.init.shape))
        got = {name: tuple(t.shape) for name, t in self.buffers.items()}
        if self.mean is not None:
            want = {**want, "mean": (self.spec.rows, self.spec.cols)}
            got["mean"] = tuple(self.mean.shape)
        for name, shape in want.items():
            if got.get(name) != shape:
                raise ShapeMismatchError(
                    f"{self.method} {name} has shape {got.get(name)}, expected {shape} for a unit of shape "
                    f"{self.shape} with coefficients of shape {tuple(self.init.shape)}",
                    tensor=self.unit,
                )


class UnitFit(abc.ABC):
    """One fitted unit. Subclasses are registered in :data:`UNIT_FITS` under :attr:`method`.

    Attributes
    ----------
    method : str
        Registry name (class attribute).
    record_type : type of UnitRecord
        The typed manifest record (class attribute).
    spec : UnitSpec
    n_models : int
    coefficients : Tensor of shape (n_models, *coef_shape), float64
        The fitted models' coefficients.
    source : TensorSource
        Where the stored tensors are read from.
    """

    method: ClassVar[str]
    record_type: ClassVar[type[UnitRecord]] = UnitRecord
    #: Class used for units this method cannot fit (``supports`` is False), e.g. 1-D vectors under Tucker.
    fallback: ClassVar[type[UnitFit] | None] = None
    #: Number of axes of one model's coefficients (1: a vector of k; 2: a k1 × k2 core).
    coef_axes: ClassVar[int] = 1
    #: Registry names of methods whose units this class fits instead, wherever :meth:`supports` holds (e.g. the
    #: factored LoRA fit specialises ``hosvd`` for LoRA units). :func:`unit_fit_for` consults it.
    specialises: ClassVar[tuple[str, ...]] = ()

    def __init__(self, spec: UnitSpec, coefficients: torch.Tensor, source: TensorSource, record: UnitRecord):
        self.spec = spec
        self.coefficients = coefficients.to(torch.float64)
        self.source = source
        self._record = record

    # -- construction --------------------------------------------------------------------------------------
    @classmethod
    def supports(cls, spec: UnitSpec) -> bool:
        """Whether this method can fit ``spec`` (otherwise :attr:`fallback` is used)."""
        return True

    @classmethod
    def max_components(cls, spec: UnitSpec, n_models: int, params: FitParams) -> int | None:
        """The most components an int ``n_components`` can give this unit whatever the data (None: no fixed cap).

        A request above it is silently capped by the fit; callers that take a rank from a user (``--rank``)
        compare against it to refuse, or report, the cap.
        """
        return None

    @classmethod
    @abc.abstractmethod
    def fit(cls, stack: UnitStack, params: FitParams, store: TensorStore, tick: Tick | None = None) -> UnitFit:
        """Fit one unit, streaming its stored tensors into ``store`` (the result reads them back from it)."""

    @classmethod
    def from_record(cls, record: UnitRecord, coefficients: torch.Tensor, source: TensorSource) -> UnitFit:
        """A fitted unit read back from an archive."""
        rec = (
            cls.record_type.model_validate(record.model_dump()) if type(record) is not cls.record_type else record
        )
        fit = cls(rec.spec(), coefficients, source, rec)
        fit.check_coefficients()
        return fit

    def check_coefficients(self) -> None:
        """Raise :class:`ShapeMismatchError` when stored coefficients disagree with the record."""
        want = (self.coefficients.shape[0], *self.coef_shape)
        if tuple(self.coefficients.shape) != want or self.coefficients.dim() != 1 + len(self.coef_shape):
            raise ShapeMismatchError(
                f"stored coefficients have shape {tuple(self.coefficients.shape)}, the manifest implies "
                f"(n_models, {', '.join(map(str, self.coef_shape))})",
                tensor=self.spec.name,
            )

    # -- description ---------------------------------------------------------------------------------------
    @property
    def n_models(self) -> int:
        return int(self.coefficients.shape[0])

    @property
    @abc.abstractmethod
    def coef_shape(self) -> tuple[int, ...]:
        """Shape of one model's coefficients: ``(k,)`` or ``(k1, k2)``."""

    @property
    def k(self) -> int | tuple[int, ...]:
        """``k`` (one coefficient axis) or the tuple of per-mode ranks."""
        shape = self.coef_shape
        return shape[0] if len(shape) == 1 else shape

    def record(self) -> UnitRecord:
        """The typed manifest record."""
        return self._record

    @property
    def evr_at_k(self) -> float:
        return float(self._record.evr_at_k)

    @property
    def mean_energy_fraction(self) -> float:
        return float(self._record.mean_energy_fraction)

    @property
    @abc.abstractmethod
    def singular_values(self) -> torch.Tensor:
        """The spectrum used for rank selection (full, not truncated)."""

    @property
    def explained_variance_ratio(self) -> torch.Tensor:
        """``σ_j² / Σ σ²`` against the full spectrum."""
        from weightspace.decompose.rank import explained_variance_ratio

        return explained_variance_ratio(self.singular_values)

    @classmethod
    @abc.abstractmethod
    def layout(cls, spec: UnitSpec, coef_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        """Stored tensors (name → shape) of a unit with coefficients of ``coef_shape``."""

    def stored_layout(self) -> dict[str, tuple[int, ...]]:
        """This unit's stored tensors (name → shape)."""
        return self.layout(self.spec, self.coef_shape)

    def tensor(self, name: str) -> torch.Tensor:
        """A stored tensor in float64 (read from :attr:`source` on every call)."""
        shape = self.stored_layout()[name]
        t = self.source.read(name)
        if tuple(t.shape) != shape:
            if t.numel() != int(torch.Size(shape).numel()):
                raise ShapeMismatchError(
                    f"stored {name} has shape {tuple(t.shape)}, the manifest implies {shape}",
                    tensor=self.spec.name,
                )
            t = t.reshape(shape)
        return t.to(torch.float64)

    def mean(self) -> torch.Tensor:
        """The mean member, float64, shape (rows, cols)."""
        return self.tensor("mean").reshape(self.spec.rows, self.spec.cols)

    # -- maths ---------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Coefficients of the member ``x`` (rows, cols), float64, shape :attr:`coef_shape`."""

    @abc.abstractmethod
    def inverse_transform(self, coefficients: torch.Tensor) -> torch.Tensor:
        """The member, float64 of shape (rows, cols), from coefficients of shape :attr:`coef_shape`."""

    def inverse_transform_svd(
        self, coefficients: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The member of ``coefficients`` as a thin SVD from the stored pieces, or None where that needs it dense.

        Returns
        -------
        left : Tensor of shape (rows, m), s : Tensor of shape (m,), right : Tensor of shape (cols, m)
            Orthonormal columns and decreasing singular values with ``member = left diag(s) rightᵀ`` (float64).
        """
        return None

    def shared_factors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """Every fitted member as ``U · core_i · Vᵀ`` with one shared ``U``, ``V``, or None if not of that form.

        Returns
        -------
        U : Tensor of shape (rows, k1), cores : Tensor of shape (n_models, k1, k2), V : Tensor of shape (cols, k2)
            float64; ``cores[i]`` includes the mean's part, so ``member(i) = U cores[i] Vᵀ``.
        """
        return None

    @classmethod
    def requested_coef_shape(
        cls, spec: UnitSpec, n_models: int, params: FitParams, span: int | None = None
    ) -> tuple[int, ...]:
        """The coefficient shape a fit of ``spec`` over ``n_models`` models gets at the requested ranks, from shapes.

        Integer ranks are capped by the unit's shape, the number of models and ``span`` (the joint rank the members
        can have at most, e.g. the sum of LoRA ranks); a variance fraction counts as one component, the least it
        keeps. With :meth:`layout` it estimates the stored size before anything is fitted (used to refuse archives
        larger than their inputs).
        """
        raise NotImplementedError(f"{cls.__name__} does not estimate its coefficient shape")

    def transform_member(self, member: UnitMember) -> torch.Tensor:
        """Coefficients of a lazily read member (a method may use LoRA factors instead of the dense update)."""
        return self.transform(member.full())

    def member(self, i: int) -> torch.Tensor:
        """Fitted model ``i``'s reconstructed member, float64 of shape (rows, cols)."""
        return self.inverse_transform(self.coefficients[i])

    @contextlib.contextmanager
    def pinned(self) -> Iterator[UnitFit]:
        """Inside the block every stored tensor is read once and reused (reconstructing or projecting many models
        then reads a basis once, not once per model); released when the block ends."""
        source = self.source
        self.source = _PinnedSource(source)
        try:
            yield self
        finally:
            self.source = source

    def members(self, indices: Sequence[int]) -> torch.Tensor:
        """Reconstructed members of fitted models ``indices``, float64 of shape (len(indices), rows, cols).

        Methods override this with one batched product; call it inside :meth:`pinned` for many batches.
        """
        with self.pinned():
            if not indices:
                return torch.zeros(0, self.spec.rows, self.spec.cols, dtype=torch.float64)
            return torch.stack([self.member(i).reshape(self.spec.rows, self.spec.cols) for i in indices])

    def residuals_many(self, stack: UnitStack, *, budget_bytes: int = DEFAULT_CHUNK_BYTES) -> list[Residuals]:
        """:meth:`residuals` of every member of ``stack`` (unseen models of this unit), the stored tensors read
        once; methods override it with batched products over groups of members that fit ``budget_bytes``."""
        with self.pinned():
            return [self.residuals(m) for m in stack.members]

    def residuals(self, member: UnitMember | torch.Tensor) -> Residuals:
        """Errors of one (unseen) member: mean+basis, mean-only and basis-only, with its coefficients."""
        x = member.full() if isinstance(member, UnitMember) else member.to(torch.float64)
        x = x.reshape(self.spec.rows, self.spec.cols)
        mu = self.mean()
        xc = x - mu
        c = self.transform(x)
        fit = self.inverse_transform(c) - mu
        raw_fit = self.inverse_transform(self.transform(x + mu)) - mu  # P x, since transform centers by μ
        return Residuals(
            coefficients=c,
            x_sq=float((x * x).sum()),
            mean_plus_basis_sq=float(((xc - fit) ** 2).sum()),
            mean_only_sq=float((xc * xc).sum()),
            basis_only_sq=float(((x - raw_fit) ** 2).sum()),
        )

    # -- adapters ------------------------------------------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def buffer_shapes(cls, spec: UnitSpec, coef_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        """Frozen adapter buffers (name → shape) for coefficients of ``coef_shape``."""

    @abc.abstractmethod
    def parametrisation(
        self, k: int | tuple[int, ...], *, init: str = "zero", use_mean: bool = True
    ) -> Parametrisation:
        """The frozen pieces of this unit truncated to ``k`` leading components, and initial coefficients.

        ``init`` is ``zero`` or ``mean`` (the mean of the fitted models' truncated coefficients).
        """

    @staticmethod
    @abc.abstractmethod
    def synthesize(buffers: Mapping[str, torch.Tensor], coef: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        """``Σ`` of the basis weighted by ``coef`` (no mean), shape (rows, cols); differentiable in ``coef``."""

    @staticmethod
    def lowrank_apply(
        x: torch.Tensor, buffers: Mapping[str, torch.Tensor], coef: torch.Tensor
    ) -> torch.Tensor | None:
        """``x @ synthesize(...)ᵀ`` computed without forming the dense tensor, or None if not cheaper here."""
        return None


class _PinnedSource:
    """A :class:`TensorSource` that reads each tensor from ``source`` once and keeps it."""

    def __init__(self, source: TensorSource):
        self.source = source
        self.tensors: dict[str, torch.Tensor] = {}

    def read(self, name: str) -> torch.Tensor:
        if name not in self.tensors:
            self.tensors[name] = self.source.read(name)
        return self.tensors[name]


def member_groups(n: int, numel: int, budget_bytes: int) -> list[tuple[int, int]]:
    """``[g0, g1)`` ranges of ``n`` members whose float64 values (``numel`` each) fit ``budget_bytes`` together.

    Examples
    --------
    >>> member_groups(5, 100, 1600)
    [(0, 2), (2, 4), (4, 5)]
    """
    step = max(1, budget_bytes // max(1, numel * 8))
    return [(g, min(g + step, n)) for g in range(0, n, step)]


UNIT_FITS: Registry[type[UnitFit]] = Registry("decomposition method")


def unit_fit_for(method: str, spec: UnitSpec) -> type[UnitFit]:
    """The unit-fit class that fits ``spec`` under ``method``.

    A registered class that :attr:`~UnitFit.specialises` ``method`` and :meth:`~UnitFit.supports` ``spec`` wins;
    otherwise ``method``'s own class, following :attr:`~UnitFit.fallback` for units it cannot fit.
    """
    cls = UNIT_FITS.get(method)
    for name in UNIT_FITS.names():
        special = UNIT_FITS.get(name)
        if method in special.specialises and special.supports(spec):
            return special
    seen: list[type[UnitFit]] = []
    while not cls.supports(spec):
        if cls.fallback is None or cls in seen:
            raise ParameterError(
                f"decomposition method '{method}' cannot fit unit '{spec.name}' of shape {spec.shape}"
            )
        seen.append(cls)
        cls = cls.fallback
    return cls
