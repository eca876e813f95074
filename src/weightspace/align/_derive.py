"""Derive the permutation spec of a sequential chain (MLP, 1-D/2-D CNN) from tensor shapes alone.

Keys are grouped by module (the key without its last ``.`` part: ``net.0.weight`` → ``net.0``); modules are taken
in natural order (``net.2`` before ``net.10``), or, when that does not chain, in the checkpoint's own key order.
A module with one ≥2-D tensor is a *layer* (``out × in [× kernel]``); a module with only 1-D tensors (a norm) and
every 1-D tensor of a layer (its bias) *follow* the current layer and must have its ``out`` entries. Layer ``l+1``
must take layer ``l``'s output: ``in_{l+1} = out_l``, or ``out_l × p`` when a convolution feeds a linear layer
through a channel-major flatten (each channel is ``p`` consecutive columns, a block). The hidden units between
two layers form one group; the last layer's outputs and the first layer's inputs are never permuted.

Anything else (a vector before the first layer, a vector whose length is not the layer's width, a module with two
matrices, a layer that does not take the previous one's output) is refused, naming the checkpoint and the tensor:
the state dict cannot say how such a net is wired, so a spec file has to.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from weightspace.align._spec import AxisRef, PermGroup, PermutationSpec
from weightspace.errors import InputError
from weightspace.io import natural_key

__all__ = ["derive_sequential"]

PathLike = str | os.PathLike[str]

_HINT = "describe the net in a spec file (--spec FILE) or use a built-in spec (--spec vit|bert)"


@dataclass
class _Layer:
    module: str
    weight: str
    shape: tuple[int, ...]
    vectors: list[str] = field(default_factory=list)
    norms: list[str] = field(default_factory=list)

    @property
    def out(self) -> int:
        return self.shape[0]

    @property
    def fan_in(self) -> int:
        return self.shape[1]


def _module(key: str) -> str:
    return key.rsplit(".", 1)[0] if "." in key else key


def _layers(order: Sequence[str], shapes: Mapping[str, tuple[int, ...]], path: PathLike | None) -> list[_Layer]:
    modules: dict[str, list[str]] = {}
    for key in order:
        modules.setdefault(_module(key), []).append(key)
    layers: list[_Layer] = []
    for module, keys in modules.items():
        mats = [k for k in keys if len(shapes[k]) >= 2]
        vecs = [k for k in keys if len(shapes[k]) == 1]
        if len(mats) > 1:
            raise InputError(
                f"module '{module}' holds {len(mats)} matrices ({', '.join(mats[:3])}); a sequential chain has one "
                f"weight per layer, so the wiring cannot be derived; {_HINT}",
                path=path,
                tensor=mats[1],
            )
        if mats:
            layers.append(_Layer(module, mats[0], tuple(shapes[mats[0]]), vectors=vecs))
            continue
        if not layers:
            raise InputError(
                f"this vector comes before any layer weight, so it follows no layer; {_HINT}",
                path=path,
                tensor=vecs[0] if vecs else keys[0],
            )
        layers[-1].norms += vecs
    for layer in layers:
        for v in layer.vectors + layer.norms:
            if shapes[v][0] != layer.out:
                raise InputError(
                    f"vector of length {shapes[v][0]} follows layer '{layer.weight}' with {layer.out} outputs; "
                    f"the chain cannot be derived; {_HINT}",
                    path=path,
                    tensor=v,
                )
    return layers


def _chain(layers: list[_Layer], path: PathLike | None) -> list[int]:
    """Block of each link (``in_{l+1} = out_l × block``), or raise naming the layer that breaks the chain."""
    blocks = []
    for prev, nxt in itertools.pairwise(layers):
        fan_in = nxt.fan_in
        if fan_in == prev.out:
            blocks.append(1)
            continue
        flatten = len(prev.shape) >= 3 and len(nxt.shape) == 2 and fan_in % prev.out == 0
        if flatten:
            blocks.append(fan_in // prev.out)
            continue
        raise InputError(
            f"takes {fan_in} inputs but the layer before it ('{prev.weight}', shape {prev.shape}) has {prev.out} "
            f"outputs, so the layers do not chain; {_HINT}",
            path=path,
            tensor=nxt.weight,
        )
    return blocks


def derive_sequential(
    shapes: Mapping[str, tuple[int, ...]],
    *,
    order: Sequence[str] | None = None,
    path: PathLike | None = None,
) -> PermutationSpec:
    """The permutation spec of a sequential MLP/CNN, derived from its shapes.

    Parameters
    ----------
    shapes : mapping of str to shape
        The model's tensors (0-D tensors are left out: no permutation moves them).
    order : sequence of str, optional
        The checkpoint's own key order, tried when natural order does not chain.
    path : path, optional
        The checkpoint, named in errors.

    Returns
    -------
    PermutationSpec
        One group per hidden layer, ``scale=True`` where nothing but a bias sits between two layers (the scale
        symmetry still only holds for ReLU-like activations, which the state dict cannot show).

    Raises
    ------
    InputError
        The chain cannot be derived (message names the tensor and the fix).

    Examples
    --------
    >>> shapes = {"net.0.weight": (16, 8), "net.0.bias": (16,), "net.2.weight": (4, 16)}
    >>> print(derive_sequential(shapes).describe(shapes))
    permutation spec (derived: sequential chain): 1 group(s)
      net.0 (16 units) [scale] — hidden units of net.0 → net.2: net.0.weight[0], net.0.bias[0], net.2.weight[1]
      note: inputs of net.0.weight and outputs of net.2.weight are not permuted (the net's interface)
    """
    shapes = {k: tuple(s) for k, s in shapes.items() if len(s) >= 1}
    if not shapes:
        raise InputError("the model has no tensors to align", path=path)
    natural = sorted(shapes, key=natural_key)
    tries = [natural]
    if order is not None:
        own = [k for k in order if k in shapes]
        if own != natural:
            tries.append(own)
    first_err: InputError | None = None
    for keys in tries:
        try:
            layers = _layers(keys, shapes, path)
            blocks = _chain(layers, path)
        except InputError as err:
            first_err = first_err or err
            continue
        break
    else:
        assert first_err is not None
        raise first_err
    if len(layers) < 2:
        raise InputError(
            f"found {len(layers)} layer weight(s); a chain needs at least two to have hidden units; {_HINT}",
            path=path,
            tensor=layers[0].weight if layers else None,
        )
    groups = []
    notes = []
    for (layer, nxt), block in zip(itertools.pairwise(layers), blocks, strict=True):
        axes = [AxisRef(layer.weight, 0, role="in")]
        axes += [AxisRef(v, 0, role="in") for v in layer.vectors]
        axes += [AxisRef(v, 0) for v in layer.norms]
        axes.append(AxisRef(nxt.weight, 1, block=block, role="out"))
        scale = not layer.norms
        note = f"hidden units of {layer.module} → {nxt.module}"
        if block > 1:
            note += f" (flattened: {block} positions per channel)"
        groups.append(PermGroup(layer.module, tuple(axes), scale=scale, note=note))
        if layer.norms:
            notes.append(
                f"{layer.module}: followed by {', '.join(layer.norms)}; permuted with the layer, but not "
                "scale-canonicalised (a normalisation sits between the layer and its activation)"
            )
    head = layers[-1]
    notes.append(
        f"inputs of {layers[0].weight} and outputs of {head.weight} are not permuted (the net's interface)"
    )
    origin = "derived: sequential chain" + ("" if keys is natural else " (checkpoint key order)")
    return PermutationSpec(tuple(groups), origin=origin, notes=tuple(notes))
