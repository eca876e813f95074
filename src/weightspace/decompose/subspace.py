"""``SharedSubspace``: the estimator shell around :func:`pca_basis` and :func:`hosvd` (scikit-learn contract).

``__init__`` stores keyword-only hyperparameters and nothing else; ``fit`` validates them, fits every unit of
a :class:`~weightspace.collection.Collection` (or of in-memory state dicts) and sets the fitted attributes,
which end in ``_``. Everything is held in memory: to stream a large collection straight to disk use
:func:`weightspace.compress.compress`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from weightspace._validation import Interval, Kind, Options, PairOf, validate_params
from weightspace.collection import Collection
from weightspace.decompose.hosvd import hosvd
from weightspace.decompose.pca import DEFAULT_CHUNK_BYTES, pca_basis
from weightspace.decompose.rank import choose_rank, explained_variance_ratio, sign_flips, zero_tolerance
from weightspace.errors import NotFittedError, ParameterError, ShapeMismatchError, TensorKeyError
from weightspace.units import UnitStack

__all__ = ["SharedSubspace"]

Progress = Callable[[str, int, int], None]


class SharedSubspace:
    """The shared weight subspace of a model collection, one basis per unit (layer weight).

    Parameters
    ----------
    n_components : int, float or pair, default 16
        Components per unit: an int count (capped by the unit's numerical rank), or a float in (0, 1) read as
        the fraction of centered variance to keep. For ``hosvd`` a pair ``(k1, k2)`` sets the modes separately.
    method : {"pca", "hosvd"}, default "pca"
        ``pca``: model-axis PCA (basis of flattened weights). ``hosvd``: zero-centered Tucker on the weight axes
        (``μ + U C_i Vᵀ``); 1-D units fall back to PCA.
    center : bool, default True
        Subtract the mean model. Without centering the first component mostly re-discovers the mean.
    svd_solver : {"auto", "gram", "tsqr"}, default "auto"
        ``auto`` uses the float64 Gram route and switches to a streamed TSQR when a kept component has
        ``σ_k/σ_1 < 1e-7``.
    modes : tuple of int, default (1, 2)
        HOSVD modes to compress.
    chunk_bytes : int
        Memory budget for one streamed chunk (float64, across all models).

    Attributes
    ----------
    layer_keys_ : list of str
        Fitted units, in natural order.
    n_models_ : int
    model_names_ : list of str
    mean_ : dict of str to Tensor of shape unit_shape
        Per-unit mean member (zeros when ``center=False``).
    basis_ : dict of str to Tensor of shape (n_components, prod(unit_shape))
        PCA units: orthonormal rows.
    factors_ : dict of str to tuple of Tensor
        HOSVD units: ``(U (rows, k1), V (cols, k2))``.
    coefficients_ : dict of str to Tensor
        ``(n_models, k)`` for PCA units, ``(n_models, k1, k2)`` for HOSVD units.
    singular_values_ : dict of str to Tensor of shape (n_models,)
        Full PCA spectrum (HOSVD: mode-1 singular values).
    explained_variance_ratio_ : dict of str to Tensor
        Against the full spectrum.
    n_components_ : dict of str to int or tuple of int
        ``k`` (PCA) or ``(k1, k2)`` (HOSVD).
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
        "method": [Options(("pca", "hosvd"))],
        "center": [Kind((bool,), "a bool")],
        "svd_solver": [Options(("auto", "gram", "tsqr"))],
        "modes": [Options(((1, 2), (1,), (2,)))],
        "chunk_bytes": [Interval(int, 1024, None)],
    }

    def __init__(
        self,
        *,
        n_components: int | float = 16,
        method: str = "pca",
        center: bool = True,
        svd_solver: str = "auto",
        modes: tuple[int, ...] = (1, 2),
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ):
        self.n_components = n_components
        self.method = method
        self.center = center
        self.svd_solver = svd_solver
        self.modes = modes
        self.chunk_bytes = chunk_bytes

    def get_params(self) -> dict[str, Any]:
        """Hyperparameters as passed to ``__init__``."""
        return {name: getattr(self, name) for name in self._parameter_constraints}

    def _validate(self) -> None:
        params = self.get_params()
        if self.method == "hosvd" and isinstance(self.n_components, tuple):
            # HOSVD may take (k1, k2); each entry obeys the scalar rule.
            rules = self._parameter_constraints["n_components"]
            validate_params("SharedSubspace", {"n_components": [PairOf(tuple(rules))]}, params)
            params = {k: v for k, v in params.items() if k != "n_components"}
        validate_params("SharedSubspace", self._parameter_constraints, params)

    # -- fitting -----------------------------------------------------------------------------------
    def fit(
        self, X: Collection | Sequence[Mapping[str, torch.Tensor]], progress: Progress | None = None
    ) -> SharedSubspace:
        """Fit one basis per unit.

        Parameters
        ----------
        X : Collection or sequence of mapping of str to Tensor
            Models (members: task vectors with a base, raw weights otherwise). In-memory models must share keys
            and shapes.
        progress : callable, optional
            ``progress(unit_name, done, total)`` after each unit.

        Returns
        -------
        self
        """
        self._validate()
        stacks, names = _stacks(X)
        self._reset()
        self.n_models_ = len(names)
        self.model_names_ = names
        for done, stack in enumerate(stacks, 1):
            self._fit_unit(stack)
            if progress is not None:
                progress(stack.spec.name, done, len(stacks))
        return self

    def _reset(self) -> None:
        self.layer_keys_: list[str] = []
        self.unit_shapes_: dict[str, tuple[int, ...]] = {}
        self.mean_: dict[str, torch.Tensor] = {}
        self.basis_: dict[str, torch.Tensor] = {}
        self.factors_: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.coefficients_: dict[str, torch.Tensor] = {}
        self.singular_values_: dict[str, torch.Tensor] = {}
        self.explained_variance_ratio_: dict[str, torch.Tensor] = {}
        self.n_components_: dict[str, int | tuple[int, int]] = {}
        self.method_: dict[str, str] = {}

    def _fit_unit(self, stack: UnitStack) -> None:
        name, shape = stack.spec.name, stack.spec.shape
        self.layer_keys_.append(name)
        self.unit_shapes_[name] = shape
        if self.method == "hosvd" and stack.spec.kind == "matrix":
            fit = hosvd(stack, self.n_components, center=self.center, modes=self.modes)
            self.mean_[name] = fit.mean.reshape(shape)
            self.factors_[name] = (fit.u, fit.v)
            assert fit.cores is not None
            self.coefficients_[name] = fit.cores
            self.singular_values_[name] = fit.mode1_values
            self.explained_variance_ratio_[name] = explained_variance_ratio(fit.mode1_values)
            self.n_components_[name] = (fit.k1, fit.k2)
            self.method_[name] = "hosvd"
            return
        pfit = pca_basis(
            stack,
            _scalar_rank(self.n_components),
            center=self.center,
            svd_solver=self.svd_solver,
            chunk_bytes=self.chunk_bytes,
        )
        assert pfit.mean is not None
        assert pfit.basis is not None
        self.mean_[name] = pfit.mean.reshape(shape)
        self.basis_[name] = pfit.basis
        self.coefficients_[name] = pfit.coefficients
        self.singular_values_[name] = pfit.singular_values
        self.explained_variance_ratio_[name] = pfit.explained_variance_ratio
        self.n_components_[name] = pfit.k
        self.method_[name] = "pca"

    def partial_fit(self, X: Mapping[str, torch.Tensor] | Sequence[Mapping[str, torch.Tensor]]) -> SharedSubspace:
        """Add one model (or a batch) to a PCA fit without revisiting earlier models (exact incremental SVD).

        Components are kept up to the rank of the data seen so far, so ``partial_fit`` over all models equals
        ``fit`` (to float64 rounding); ``n_components`` truncates only the exposed attributes. Memory is that of
        the untruncated basis, ``O(n_seen · D)`` per unit. PCA only.

        References
        ----------
        Ross et al., "Incremental Learning for Robust Visual Tracking", IJCV 2008 (mean-corrected update).
        """
        self._validate()
        if self.method != "pca":
            raise ParameterError("partial_fit supports method='pca' only")
        batch = [X] if isinstance(X, Mapping) else list(X)
        if not batch:
            return self
        if not hasattr(self, "_ipca"):
            self._reset()
            self._ipca: dict[str, _IPCAState] = {}
            self.n_models_ = 0
            self.model_names_ = []
            keys = list(batch[0])
            for key in keys:
                self.layer_keys_.append(key)
                self.unit_shapes_[key] = tuple(batch[0][key].shape)
        for i, model in enumerate(batch):
            _check_model_keys(model, self.unit_shapes_, f"partial_fit batch item {i}")
        for key in self.layer_keys_:
            x_new = torch.stack([m[key].reshape(-1).to(torch.float64) for m in batch])  # (b, D)
            self._ipca_update(key, x_new)
        self.n_models_ += len(batch)
        self.model_names_ += [f"model-{j}" for j in range(self.n_models_ - len(batch), self.n_models_)]
        for key in self.layer_keys_:
            self._ipca_expose(key)
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

    def _ipca_expose(self, key: str) -> None:
        st = self._ipca[key]
        sv = torch.zeros(st.n, dtype=torch.float64)
        sv[: min(st.n, st.s.numel())] = st.s[: st.n]
        tol = zero_tolerance(sv, st.n, st.vh.shape[1], float(st.coef.norm()))
        sv = torch.where(sv > tol, sv, torch.zeros_like(sv))
        k = choose_rank(sv, self.n_components, tol)
        flips = sign_flips(st.coef[:, :k])  # the same rule as fit: largest-|coefficient| model positive
        self.mean_[key] = st.mean.reshape(self.unit_shapes_[key])
        self.basis_[key] = st.vh[:k] * flips[:, None]
        self.coefficients_[key] = st.coef[:, :k] * flips
        self.singular_values_[key] = sv
        self.explained_variance_ratio_[key] = explained_variance_ratio(sv)
        self.n_components_[key] = k
        self.method_[key] = "pca"

    # -- using a fit ---------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not getattr(self, "layer_keys_", None):
            raise NotFittedError(
                "This SharedSubspace instance is not fitted yet. Call 'fit' with appropriate arguments before "
                "using this estimator."
            )

    def transform(self, X: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Coefficients of one model (its members, e.g. task vectors) in every unit's basis.

        Parameters
        ----------
        X : mapping of str to Tensor
            Unit name → member of the unit's shape.

        Returns
        -------
        dict of str to Tensor
            ``(k,)`` per PCA unit, ``(k1, k2)`` per HOSVD unit.
        """
        self._check_fitted()
        _check_model_keys(X, self.unit_shapes_, "transform input")
        out = {}
        for key in self.layer_keys_:
            xc = X[key].to(torch.float64) - self.mean_[key]
            if self.method_[key] == "hosvd":
                u, v = self.factors_[key]
                out[key] = u.T @ xc.reshape(u.shape[0], -1) @ v  # (k1, k2)
            else:
                out[key] = self.basis_[key] @ xc.reshape(-1)  # (k,)
        return out

    def inverse_transform(self, coefficients: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Members from coefficients: ``μ + c Vₖ`` (PCA) or ``μ + U C Vᵀ`` (HOSVD), in each unit's shape."""
        self._check_fitted()
        out = {}
        for key in self.layer_keys_:
            if key not in coefficients:
                raise TensorKeyError("no coefficients given for this unit", tensor=key)
            c = coefficients[key].to(torch.float64)
            shape = self.unit_shapes_[key]
            if self.method_[key] == "hosvd":
                u, v = self.factors_[key]
                out[key] = (self.mean_[key].reshape(u.shape[0], -1) + u @ c @ v.T).reshape(shape)
            else:
                out[key] = self.mean_[key] + (c @ self.basis_[key]).reshape(shape)
        return out

    def reconstruct(self, i: int) -> dict[str, torch.Tensor]:
        """Fitted model ``i``'s members from its stored coefficients."""
        self._check_fitted()
        return self.inverse_transform({k: v[i] for k, v in self.coefficients_.items()})


def _scalar_rank(n_components: int | float | tuple[int | float, int | float]) -> int | float:
    """PCA rank from a possibly per-mode HOSVD rank (vector units under ``hosvd`` use the mode-1 value)."""
    return n_components[0] if isinstance(n_components, tuple) else n_components


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


def _stacks(X: Collection | Sequence[Mapping[str, torch.Tensor]]) -> tuple[list[UnitStack], list[str]]:
    if isinstance(X, Collection):
        return [X.stack(u.name) for u in X.units], list(X.names)
    models = list(X)
    if len(models) < 2:
        raise ParameterError(f"fit needs at least 2 models, got {len(models)}")
    first = models[0]
    shapes = {k: tuple(v.shape) for k, v in first.items()}
    for i, m in enumerate(models[1:], 1):
        _check_model_keys(m, shapes, f"model {i}")
    stacks = [UnitStack.from_tensors([m[k] for m in models], name=k) for k in first]
    return stacks, [f"model-{i}" for i in range(len(models))]
