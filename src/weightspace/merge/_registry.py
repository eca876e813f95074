"""Merge-method registry: declared parameters, their validation, and the :func:`merge_deltas` entry point.

A merge method is a pure function ``fn(deltas, **params) -> Tensor`` that turns the N task vectors of one unit
(one tensor key) into one merged task vector. :func:`merge_method` registers such a function in
:data:`MERGE_METHODS` together with a :class:`Param` declaration per keyword, so that callers (the CLI, config
files) can pass raw strings such as ``"0.3"`` and get scikit-learn-style errors for bad values. The rules and
their coercion are those of :mod:`weightspace._validation`, shared with every other public entry point.

Three declarations say how a method relates to the models (mergekit users rely on all three):

* ``weighted=True``: the method takes per-model ``weights`` (a keyword-only ``weights`` argument, a float64
  tensor of N entries or None for all ones); :func:`merge_deltas` passes them. Other methods refuse weights that
  are not all 1.
* ``Param(..., per_model=True)``: the parameter may also be given as one value per model (e.g. a per-model TIES
  ``density``); the implementation then receives a tuple of N values.
* ``base_free=True``: merging raw weights is meaningful (``linear``, ``slerp``), so full checkpoints may be merged
  without a base (the weights themselves are the "deltas" from zero); ``n_models`` fixes the number of models
  (``slerp``: 2).

Examples
--------
>>> from weightspace._validation import Interval
>>> p = Param(Interval(float, 0, 1, closed="right"), default=0.2, doc="fraction kept")
>>> p.describe()
'a float in (0, 1]'
>>> p.validate("0.5", name="density", method="ties")
0.5
>>> from weightspace.errors import ParameterError
>>> try:
...     p.validate(1.5, name="density", method="ties")
... except ParameterError as err:
...     print(err)
The 'density' parameter of merge method 'ties' must be a float in (0, 1]. Got 1.5 instead.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from weightspace._registry import Registry
from weightspace._validation import Rule, coerce, describe
from weightspace.errors import NonFiniteError, ParameterError, ShapeMismatchError
from weightspace.units import all_finite

__all__ = ["MERGE_METHODS", "MergeMethod", "Param", "list_methods", "merge_deltas", "merge_method"]

MethodFn = Callable[..., Tensor]


@dataclass(frozen=True, init=False)
class Param:
    """Declaration of one keyword parameter of a merge method: its constraint rules, default and doc line.

    The rules are those of :mod:`weightspace._validation` (one validation and coercion system for the library and
    the CLI): a value passes if any rule accepts it, tried in order, so ``Param(Interval(int, ...),
    Interval(float, ...))`` reads ``"16"`` as an int and ``"0.9"`` as a float. Add :data:`~weightspace._validation.
    NONE` to accept ``None`` (and the CLI text ``"none"``).

    Parameters
    ----------
    *rules : Rule
        :class:`~weightspace._validation.Interval` (``Interval(float, 0, 1, closed="right")`` is ``(0, 1]``; an
        infinite bound reads ``inf``), :class:`~weightspace._validation.StrOptions`,
        :class:`~weightspace._validation.Kind` (``BOOL``, a tensor type) or ``NONE``.
    default : object
        Value used when the caller does not pass the parameter; it must satisfy the rules.
    doc : str
        One line for ``--help`` output and the docs.
    cli : bool, default True
        False for parameters that cannot be given as text (tensors such as an external basis).
    per_model : bool, default False
        The parameter may be one value per model (a list or tuple of N values, each checked against the rules);
        the implementation then receives a tuple.

    Examples
    --------
    >>> from weightspace._validation import NONE, Interval
    >>> Param(Interval(float, 0, 1, closed="right"), default=0.2, doc="fraction kept").describe()
    'a float in (0, 1]'
    >>> Param(Interval(int, 1, None), NONE, doc="rank").validate("none", name="rank", method="x") is None
    True
    >>> Param(Interval(float, 0, 1), default=0.5, per_model=True).validate(["0.2", 0.4], name="d", method="x")
    (0.2, 0.4)
    """

    rules: tuple[Rule, ...]
    default: Any
    doc: str
    cli: bool
    per_model: bool

    def __init__(
        self, *rules: Rule, default: Any = None, doc: str = "", cli: bool = True, per_model: bool = False
    ):
        if not rules:
            raise ValueError("a Param needs at least one rule")
        object.__setattr__(self, "rules", tuple(rules))
        object.__setattr__(self, "default", default)
        object.__setattr__(self, "doc", doc)
        object.__setattr__(self, "cli", cli)
        object.__setattr__(self, "per_model", per_model)
        if not any(rule.accepts(default) for rule in self.rules):
            raise ValueError(f"default {default!r} breaks its own constraint: {self.describe()}")

    def describe(self) -> str:
        """The constraint in words, as used in error messages: ``'a float in (0, 1]'``."""
        return describe(self.rules)

    def validate(self, raw: Any, *, name: str, method: str) -> Any:
        """Coerce and check ``raw``; raise :class:`ParameterError` in scikit-learn wording when it is invalid."""
        owner = f"merge method {method!r}"
        if self.per_model and isinstance(raw, list | tuple):
            if not raw:
                raise ParameterError(f"The {name!r} parameter of {owner} got an empty list of per-model values.")
            return tuple(coerce(v, self.rules, name=name, owner=owner) for v in raw)
        return coerce(raw, self.rules, name=name, owner=owner)


@dataclass(frozen=True)
class MergeMethod:
    """A registered merge method.

    Attributes
    ----------
    name : str
        Registry name, e.g. ``"ties"``.
    fn : callable
        The raw implementation ``fn(deltas, **params) -> Tensor``; it trusts its inputs. Call the method through
        :func:`merge_deltas` (or the public function of the same name, or this object) to get validation.
    params : mapping of str to Param
        Declared keyword parameters, in signature order (read-only).
    reference_url : str
        The paper the method follows.
    doc : str
        First line of the implementation's docstring.
    weighted : bool
        Whether the method takes per-model ``weights``.
    base_free : bool
        Whether full checkpoints may be merged without a base (raw weights are merged).
    n_models : int or None
        The exact number of models the method merges (``slerp``: 2), or None for any number.
    """

    name: str
    fn: MethodFn
    params: Mapping[str, Param] = field(default_factory=dict, hash=False)
    reference_url: str = ""
    doc: str = ""
    weighted: bool = False
    base_free: bool = False
    n_models: int | None = None

    def resolve_params(self, raw: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Coerce raw values (CLI strings allowed), fill in defaults and reject unknown or invalid parameters.

        Parameters
        ----------
        raw : mapping of str to object, optional
            Parameter values as given by the caller, e.g. ``{"density": "0.3"}``.

        Returns
        -------
        dict
            Every declared parameter, in declaration order.

        Raises
        ------
        ParameterError
            For an unknown name (the message lists the valid ones) or a value outside its constraint.
        """
        raw = {} if raw is None else raw
        unknown = sorted(set(raw) - set(self.params))
        if unknown:
            valid = ", ".join(repr(n) for n in sorted(self.params)) or "none"
            raise ParameterError(
                f"Unknown parameter {unknown[0]!r} for merge method {self.name!r}. Valid parameters: {valid}."
            )
        return {
            name: param.validate(raw[name], name=name, method=self.name) if name in raw else param.default
            for name, param in self.params.items()
        }

    def __call__(self, deltas: Sequence[Tensor], **params: Any) -> Tensor:
        """Same as ``merge_deltas(self, deltas, **params)``."""
        return merge_deltas(self, deltas, **params)


MERGE_METHODS: Registry[MergeMethod] = Registry("merge method")
"""Every built-in merge method by name; filled when :mod:`weightspace.merge` is imported."""


def merge_method(
    name: str,
    *,
    reference_url: str,
    params: Mapping[str, Param] | None = None,
    weighted: bool = False,
    base_free: bool = False,
    n_models: int | None = None,
) -> Callable[[MethodFn], MethodFn]:
    """Register a merge-method implementation under ``name`` (decorator).

    The decorated implementation must take the deltas positionally and exactly the declared parameters as
    keyword-only arguments with the declared defaults; a mismatch raises ``TypeError`` at import time, so the
    declarations cannot drift from the code. The decorator returns a validating wrapper: calling it is the same as
    :func:`merge_deltas` with this method.

    Parameters
    ----------
    name : str
        Registry name; registering a name twice raises ``ValueError``.
    reference_url : str
        The paper (arXiv abstract page) the implementation follows.
    params : mapping of str to Param, optional
        Declared keyword parameters.
    weighted : bool, default False
        The implementation takes per-model weights as its first keyword-only argument, ``weights=None`` (not
        declared in ``params``).
    base_free : bool, default False
        Raw weights may be merged (full checkpoints without a base).
    n_models : int, optional
        The exact number of models the method merges.

    Returns
    -------
    callable
        Decorator returning the validating public function; the :class:`MergeMethod` is attached to it as
        ``.merge_method``.
    """
    declared = dict(params or {})

    def wrap(fn: MethodFn) -> MethodFn:
        signature = inspect.signature(fn)
        keywords = {
            p.name: p.default for p in signature.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY
        }
        if weighted:
            if next(iter(keywords), None) != "weights" or keywords["weights"] is not None:
                raise TypeError(f"{fn.__name__}: a weighted method takes 'weights=None' as its first keyword")
            del keywords["weights"]
        if list(keywords) != list(declared):
            raise TypeError(f"{fn.__name__}: keyword-only arguments {list(keywords)} != declared {list(declared)}")
        for key, param in declared.items():
            if keywords[key] is not param.default and keywords[key] != param.default:
                raise TypeError(f"{fn.__name__}: default of {key!r} differs from its Param declaration")
        doc = inspect.getdoc(fn)
        if not doc:
            raise TypeError(f"{fn.__name__}: a merge method needs a docstring")
        method = MergeMethod(
            name=name,
            fn=fn,
            params=MappingProxyType(declared),
            reference_url=reference_url,
            doc=doc.splitlines()[0],
            weighted=weighted,
            base_free=base_free,
            n_models=n_models,
        )
        MERGE_METHODS.register(name, method)

        @functools.wraps(fn)
        def public(deltas: Sequence[Tensor], **kwargs: Any) -> Tensor:
            return merge_deltas(method, deltas, **kwargs)

        public.merge_method = method  # type: ignore[attr-defined]
        return public

    return wrap


def list_methods() -> list[dict[str, Any]]:
    """Every registered merge method with its parameters (type, range, default) and reference paper.

    Returns
    -------
    list of dict
        One dict per method, sorted by name: ``name``, ``doc`` (one line), ``reference_url``, ``weighted``
        (takes per-model weights), ``base_free`` (merges raw weights without a base), ``n_models`` and ``params``,
        a list of ``{"name", "constraint", "default", "doc", "cli", "per_model"}``.

    Examples
    --------
    >>> import weightspace.merge
    >>> [m["name"] for m in list_methods()][:3]
    ['dare', 'dare_ties', 'knots']
    >>> next(p for p in list_methods()[0]["params"] if p["name"] == "p")["constraint"]
    'a float in [0, 1)'
    """
    out = []
    for name in MERGE_METHODS.names():
        method = MERGE_METHODS.get(name)
        out.append(
            {
                "name": name,
                "doc": method.doc,
                "reference_url": method.reference_url,
                "weighted": method.weighted,
                "base_free": method.base_free,
                "n_models": method.n_models,
                "params": [
                    {
                        "name": pname,
                        "constraint": param.describe(),
                        "default": param.default,
                        "doc": param.doc,
                        "cli": param.cli,
                        "per_model": param.per_model,
                    }
                    for pname, param in method.params.items()
                ],
            }
        )
    return out


def _lookup(method: str | MergeMethod | MethodFn) -> MergeMethod | None:
    """The registered method behind ``method``, or None for a plain (unregistered) callable."""
    if isinstance(method, str):
        return MERGE_METHODS.get(method)
    if isinstance(method, MergeMethod):
        return method
    attached = getattr(method, "merge_method", None)
    if isinstance(attached, MergeMethod):
        return attached
    if callable(method):
        return None
    raise ParameterError(f"method must be a merge-method name or a callable; got {type(method).__name__}.")


def _shape_str(shape: Sequence[int]) -> str:
    return str(tuple(shape))


def _checked_deltas(deltas: Sequence[Tensor]) -> list[Tensor]:
    if isinstance(deltas, Tensor):
        raise ParameterError(
            "deltas must be a sequence of tensors, one per model; got a single tensor. "
            "Pass list(stacked) for a stacked (n_models, ...) tensor or [delta] for one model."
        )
    try:
        deltas = list(deltas)
    except TypeError:
        raise ParameterError(f"deltas must be a sequence of tensors; got {type(deltas).__name__}.") from None
    if len(deltas) == 0:
        raise ParameterError("merging needs at least one delta; got 0.")
    first = deltas[0]
    for i, delta in enumerate(deltas):
        if not isinstance(delta, Tensor):
            raise ParameterError(f"delta {i} is a {type(delta).__name__}, not a torch.Tensor.")
        if not delta.is_floating_point():
            raise ParameterError(f"delta {i} has dtype {delta.dtype}; task vectors must be floating point.")
        if delta.shape != first.shape:
            raise ShapeMismatchError(
                f"delta {i} has shape {_shape_str(delta.shape)} but delta 0 has shape {_shape_str(first.shape)}; "
                "all deltas of one unit must have the same shape."
            )
        if delta.device != first.device:
            raise ParameterError(f"delta {i} is on {delta.device} but delta 0 is on {first.device}.")
        if not all_finite(delta):
            raise NonFiniteError(f"delta {i} contains NaN or infinity.")
    return deltas


def _checked_weights(weights: Any, n: int, device: torch.device) -> Tensor | None:
    if weights is None:
        return None
    try:
        w = torch.as_tensor(
            [float(x) for x in (weights.tolist() if isinstance(weights, Tensor) else weights)], dtype=torch.float64
        )
    except (TypeError, ValueError):
        raise ParameterError(
            f"weights must be a sequence of {n} numbers, one per model; got {weights!r}."
        ) from None
    if w.numel() != n:
        raise ParameterError(f"weights has {w.numel()} entries for {n} models; give one weight per model.")
    if not bool(torch.isfinite(w).all()):
        raise ParameterError("weights must be finite numbers.")
    return w.to(device)


def _check_per_model(method: MergeMethod, kwargs: Mapping[str, Any], n: int) -> None:
    for name, value in kwargs.items():
        if method.params[name].per_model and isinstance(value, tuple) and len(value) != n:
            raise ParameterError(
                f"The {name!r} parameter of merge method {method.name!r} has {len(value)} per-model values for "
                f"{n} models; give one per model (or a single value)."
            )


def merge_deltas(
    method: str | MergeMethod | MethodFn,
    deltas: Sequence[Tensor],
    *,
    weights: Sequence[float] | Tensor | None = None,
    **params: Any,
) -> Tensor:
    """Merge the N task vectors of one unit with a registered method or a plain callable.

    Parameters
    ----------
    method : str, MergeMethod or callable
        A name in :data:`MERGE_METHODS` (``"ties"``), a registered method (or its public function), or any
        callable ``fn(deltas, **params) -> Tensor``. A plain callable receives the deltas already converted to
        float64 and the ``params`` unchanged.
    deltas : sequence of Tensor
        N ≥ 1 task vectors (fine-tuned minus base) of one unit, each of the same shape and any floating dtype:
        1-D (bias, norm) or 2-D ``(d_out, d_in)`` (conv weights reshaped to 2-D by the caller).
    weights : sequence of float, optional
        One weight per model, for methods declared ``weighted`` (a plain callable receives them as ``weights=``
        when given). Methods that take no weights accept only all-ones weights (which change nothing).
    **params
        Method parameters; for registered methods, raw CLI strings are coerced (``density="0.3"``) and missing
        ones take their defaults.

    Returns
    -------
    Tensor
        The merged delta, float64, same shape as one delta. The caller adds it to the base weight and casts.

    Raises
    ------
    ParameterError
        Unknown method or parameter, invalid parameter value, no deltas, or non-float deltas.
    ShapeMismatchError
        Deltas of different shapes (the message names the index), or a callable returning the wrong shape.
    NonFiniteError
        A delta or the merged result holds NaN or infinity.

    Examples
    --------
    >>> import torch
    >>> a, b = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 2.0])
    >>> merge_deltas("mean", [a, b])
    tensor([2., 0.], dtype=torch.float64)
    >>> merge_deltas("task_arithmetic", [a, b], lam="0.5")
    tensor([2., 0.], dtype=torch.float64)
    >>> merge_deltas(lambda ds, scale: scale * torch.stack(ds).amax(0), [a, b], scale=2.0)
    tensor([6., 4.], dtype=torch.float64)
    >>> merge_deltas("linear", [a, b], weights=[3.0, 1.0])  # (3a + b) / 4
    tensor([ 1.5000, -1.0000], dtype=torch.float64)
    """
    registered = _lookup(method)
    deltas = _checked_deltas(deltas)
    first = deltas[0]
    w = _checked_weights(weights, len(deltas), first.device)
    if registered is not None:
        kwargs = registered.resolve_params(params)
        _check_per_model(registered, kwargs, len(deltas))
        if registered.n_models is not None and len(deltas) != registered.n_models:
            raise ParameterError(
                f"merge method {registered.name!r} merges exactly {registered.n_models} models; got {len(deltas)}."
            )
        if registered.weighted:
            kwargs = {"weights": w, **kwargs}
        elif w is not None and not bool((w == 1).all()):
            takers = ", ".join(n for n in MERGE_METHODS.names() if MERGE_METHODS.get(n).weighted)
            raise ParameterError(
                f"merge method {registered.name!r} takes no per-model weights (methods that do: {takers})."
            )
        fn: MethodFn = registered.fn
        label = f"merge method {registered.name!r}"
        # Registered methods stack straight into float64, which saves one full copy of the inputs.
        inputs = deltas
    else:
        kwargs = dict(params) if w is None else {"weights": w, **params}
        fn = method  # type: ignore[assignment]
        label = f"merge function {getattr(method, '__name__', repr(method))!r}"
        inputs = [d.to(torch.float64) for d in deltas]
    if first.numel() == 0:
        return torch.zeros(first.shape, dtype=torch.float64, device=first.device)
    out = fn(inputs, **kwargs)
    if not isinstance(out, Tensor):
        raise ParameterError(f"{label} returned a {type(out).__name__}, not a torch.Tensor.")
    if out.shape != first.shape:
        raise ShapeMismatchError(
            f"{label} returned shape {_shape_str(out.shape)}; expected {_shape_str(first.shape)}."
        )
    if not all_finite(out):
        raise NonFiniteError(f"{label} produced NaN or infinity (inputs were finite; check the parameters).")
    return out.to(torch.float64)
