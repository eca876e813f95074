"""Configuration of a coefficient-only subspace adapter (self-validating, frozen).

The adapter re-parametrises each targeted layer's weight inside the shared subspace stored in a ``.wsz``
archive, so that only the coefficients are trained:

* model-axis PCA (``pca``)  ``ΔW = m·μ + Σ_j c_j V_j``   (``c`` has ``k`` entries per unit);
* Tucker (``hosvd``)        ``ΔW = m·μ + U C Vᵀ``        (``C`` is a trainable ``k1 × k2`` core per unit);

(whatever decomposition the archive holds; see :data:`~weightspace.decompose.UNIT_FITS`)

with ``m = 1`` if ``use_mean`` else ``0``. For an archive of task vectors (built with a base, or of PEFT
adapters) the layer computes ``W = W0 + ΔW`` on top of the model's own weights; for an archive of raw
weights ``W = ΔW`` *replaces* ``W0`` (see :mod:`weightspace.adapt.model`).

References
----------
Kaushik et al., "The Universal Weight Subspace Hypothesis", arXiv:2512.05117.
"""

from __future__ import annotations

import fnmatch
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from weightspace._validation import Interval, Kind, Options, PairOf, validate_params
from weightspace.decompose import UNIT_FITS
from weightspace.errors import ParameterError

__all__ = ["ADAPTER_TYPE", "KCapWarning", "SubspaceAdapterConfig", "matches_module"]

#: Written as ``peft_type`` in ``adapter_config.json`` so that tools that dispatch on it see what this is.
ADAPTER_TYPE = "WEIGHTSPACE_SUBSPACE"

KValue = int | tuple[int, int]


class KCapWarning(UserWarning):
    """A requested ``k`` exceeded what the archive stores for a unit and was capped to the archive's ``k``."""


def matches_module(name: str, patterns: Sequence[str]) -> bool:
    """Whether module ``name`` (or its weight key ``name.weight``) matches one of ``patterns``.

    A pattern matches like PEFT's ``target_modules`` (exact name, or a ``.``-separated suffix) and also as an
    fnmatch glob over the module name or the unit key.

    Examples
    --------
    >>> matches_module("blocks.0.attn.q", ["q"]), matches_module("blocks.0.attn.q", ["blocks.*.attn.*"])
    (True, True)
    >>> matches_module("fc", ["fc.weight"]), matches_module("fc1", ["fc"])
    (True, False)
    """
    key = f"{name}.weight"
    for pat in patterns:
        if name == pat or name.endswith("." + pat) or key == pat or key.endswith("." + pat):
            return True
        if fnmatch.fnmatchcase(name, pat) or fnmatch.fnmatchcase(key, pat):
            return True
    return False


_K_RULES = [Interval(int, 0, None), PairOf((Interval(int, 0, None),))]

_CONSTRAINTS: dict[str, list[Any]] = {
    "archive": [Kind((str, os.PathLike), "a path to a .wsz archive"), Options((None,))],
    "use_mean": [Kind((bool,), "a bool")],
    "init": [Options(("zero", "mean"))],
    "bias": [Options(("subspace", "frozen"))],
    "save_basis": [Kind((bool,), "a bool")],
    "strict_k": [Kind((bool,), "a bool")],
}


@dataclass(frozen=True)
class SubspaceAdapterConfig:
    """Hyperparameters of a coefficient-only adapter; validated on construction.

    Parameters
    ----------
    archive : str, os.PathLike or None
        The ``.wsz`` archive holding the shared subspace (mean, PCA basis or HOSVD factors per unit). None
        when the :class:`~weightspace.decompose.SharedSubspace` is passed to ``inject`` directly.
    target_modules : sequence of str, optional
        Patterns over module names or unit keys (``"q"``, ``"blocks.*.mlp.fc1"``, ``"fc.weight"``). Default:
        every ``nn.Linear`` / ``nn.Conv1d/2d/3d`` whose weight key is a matrix unit of the archive, minus
        ``modules_to_save``.
    k : int, (int, int), mapping of str to those, or None, default None
        Components per unit: ``None`` keeps every component the archive stores; an int caps PCA's ``k`` (and
        both ``k1``, ``k2`` for HOSVD); a pair gives HOSVD ``(k1, k2)``; a mapping gives a value per module
        pattern (first match wins, unmatched units keep the archive's ``k``). ``0`` is allowed: no
        coefficient for that unit (only the mean, if ``use_mean``).
    variant : str or None, default None
        A registered decomposition name; when given it must equal the archive's method for every targeted
        unit. None takes whatever the archive holds.
    use_mean : bool, default True
        Include the archive mean ``μ`` as a fixed (frozen) offset.
    init : {"zero", "mean"}, default "zero"
        Initial coefficients. ``"zero"``: ``c = 0`` (``C = 0``). ``"mean"``: ``c = c̄ = (1/N) Σ_i c_i``, the mean
        of the archive's stored coefficient rows (cores for HOSVD), truncated to the adapter's ``k``. With
        ``use_mean=True`` the adapter then starts at the archive's mean member ``μ + c̄ V``. For a *centered*
        archive ``c̄ = 0`` up to rounding, so ``"mean"`` and ``"zero"`` then start from the same point and
        only ``use_mean`` decides whether training starts at the base or at the mean model.
    bias : {"subspace", "frozen"}, default "subspace"
        ``"subspace"``: a targeted layer's bias is re-parametrised too, through the archive's bias unit
        (``<module>.bias``, a vector unit) with its own ``k`` coefficients. ``"frozen"``: the bias stays ``b0``.
    modules_to_save : sequence of str, default ()
        Patterns of modules kept fully trainable and saved with the adapter (task heads, which are private
        tensors of the archive). They are never re-parametrised and are counted apart from the coefficients.
    save_basis : bool, default False
        Store the mean and basis inside ``adapter_model.safetensors`` (self-contained, larger). Otherwise the
        adapter references the archive by absolute path and the sha256 of its ``manifest.json`` (which itself
        pins every member's sha256), and loading checks both.
    strict_k : bool, default False
        Raise :class:`ParameterError` instead of capping (with a :class:`KCapWarning`) when a requested ``k``
        exceeds what the archive stores for a unit.

    Examples
    --------
    >>> cfg = SubspaceAdapterConfig("zoo.wsz", target_modules=["fc"], k=4)
    >>> cfg.k_for("fc.weight"), cfg.variant, cfg.init
    (4, None, 'zero')
    >>> SubspaceAdapterConfig("zoo.wsz", init="ones")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    weightspace.errors.ParameterError: The 'init' parameter of ... must be one of 'zero', 'mean'. Got 'ones' instead.
    """

    archive: str | os.PathLike[str] | None
    target_modules: tuple[str, ...] | None = None
    k: KValue | Mapping[str, KValue] | None = None
    variant: str | None = None
    use_mean: bool = True
    init: Literal["zero", "mean"] = "zero"
    bias: Literal["subspace", "frozen"] = "subspace"
    modules_to_save: tuple[str, ...] = ()
    save_basis: bool = False
    strict_k: bool = False
    # Not a hyperparameter: filled by ``inject`` so that a saved config records which archive it was fitted on.
    archive_sha256: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        owner = "SubspaceAdapterConfig"
        rules = {**_CONSTRAINTS, "variant": [Options((None, *UNIT_FITS.names()))]}
        validate_params(owner, rules, asdict(self) | {"archive": self.archive})
        if self.archive is not None:
            object.__setattr__(self, "archive", os.fspath(self.archive))
        for name in ("target_modules", "modules_to_save"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, str) or not isinstance(value, Sequence | set | frozenset):
                raise ParameterError(
                    f"The '{name}' parameter of {owner} must be a sequence of str patterns. Got {value!r} instead."
                )
            items = tuple(value)
            if not all(isinstance(p, str) and p for p in items):
                raise ParameterError(
                    f"The '{name}' parameter of {owner} must hold non-empty str patterns. Got {value!r} instead."
                )
            object.__setattr__(self, name, items)
        if self.target_modules is not None and not self.target_modules:
            raise ParameterError(
                f"The 'target_modules' parameter of {owner} must be None (every matching unit) or a non-empty "
                "sequence of patterns. Got () instead."
            )
        k = self.k
        if isinstance(k, list):
            k = tuple(k)
        if isinstance(k, Mapping):
            clean: dict[str, KValue] = {}
            for pat, val in k.items():
                val = tuple(val) if isinstance(val, list) else val
                if not isinstance(pat, str) or not any(r.accepts(val) for r in _K_RULES):
                    raise ParameterError(
                        f"The 'k' parameter of {owner} must map str patterns to an int >= 0 or a pair of ints "
                        f">= 0. Got {pat!r}: {val!r} instead."
                    )
                clean[pat] = val
            k = clean
        elif k is not None and not any(r.accepts(k) for r in _K_RULES):
            raise ParameterError(
                f"The 'k' parameter of {owner} must be None, an int >= 0, a pair of ints >= 0 or a mapping of "
                f"patterns to those. Got {self.k!r} instead."
            )
        if self.variant is not None and _has_pair(k) and UNIT_FITS.get(self.variant).coef_axes == 1:
            raise ParameterError(
                f"The 'k' parameter of {owner} may only be a (k1, k2) pair for a two-mode decomposition; "
                f"variant={self.variant!r} has one coefficient axis. Got {self.k!r}."
            )
        object.__setattr__(self, "k", k)

    # ------------------------------------------------------------------------------------------------
    def k_for(self, unit: str) -> KValue | None:
        """The requested ``k`` of ``unit`` (a weight or bias key), or None for "all the archive stores"."""
        if isinstance(self.k, Mapping):
            module = unit.rsplit(".", 1)[0]
            for pat, val in self.k.items():
                if matches_module(module, [pat]) or fnmatch.fnmatchcase(unit, pat):
                    return val
            return None
        return self.k

    def capped(self, unit: str, available: KValue) -> KValue:
        """``min(requested, available)`` per mode; warns (or raises with ``strict_k``) where it caps.

        Examples
        --------
        >>> SubspaceAdapterConfig("a.wsz", k=3).capped("fc.weight", 5)
        3
        >>> strict = SubspaceAdapterConfig("a.wsz", k=(2, 9), strict_k=True)
        >>> strict.capped("fc.weight", (4, 4))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        weightspace.errors.ParameterError: unit 'fc.weight': requested k=(2, 9) but the archive stores (4, 4); lower k...
        """
        want = self.k_for(unit)
        if want is None:
            return available
        if isinstance(available, tuple):
            w1, w2 = want if isinstance(want, tuple) else (want, want)
            got: KValue = (min(w1, available[0]), min(w2, available[1]))
            over = w1 > available[0] or w2 > available[1]
        else:
            w = want[0] if isinstance(want, tuple) else want
            got = min(w, available)
            over = w > available
        if over:
            msg = f"unit '{unit}': requested k={want} but the archive stores {available}"
            if self.strict_k:
                raise ParameterError(msg + "; lower k or pass strict_k=False to cap it")
            warnings.warn(f"{msg}; using {got}", KCapWarning, stacklevel=5)  # points at the inject() call
        return got

    # ------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the body of ``adapter_config.json``, without the layer records)."""
        d = asdict(self)
        d["archive"] = os.fspath(self.archive)
        for name in ("target_modules", "modules_to_save"):
            d[name] = None if d[name] is None else list(d[name])
        if isinstance(self.k, Mapping):
            d["k"] = {p: list(v) if isinstance(v, tuple) else v for p, v in self.k.items()}
        elif isinstance(self.k, tuple):
            d["k"] = list(self.k)
        return {"peft_type": ADAPTER_TYPE, **d}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SubspaceAdapterConfig:
        """Inverse of :meth:`to_dict` (unknown keys are ignored so layer records may sit beside).

        Examples
        --------
        >>> import json
        >>> cfg = SubspaceAdapterConfig("a.wsz", k={"fc*": 2}, modules_to_save=["head"])
        >>> SubspaceAdapterConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
        True
        """
        if d.get("peft_type", ADAPTER_TYPE) != ADAPTER_TYPE:
            raise ParameterError(f"adapter_config.json has peft_type {d.get('peft_type')!r}, not {ADAPTER_TYPE!r}")
        names = set(cls.__dataclass_fields__)
        kwargs = {k: v for k, v in d.items() if k in names}
        if "archive" not in kwargs:
            raise ParameterError("adapter config lacks the 'archive' field")
        return cls(**kwargs)

    def replace(self, **changes: Any) -> SubspaceAdapterConfig:
        """A copy with ``changes`` applied (and validated)."""
        d = asdict(self) | {"archive": self.archive} | changes
        return type(self)(**d)


def _has_pair(k: Any) -> bool:
    if isinstance(k, tuple):
        return True
    return isinstance(k, Mapping) and any(isinstance(v, tuple) for v in k.values())
