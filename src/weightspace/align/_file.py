"""User permutation-spec files (YAML or JSON) and the one rule that turns any ``spec=`` argument into a spec.

File format (JSON shown; YAML is the same structure)::

    {"groups": {
        "hidden1": {"axes": [["fc1.weight", 0, "in"], ["fc1.bias", 0, "in"], ["fc2.weight", 1, "out"]],
                    "scale": true},
        "heads0":  [{"key": "attn.q.weight", "axis": 0, "block": 8}, {"key": "attn.proj.weight", "axis": 1,
                    "block": 8}]
    }}

A group is a list of axes or an object with ``axes`` (and optional ``scale``, ``note``). An axis is
``[key, axis]``, ``[key, axis, role]`` or ``{"key", "axis", "block"?, "role"?}``. ``scale: true`` declares the
positive scale symmetry of ReLU-like units and needs a role (``in``/``out``) on every axis. Every problem is an
:class:`~weightspace.errors.InputError` naming the file and the key (and the place in the file).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from weightspace.align._builtin import BUILTIN_SPECS, heads_from_configs, parse_builtin
from weightspace.align._derive import derive_sequential
from weightspace.align._spec import ROLES, AxisRef, PermGroup, PermutationSpec
from weightspace.errors import CorruptFileError, DependencyError, InputError, ParameterError

__all__ = ["MAX_SPEC_BYTES", "load_spec", "resolve_spec", "spec_from_dict"]

MAX_SPEC_BYTES = 4 << 20
PathLike = str | os.PathLike[str]


def _read(path: Path) -> Any:
    """A spec file: a regular file of at most MAX_SPEC_BYTES, parsed by the bounded JSON / YAML parsers."""
    from weightspace._json import parse_json, parse_yaml
    from weightspace.io import read_regular

    raw = read_regular(path, limit=MAX_SPEC_BYTES, what="spec file", missing=InputError)
    if path.suffix.lower() == ".json":
        return parse_json(raw, path=path, what="spec file")
    try:
        import yaml  # noqa: F401 - parse_yaml needs it
    except ImportError as err:
        raise DependencyError(
            f"reading a YAML spec needs pyyaml, a dependency of weightspace ({err}); reinstall weightspace, or "
            "write the spec as .json"
        ) from err
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CorruptFileError(f"cannot read spec file ({err})", path=path) from None
    return parse_yaml(text, path=path, what="spec file")


def _axis(raw: Any, where: str, path: PathLike | None) -> AxisRef:
    if isinstance(raw, Sequence) and not isinstance(raw, str) and 2 <= len(raw) <= 3:
        fields: dict[str, Any] = {"key": raw[0], "axis": raw[1]}
        if len(raw) == 3:
            fields["role"] = raw[2]
    elif isinstance(raw, Mapping):
        fields = dict(raw)
        unknown = sorted(set(fields) - {"key", "axis", "block", "role"})
        if unknown:
            raise InputError(f"{where}: unknown field(s) {unknown}; an axis has key, axis, block, role", path=path)
    else:
        raise InputError(
            f"{where}: an axis is [key, axis], [key, axis, role] or an object; got {raw!r}", path=path
        )
    key = fields.get("key")
    if not isinstance(key, str) or not key:
        raise InputError(f"{where}: 'key' must be a tensor key (a non-empty string); got {key!r}", path=path)
    axis, block, role = fields.get("axis"), fields.get("block", 1), fields.get("role")
    for name, value in (("axis", axis), ("block", block)):
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "axis" else 1):
            bound = ">= 0" if name == "axis" else ">= 1"
            raise InputError(f"{where}: '{name}' must be an int {bound}; got {value!r}", path=path, tensor=key)
    if role is not None and role not in ROLES:
        raise InputError(f"{where}: 'role' must be 'in' or 'out'; got {role!r}", path=path, tensor=key)
    return AxisRef(key, axis, block, role)


def spec_from_dict(data: Any, *, path: PathLike | None = None) -> PermutationSpec:
    """Parse the file format (already loaded) into a :class:`PermutationSpec`; errors name ``path``.

    Examples
    --------
    >>> spec = spec_from_dict({"groups": {"h": [["fc1.weight", 0], ["fc2.weight", 1]]}})
    >>> [a.label() for a in spec.groups[0].axes]
    ['fc1.weight[0]', 'fc2.weight[1]']
    >>> spec_from_dict({"groups": {"h": [["fc1.weight", "0"]]}}, path="s.json")
    Traceback (most recent call last):
    ...
    weightspace.errors.InputError: s.json: tensor 'fc1.weight': groups.h.axes[0]: 'axis' must be an int >= 0; got '0'
    """
    if not isinstance(data, Mapping) or not isinstance(data.get("groups"), Mapping) or not data["groups"]:
        raise InputError("a spec is an object with a non-empty 'groups' mapping (group name → axes)", path=path)
    extra = sorted(set(data) - {"groups"})
    if extra:
        raise InputError(f"unknown top-level field(s) {extra}; a spec has 'groups' only", path=path)
    groups = []
    for name, raw in data["groups"].items():
        if not isinstance(name, str) or not name or "/" in name:
            raise InputError(f"group name {name!r} must be a non-empty string without '/'", path=path)
        scale, note = False, ""
        if isinstance(raw, Mapping):
            unknown = sorted(set(raw) - {"axes", "scale", "note"})
            if unknown:
                raise InputError(
                    f"groups.{name}: unknown field(s) {unknown}; a group has axes, scale, note", path=path
                )
            scale, note, raw = raw.get("scale", False), raw.get("note", ""), raw.get("axes")
            if not isinstance(scale, bool):
                raise InputError(f"groups.{name}: 'scale' must be true or false; got {scale!r}", path=path)
            if not isinstance(note, str):
                raise InputError(f"groups.{name}: 'note' must be a string", path=path)
        if not isinstance(raw, Sequence) or isinstance(raw, str) or not raw:
            raise InputError(f"groups.{name}: 'axes' must be a non-empty list of axes", path=path)
        axes = tuple(_axis(a, f"groups.{name}.axes[{j}]", path) for j, a in enumerate(raw))
        groups.append(PermGroup(name, axes, scale=scale, note=note))
    return PermutationSpec(tuple(groups), origin=f"file {path}" if path is not None else "spec")


def load_spec(path: PathLike) -> PermutationSpec:
    """Read a YAML or JSON spec file (``.json`` is JSON; anything else is read as YAML, a superset of JSON)."""
    p = Path(path)
    return spec_from_dict(_read(p), path=p)


def resolve_spec(
    spec: PermutationSpec | PathLike | None,
    shapes: Mapping[str, tuple[int, ...]],
    *,
    configs: Mapping[str, str] | None = None,
    order: Sequence[str] | None = None,
    path: PathLike | None = None,
) -> PermutationSpec:
    """The spec to use for a model with ``shapes``: given, read from a file, built in, or derived.

    Parameters
    ----------
    spec : PermutationSpec, path or str, optional
        A spec; a YAML/JSON file; a built-in name with options (``"vit:heads=4"``, ``"bert"``,
        ``"sequential"``); or None to detect (ViT keys → ``vit``, BERT keys → ``bert``, else a sequential chain).
    shapes : mapping of str to shape
        The reference model's tensors.
    configs : mapping of str to str, optional
        The model's config files (``config.json`` gives the number of heads).
    order : sequence of str, optional
        The checkpoint's key order (tried for a chain when natural order does not chain).
    path : path, optional
        The model, named in errors.

    Returns
    -------
    PermutationSpec
    """
    if isinstance(spec, PermutationSpec):
        return spec
    if spec is not None:
        text = os.fspath(spec)
        builtin = None if Path(text).exists() else parse_builtin(text)
        if builtin is None:
            if not Path(text).exists():
                names = ", ".join([*BUILTIN_SPECS.names(), "sequential"])
                raise ParameterError(f"--spec {text!r} is neither a file nor a built-in spec ({names})")
            return load_spec(text)
        name, options = builtin
    else:
        keys = list(shapes)
        if any(".attn.q.weight" in k and "blocks." in k for k in keys):
            name = "vit"
        elif any(".attention.self.query.weight" in k for k in keys):
            name = "bert"
        else:
            name = "sequential"
        options = {}
    if name == "sequential":
        return derive_sequential(shapes, order=order, path=path)
    options.setdefault("heads", heads_from_configs(configs or {}))
    return BUILTIN_SPECS.get(name)(shapes, path=path, **options)
