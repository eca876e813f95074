"""Unit *types* and *depths*: how per-layer units are grouped in summaries, plots and the heat-map.

A unit's key is split at its first all-digit component (the layer index): what follows is the *type*, the
index is the *depth*. ``encoder.layer.3.attention.self.query.weight`` has type ``attention.self.query.weight``
and depth 3. A key without an index (``fc1.weight``) is its own type with no depth. When two different stems
lead to the same type (an encoder and a decoder stack), the stem is kept in front of the type, so the two are
never pooled: ``encoder.layer/attention.self.query.weight`` vs ``decoder.layer/attention.self.query.weight``.

Examples
--------
>>> unit_type("encoder.layer.3.attention.self.query.weight")
('attention.self.query.weight', 3)
>>> unit_type("fc1.weight")
('fc1.weight', None)
>>> unit_groups(["enc.0.w", "dec.0.w", "enc.1.w", "head.w"])["dec.0.w"]
('dec/w', 0)
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["unit_groups", "unit_type"]


def _split(name: str) -> tuple[str, str, int | None]:
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit() and i + 1 < len(parts):
            return ".".join(parts[:i]), ".".join(parts[i + 1 :]), int(part)
    return "", name, None


def unit_type(name: str) -> tuple[str, int | None]:
    """``(type, depth)`` of one unit key, ignoring other keys (see :func:`unit_groups` for the collision rule).

    Parameters
    ----------
    name : str
        A tensor key.

    Returns
    -------
    type : str
        The key after its first all-digit component, or the whole key when it has none.
    depth : int or None
        That component as an int.
    """
    _stem, kind, depth = _split(name)
    return kind, depth


def unit_groups(names: Sequence[str]) -> dict[str, tuple[str, int | None]]:
    """``(type, depth)`` for every key, keeping the stem where two stems share a type.

    Parameters
    ----------
    names : sequence of str
        All unit keys of a collection.

    Returns
    -------
    dict of str to (str, int or None)
    """
    split = {n: _split(n) for n in names}
    stems: dict[str, set[str]] = {}
    for stem, kind, depth in split.values():
        if depth is not None:
            stems.setdefault(kind, set()).add(stem)
    out: dict[str, tuple[str, int | None]] = {}
    for name, (stem, kind, depth) in split.items():
        if depth is not None and len(stems.get(kind, ())) > 1:
            out[name] = (f"{stem}/{kind}" if stem else kind, depth)
        else:
            out[name] = (kind, depth)
    return out
