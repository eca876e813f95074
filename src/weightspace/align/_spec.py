"""Permutation specs: which tensor axes move together under one permutation of hidden units.

A :class:`PermutationSpec` is the Git Re-Basin idea (Ainsworth et al., 2023): a set of *groups*, each a list of
``(tensor key, axis)`` that one permutation of ``size`` units reorders together. Permuting the rows of ``fc1``,
the entries of ``fc1.bias`` and the columns of ``fc2`` by the same permutation leaves an MLP's function unchanged.

An axis may hold its units in *blocks*: an attention head is ``head_dim`` consecutive rows of ``q``, and a channel
of a flattened convolution output is ``positions`` consecutive columns of the next linear layer. An axis of
length ``size × block`` is permuted block-wise.

Groups with ``scale=True`` also carry the positive scale symmetry of ReLU-like units: every entry has a role,
``in`` (the unit's incoming weights and bias, divided by the unit's factor) or ``out`` (its outgoing weights,
multiplied by it).

Examples
--------
>>> spec = PermutationSpec((
...     PermGroup("h1", (AxisRef("fc1.weight", 0), AxisRef("fc1.bias", 0), AxisRef("fc2.weight", 1))),
... ))
>>> shapes = {"fc1.weight": (8, 4), "fc1.bias": (8,), "fc2.weight": (3, 8)}
>>> spec.sizes(shapes)
{'h1': 8}
>>> print(spec.describe(shapes).splitlines()[1])
  h1 (8 units): fc1.weight[0], fc1.bias[0], fc2.weight[1]
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from weightspace.errors import InputError, ShapeMismatchError, TensorKeyError

__all__ = ["ROLES", "AxisRef", "PermGroup", "PermutationSpec", "check_spec"]

ROLES = ("in", "out")
PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class AxisRef:
    """One axis of one tensor that a group permutes.

    Attributes
    ----------
    key : str
        Tensor key.
    axis : int
        Axis index (``0 ≤ axis < ndim``).
    block : int, default 1
        Consecutive indices per unit along the axis (``head_dim`` for attention heads).
    role : {"in", "out"} or None
        For scale groups: ``in`` = the unit's incoming weights/bias, ``out`` = its outgoing weights.
    """

    key: str
    axis: int
    block: int = 1
    role: str | None = None

    def label(self) -> str:
        extra = f"×{self.block}" if self.block != 1 else ""
        return f"{self.key}[{self.axis}{extra}]"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key, "axis": self.axis}
        if self.block != 1:
            out["block"] = self.block
        if self.role is not None:
            out["role"] = self.role
        return out


@dataclass(frozen=True)
class PermGroup:
    """Axes reordered by one permutation.

    Attributes
    ----------
    name : str
    axes : tuple of AxisRef
    scale : bool
        Whether positive per-unit rescaling (``in`` ÷ c, ``out`` × c) is a symmetry (ReLU-like units only).
    note : str
        What the units are, for the printed derivation.
    """

    name: str
    axes: tuple[AxisRef, ...]
    scale: bool = False
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"axes": [a.to_dict() for a in self.axes]}
        if self.scale:
            out["scale"] = True
        if self.note:
            out["note"] = self.note
        return out


@dataclass(frozen=True)
class PermutationSpec:
    """Permutation groups of an architecture.

    Attributes
    ----------
    groups : tuple of PermGroup
        In order (scale canonicalisation walks them in this order, input side first).
    origin : str
        Where the spec came from (``derived: sequential chain``, ``built-in vit``, a file path).
    notes : tuple of str
        What the derivation decided and what it left alone.
    """

    groups: tuple[PermGroup, ...]
    origin: str = "spec"
    notes: tuple[str, ...] = field(default=())

    @property
    def keys(self) -> list[str]:
        """Every tensor key a group touches, in first-use order."""
        seen: dict[str, None] = {}
        for g in self.groups:
            for a in g.axes:
                seen.setdefault(a.key, None)
        return list(seen)

    def entries(self, key: str) -> list[tuple[PermGroup, AxisRef]]:
        """``(group, axis)`` of every permuted axis of ``key``."""
        return [(g, a) for g in self.groups for a in g.axes if a.key == key]

    def group(self, name: str) -> PermGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    @property
    def has_scale(self) -> bool:
        return any(g.scale for g in self.groups)

    def restrict(self, keys: Iterable[str]) -> PermutationSpec:
        """The spec with entries of other keys dropped (groups left empty are dropped too)."""
        keep = set(keys)
        groups = []
        for g in self.groups:
            axes = tuple(a for a in g.axes if a.key in keep)
            if axes:
                groups.append(replace(g, axes=axes))
        return replace(self, groups=tuple(groups))

    def without_scale(self) -> PermutationSpec:
        return replace(self, groups=tuple(replace(g, scale=False) for g in self.groups))

    def sizes(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
        """Units per group, from the shapes of the first axis of each group (no checks; see :func:`check_spec`)."""
        out = {}
        for g in self.groups:
            a = g.axes[0]
            out[g.name] = shapes[a.key][a.axis] // a.block
        return out

    def describe(self, shapes: Mapping[str, tuple[int, ...]] | None = None) -> str:
        """The spec in words: one line per group, then the notes."""
        lines = [f"permutation spec ({self.origin}): {len(self.groups)} group(s)"]
        for g in self.groups:
            size = ""
            a = g.axes[0]
            if shapes is not None and a.key in shapes and a.axis < len(shapes[a.key]):
                size = f" ({shapes[a.key][a.axis] // a.block} units)"
            tags = (" [scale]" if g.scale else "") + (f" — {g.note}" if g.note else "")
            lines.append(f"  {g.name}{size}{tags}: " + ", ".join(x.label() for x in g.axes))
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The spec in the user-file format (``{"groups": {name: {"axes": [...], ...}}}``)."""
        return {"groups": {g.name: g.to_dict() for g in self.groups}}


def check_spec(
    spec: PermutationSpec,
    shapes: Mapping[str, tuple[int, ...]],
    *,
    path: PathLike | None = None,
    spec_path: PathLike | None = None,
    sizes: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Check ``spec`` against one model's shapes; return the units per group.

    Parameters
    ----------
    spec : PermutationSpec
    shapes : mapping of str to shape
        The model's tensors.
    path : path, optional
        The model (named in errors about its shapes).
    spec_path : path, optional
        The spec file (named in errors about the spec itself; default: ``path``).
    sizes : mapping, optional
        Units per group another model has; this model must agree.

    Returns
    -------
    dict of str to int

    Raises
    ------
    TensorKeyError
        A key the model lacks.
    InputError
        An axis out of range, a block that does not divide the axis, an axis in two groups, a scale group
        without roles.
    ShapeMismatchError
        Axes of one group disagree on the number of units, or the model disagrees with ``sizes``.

    Examples
    --------
    >>> spec = PermutationSpec((PermGroup("h", (AxisRef("a", 0), AxisRef("b", 1))),))
    >>> check_spec(spec, {"a": (4, 2), "b": (3, 5)}, spec_path="spec.json")
    Traceback (most recent call last):
    ...
    weightspace.errors.ShapeMismatchError: spec.json: tensor 'b': group 'h' permutes 4 units (from a[0]), but axis 1 has 5
    """
    where = spec_path if spec_path is not None else path
    seen: dict[tuple[str, int], str] = {}
    out: dict[str, int] = {}
    for g in spec.groups:
        if not g.axes:
            raise InputError(f"group '{g.name}' lists no axes", path=where)
        size: int | None = None
        first = ""
        for a in g.axes:
            if a.key not in shapes:
                raise TensorKeyError(
                    f"group '{g.name}' names a tensor the model does not have", path=where, tensor=a.key
                )
            shape = shapes[a.key]
            if not 0 <= a.axis < len(shape):
                raise InputError(
                    f"group '{g.name}': axis {a.axis} is out of range for shape {tuple(shape)}",
                    path=where,
                    tensor=a.key,
                )
            if a.block < 1 or shape[a.axis] % a.block:
                raise InputError(
                    f"group '{g.name}': block {a.block} does not divide axis {a.axis} of shape {tuple(shape)}",
                    path=where,
                    tensor=a.key,
                )
            if (a.key, a.axis) in seen:
                raise InputError(
                    f"axis {a.axis} is in group '{seen[(a.key, a.axis)]}' and again in group '{g.name}'; "
                    "an axis moves with one permutation only",
                    path=where,
                    tensor=a.key,
                )
            seen[(a.key, a.axis)] = g.name
            n = shape[a.axis] // a.block
            if size is None:
                size, first = n, a.label()
            elif n != size:
                raise ShapeMismatchError(
                    f"group '{g.name}' permutes {size} units (from {first}), but axis {a.axis} has {n}",
                    path=where,
                    tensor=a.key,
                )
            if g.scale and a.role not in ROLES:
                raise InputError(
                    f"group '{g.name}' has scale: true, so every axis needs role 'in' or 'out' (got {a.role!r})",
                    path=where,
                    tensor=a.key,
                )
        assert size is not None  # g.axes is non-empty
        if g.scale and {a.role for a in g.axes} != set(ROLES):
            raise InputError(
                f"scale group '{g.name}' needs at least one 'in' and one 'out' axis", path=where, tensor=first
            )
        if sizes is not None and g.name in sizes and sizes[g.name] != size:
            raise ShapeMismatchError(
                f"group '{g.name}' has {size} units in this model but {sizes[g.name]} in the reference",
                path=path,
                tensor=g.axes[0].key,
            )
        out[g.name] = size
    return out
