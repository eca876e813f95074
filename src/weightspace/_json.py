"""The one JSON parser for everything weightspace reads: bounded, strict, and with errors that name the file.

Every JSON document weightspace reads from disk (safetensors headers, shard indexes, ``adapter_config.json``,
``config.json``, archive manifests, zoo and report files) goes through :func:`parse_json`, which refuses what the
standard library would accept or choke on:

* nesting deeper than ``max_depth`` (the C scanner's own ``RecursionError`` is caught as well);
* integers with more than ``max_int_digits`` digits (Python refuses > 4300 digits with a bare ``ValueError``;
  no field weightspace reads needs more than 20);
* numbers that overflow to infinity (``1e400``) and the non-standard literals ``NaN``, ``Infinity``,
  ``-Infinity``;
* an object that names a key twice (the standard library silently keeps the last);
* strings holding lone UTF-16 surrogates (``"\\ud800"``), which cannot be written back as UTF-8;
* bytes that are not UTF-8.

The caller checks size before reading (see :func:`weightspace.io.read_regular`) and validates the parsed object
against a typed schema afterwards.

Examples
--------
>>> parse_json(b'{"r": 8, "target_modules": ["q", "v"]}', path="adapter_config.json")
{'r': 8, 'target_modules': ['q', 'v']}
>>> parse_json(b'{"r": 8, "r": 16}', path="adapter_config.json")
Traceback (most recent call last):
...
weightspace.errors.CorruptFileError: adapter_config.json: JSON object names the key 'r' twice
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any

from weightspace.errors import CorruptFileError, InputError

__all__ = ["MAX_DEPTH", "MAX_INT_DIGITS", "MAX_YAML_NODES", "json_safe", "parse_json", "parse_yaml", "yaml_nodes"]

MAX_DEPTH = 64
MAX_INT_DIGITS = 32
MAX_YAML_NODES = 100_000


class _Refused(Exception):
    def __init__(self, why: str, key: str | None = None):
        self.why = why
        self.key = key


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _Refused(f"JSON object names the key {k[:200]!r} twice", key=k)
            seen.add(k)
    return out


def _constant(name: str) -> float:
    raise _Refused(f"JSON holds the literal {name}, which is not valid JSON (numbers must be finite)")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"number {text[:40]} is too large for a float (it would be infinite)")
    return value


def _int_parser(max_digits: int):
    def parse(text: str) -> int:
        digits = len(text) - (text[0] == "-")
        if digits > max_digits:
            raise _Refused(f"integer with {digits} digits (more than {max_digits}) is too long to be a real value")
        return int(text)

    return parse


def _check_tree(obj: Any, max_depth: int) -> None:
    """Depth and string checks, iteratively (a deep document must not exhaust the Python stack)."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            if depth > max_depth:
                raise _Refused(f"JSON nests deeper than {max_depth} levels")
            for k, v in node.items():
                if not k.isascii():
                    _check_str(k)
                if isinstance(v, dict | list):
                    stack.append((v, depth + 1))
                elif isinstance(v, str) and not v.isascii():
                    _check_str(v)
        elif isinstance(node, list):
            if depth > max_depth:
                raise _Refused(f"JSON nests deeper than {max_depth} levels")
            for v in node:
                if isinstance(v, dict | list):
                    stack.append((v, depth + 1))
                elif isinstance(v, str) and not v.isascii():
                    _check_str(v)
        elif isinstance(node, str) and not node.isascii():
            _check_str(node)


def _check_str(s: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise _Refused("JSON string holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text") from None


def parse_json(
    raw: bytes | str,
    *,
    path: str | os.PathLike[str] | None = None,
    what: str = "JSON",
    max_depth: int = MAX_DEPTH,
    max_int_digits: int = MAX_INT_DIGITS,
    error: type[InputError] = CorruptFileError,
    keys_are_tensors: bool = False,
    check_tree: bool = True,
) -> Any:
    """Parse one JSON document with the bounds above.

    Parameters
    ----------
    raw : bytes or str
        The document (bytes must be UTF-8).
    path : path, optional
        Named in every error.
    what : str
        What the document is ("shard index", "manifest"), for messages.
    max_depth : int
        Deepest allowed nesting of objects and arrays (the top level is depth 1).
    max_int_digits : int
        Longest allowed integer literal, in digits.
    error : type of InputError
        The error raised (default :class:`~weightspace.errors.CorruptFileError`; archives use ``ArchiveError``).
    keys_are_tensors : bool, default False
        Object keys name tensors (a safetensors header): a duplicate key is reported as the error's ``tensor``.
    check_tree : bool, default True
        Walk the parsed document for ``max_depth`` and lone surrogates. A caller whose schema check visits every
        node anyway (the safetensors header) may skip the walk; the scanner's own recursion limit still bounds
        the depth.

    Returns
    -------
    object
        ``dict``, ``list``, ``str``, ``int``, ``float`` (finite), ``bool`` or ``None``.

    Raises
    ------
    InputError
        ``error``, naming ``path`` and what was refused.
    """
    if isinstance(raw, bytes | bytearray | memoryview):
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as err:
            raise error(f"{what} is not valid UTF-8 (byte {err.start})", path=path) from None
    else:
        text = raw
    # The integer hook costs a Python call per integer; it is needed only when a long run of digits exists.
    long_digits = re.search(f"[0-9]{{{max_int_digits + 1}}}", text) is not None
    try:
        obj = json.loads(
            text,
            object_pairs_hook=_pairs,
            parse_constant=_constant,
            parse_float=_float,
            parse_int=_int_parser(max_int_digits) if long_digits else None,
        )
        if check_tree:
            _check_tree(obj, max_depth)
    except _Refused as why:
        tensor = why.key[:200] if keys_are_tensors and why.key is not None else None
        raise error(f"{why.why}" if what == "JSON" else f"{what}: {why.why}", path=path, tensor=tensor) from None
    except RecursionError:
        raise error(f"{what} nests deeper than {max_depth} levels", path=path) from None
    except json.JSONDecodeError as err:
        raise error(
            f"{what} is not valid JSON ({err.msg} at line {err.lineno} column {err.colno})", path=path
        ) from None
    except ValueError as err:  # e.g. the interpreter's own integer-string limit
        raise error(f"{what} is not valid JSON ({str(err)[:120]})", path=path) from None
    return obj


def yaml_nodes(root: Any) -> int:
    """Values a composed YAML document holds once aliases are expanded (memoized: an alias is a shared node, so a
    "billion laughs" document is counted in linear time)."""
    sizes: dict[int, int] = {}

    def size(node: Any) -> int:
        key = id(node)
        if key not in sizes:
            sizes[key] = 0  # a cycle counts once
            value = node.value if isinstance(node.value, list) else []
            children = [c for pair in value for c in (pair if isinstance(pair, tuple) else (pair,))]
            sizes[key] = 1 + sum(size(c) for c in children)
        return sizes[key]

    return 0 if root is None else size(root)


def parse_yaml(
    text: str,
    *,
    path: str | os.PathLike[str] | None = None,
    what: str = "YAML",
    max_nodes: int = MAX_YAML_NODES,
    error: type[InputError] = CorruptFileError,
) -> Any:
    """``yaml.safe_load`` with the same spirit of bounds: alias expansion capped at ``max_nodes`` values, deep
    nesting and oversized integers refused as ``error`` naming ``path``.

    Examples
    --------
    >>> parse_yaml("a: [1, 2]", path="spec.yaml")
    {'a': [1, 2]}
    """
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if yaml_nodes(root) > max_nodes:
            raise error(f"{what} expands to more than {max_nodes} values (aliases)", path=path)
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise error(f"{what} is not valid YAML ({first})", path=path) from None
    except RecursionError:
        raise error(f"{what} nests too deeply", path=path) from None
    except ValueError as err:  # an integer longer than Python converts
        raise error(f"{what} is not valid YAML ({str(err)[:120]})", path=path) from None


def json_safe(obj: Any, *, inf_as_null: bool = False) -> Any:
    """A copy of ``obj`` that strict JSON (``allow_nan=False``) writes, and :func:`parse_json` reads back.

    NaN becomes null (a number that was not measured); ±inf becomes ``"inf"``/``"-inf"``, or null with
    ``inf_as_null``; tuples and objects with ``tolist`` (tensors) become lists; paths become strings; mapping
    keys become strings.

    Examples
    --------
    >>> json_safe({"a": float("nan"), 1: (float("inf"), 2.5)})
    {'a': None, '1': ['inf', 2.5]}
    >>> json_safe([float("-inf")], inf_as_null=True)
    [None]
    """
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return None if inf_as_null else ("inf" if obj > 0 else "-inf")
        return obj
    if isinstance(obj, dict):
        return {str(k): json_safe(v, inf_as_null=inf_as_null) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v, inf_as_null=inf_as_null) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if not isinstance(obj, str | bytes) and hasattr(obj, "tolist"):
        return json_safe(obj.tolist(), inf_as_null=inf_as_null)
    return obj
