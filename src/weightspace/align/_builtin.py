"""Built-in permutation specs for transformer encoders, derived from key patterns and shapes.

``vit`` — the pre-norm ViT of ``weightspace.zoo``'s ``digits-vit`` (and any net with its key names, under any
prefix): ``patch_embed``, ``cls_token``, ``pos_embed``, ``blocks.{i}.norm1|norm2``, ``blocks.{i}.attn.q|k|v|proj``,
``blocks.{i}.mlp.fc1|fc2``, ``norm``, ``head``.

``bert`` — Hugging Face BERT-style encoders (MiniLM is one): ``embeddings.*``,
``encoder.layer.{i}.attention.self.query|key|value``, ``attention.output.dense|LayerNorm``,
``intermediate.dense``, ``output.dense|LayerNorm``, ``pooler.dense`` (any prefix such as ``bert.``).

Groups per block: the MLP hidden units (``fc1`` rows → ``fc2`` columns); the attention heads as units (``q``,
``k``, ``v`` rows and ``proj`` columns in blocks of ``head_dim``) when the number of heads is known; and, with
``residual=True``, the residual stream, one permutation shared by every block, the embeddings and every
LayerNorm (LayerNorm commutes with a permutation of its features). None of these groups has a scale symmetry
(GELU, softmax and LayerNorm are not positively homogeneous).

The residual stream is permuted by default for ``vit``, whose classifier ``head`` reads it (the logits do not
change), and not for ``bert``: an encoder's outputs (``last_hidden_state``, mean-pooled sentence embeddings) are
in the residual basis, so permuting it would permute them; ``bert:residual=true`` when a pooler or head reads
them (the pooler's output is then unchanged).

The number of heads is not in the weights: it comes from the option (``vit:heads=4``), else from ``config.json``
(``num_attention_heads``/``num_heads``); without it heads are left unpermuted and the spec says so.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from weightspace._registry import Registry
from weightspace.align._spec import AxisRef, PermGroup, PermutationSpec
from weightspace.errors import InputError, ParameterError

__all__ = ["BUILTIN_SPECS", "bert_spec", "heads_from_configs", "parse_builtin", "vit_spec"]

PathLike = str | os.PathLike[str]
BuiltinSpec = Callable[..., PermutationSpec]
BUILTIN_SPECS: Registry[BuiltinSpec] = Registry("built-in permutation spec")


def heads_from_configs(configs: Mapping[str, str]) -> int | None:
    """``num_attention_heads`` (or ``num_heads``/``n_head``) from a ``config.json``, if present."""
    text = configs.get("config.json")
    if not text:
        return None
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(cfg, dict):
        return None
    for name in ("num_attention_heads", "num_heads", "n_head", "heads"):
        value = cfg.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _prefix(shapes: Mapping[str, tuple[int, ...]], pattern: str) -> tuple[str, list[int]]:
    rx = re.compile(pattern)
    found: dict[str, set[int]] = {}
    for key in shapes:
        m = rx.fullmatch(key)
        if m:
            found.setdefault(m.group("p"), set()).add(int(m.group("i")))
    if not found:
        return "", []
    if len(found) > 1:
        raise InputError(f"found blocks under several prefixes ({', '.join(sorted(found))}); write a spec file")
    prefix, layers = next(iter(found.items()))
    return prefix, sorted(layers)


class _Builder:
    """Collects groups and checks that every key it names exists and every tensor of the model is covered."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], path: PathLike | None, name: str):
        self.shapes, self.path, self.name = shapes, path, name
        self.used: set[str] = set()
        self.groups: list[PermGroup] = []

    def need(self, key: str) -> str:
        if key not in self.shapes:
            raise InputError(
                f"the built-in '{self.name}' spec expects this tensor, which the model lacks; write a spec file",
                path=self.path,
                tensor=key,
            )
        self.used.add(key)
        return key

    def opt(self, key: str) -> str | None:
        if key in self.shapes:
            self.used.add(key)
            return key
        return None

    def add(self, name: str, axes: list[AxisRef], note: str) -> None:
        if axes:
            self.groups.append(PermGroup(name, tuple(axes), note=note))

    def uncovered(self, prefix: str) -> list[str]:
        return sorted(k for k in self.shapes if k.startswith(prefix) and k not in self.used)


def _heads_axes(
    keys_in: list[str], bias_in: list[str | None], out_key: str, heads: int, dim: int, where: str
) -> list[AxisRef]:
    if dim % heads:
        raise ParameterError(f"heads={heads} does not divide the width {dim} of {where}")
    hd = dim // heads
    axes = [AxisRef(k, 0, block=hd) for k in keys_in]
    axes += [AxisRef(k, 0, block=hd) for k in bias_in if k is not None]
    axes.append(AxisRef(out_key, 1, block=hd))
    return axes


def vit_spec(
    shapes: Mapping[str, tuple[int, ...]],
    *,
    heads: int | None = None,
    residual: bool = True,
    path: PathLike | None = None,
) -> PermutationSpec:
    """The spec of a pre-norm ViT with ``blocks.{i}.attn.q|k|v|proj`` and ``blocks.{i}.mlp.fc1|fc2`` keys.

    Parameters
    ----------
    shapes : mapping of str to shape
    heads : int, optional
        Attention heads per block; without it heads are not permuted.
    residual : bool, default True
        Also permute the residual stream (embeddings, every block's in/out side, norms, the head's inputs).
    path : path, optional
        The checkpoint, named in errors.

    Examples
    --------
    >>> shapes = {"patch_embed.weight": (8, 16), "patch_embed.bias": (8,), "cls_token": (1, 1, 8),
    ...           "pos_embed": (1, 5, 8), "norm.weight": (8,), "norm.bias": (8,), "head.weight": (10, 8),
    ...           "head.bias": (10,)}
    >>> for n in ("norm1", "norm2"):
    ...     shapes.update({f"blocks.0.{n}.weight": (8,), f"blocks.0.{n}.bias": (8,)})
    >>> for n in ("q", "k", "v", "proj"):
    ...     shapes.update({f"blocks.0.attn.{n}.weight": (8, 8), f"blocks.0.attn.{n}.bias": (8,)})
    >>> shapes.update({"blocks.0.mlp.fc1.weight": (16, 8), "blocks.0.mlp.fc1.bias": (16,),
    ...                "blocks.0.mlp.fc2.weight": (8, 16), "blocks.0.mlp.fc2.bias": (8,)})
    >>> [g.name for g in vit_spec(shapes, heads=2).groups]
    ['blocks.0.mlp', 'blocks.0.heads', 'residual']
    """
    prefix, layers = _prefix(shapes, r"(?P<p>.*?)blocks\.(?P<i>\d+)\.attn\.q\.weight")
    if not layers:
        raise InputError(
            "the built-in 'vit' spec needs 'blocks.{i}.attn.q.weight' keys; this model has none", path=path
        )
    b = _Builder(shapes, path, "vit")
    res: list[AxisRef] = []
    p = prefix
    dim = shapes[f"{p}blocks.{layers[0]}.attn.q.weight"][0]
    for i in layers:
        blk = f"{p}blocks.{i}"
        fc1, fc2 = b.need(f"{blk}.mlp.fc1.weight"), b.need(f"{blk}.mlp.fc2.weight")
        fc1b, fc2b = b.opt(f"{blk}.mlp.fc1.bias"), b.opt(f"{blk}.mlp.fc2.bias")
        mlp = [AxisRef(fc1, 0)] + ([AxisRef(fc1b, 0)] if fc1b else []) + [AxisRef(fc2, 1)]
        b.add(f"{blk}.mlp".removeprefix(p), mlp, f"MLP hidden units of block {i}")
        qkv = [b.need(f"{blk}.attn.{n}.weight") for n in ("q", "k", "v")]
        qkv_b = [b.opt(f"{blk}.attn.{n}.bias") for n in ("q", "k", "v")]
        proj, proj_b = b.need(f"{blk}.attn.proj.weight"), b.opt(f"{blk}.attn.proj.bias")
        if heads is not None:
            axes = _heads_axes(qkv, qkv_b, proj, heads, shapes[qkv[0]][0], qkv[0])
            b.add(f"{blk}.heads".removeprefix(p), axes, f"{heads} attention heads of block {i}")
        norms = [b.need(f"{blk}.{n}.{w}") for n in ("norm1", "norm2") for w in ("weight", "bias")]
        res += [AxisRef(k, 0) for k in norms]
        res += [AxisRef(k, 1) for k in qkv]
        res += [AxisRef(proj, 0)] + ([AxisRef(proj_b, 0)] if proj_b else [])
        res += [AxisRef(fc1, 1), AxisRef(fc2, 0)] + ([AxisRef(fc2b, 0)] if fc2b else [])
    notes = []
    if heads is None:
        notes.append("attention heads not permuted: the weights do not say how many heads there are (vit:heads=H)")
    if residual:
        pe, pe_b = b.need(f"{p}patch_embed.weight"), b.opt(f"{p}patch_embed.bias")
        res = [AxisRef(pe, 0)] + ([AxisRef(pe_b, 0)] if pe_b else []) + res
        for tok in ("cls_token", "pos_embed"):
            key = b.opt(f"{p}{tok}")
            if key is not None:
                res.append(AxisRef(key, len(shapes[key]) - 1))
        res += [AxisRef(b.need(f"{p}norm.{w}"), 0) for w in ("weight", "bias")]
        head = b.opt(f"{p}head.weight")
        if head is not None:
            res.append(AxisRef(head, 1))
            b.opt(f"{p}head.bias")
        b.add("residual", res, f"residual stream ({dim} features), shared by every block")
        left = b.uncovered(p)
        if left:
            raise InputError(
                "the residual stream reaches every tensor, and the built-in 'vit' spec does not know this one; "
                "write a spec file, or pass vit:residual=false",
                path=path,
                tensor=left[0],
            )
    else:
        notes.append("residual stream not permuted (residual=false)")
    return PermutationSpec(
        tuple(b.groups), origin=f"built-in vit (heads={heads}, residual={residual})", notes=tuple(notes)
    )


def bert_spec(
    shapes: Mapping[str, tuple[int, ...]],
    *,
    heads: int | None = None,
    residual: bool = False,
    path: PathLike | None = None,
) -> PermutationSpec:
    """The spec of a Hugging Face BERT-style encoder (``encoder.layer.{i}.attention.self.query`` …).

    Parameters
    ----------
    shapes : mapping of str to shape
    heads : int, optional
        ``num_attention_heads``; without it heads are not permuted.
    residual : bool, default False
        Also permute the hidden (residual) stream: embeddings, every LayerNorm, every sublayer's input and
        output side, the pooler's input. The encoder's own outputs are then permuted too.
    path : path, optional

    Examples
    --------
    >>> d, f = 8, 16
    >>> shapes = {"embeddings.word_embeddings.weight": (30, d), "embeddings.position_embeddings.weight": (12, d),
    ...           "embeddings.token_type_embeddings.weight": (2, d), "embeddings.LayerNorm.weight": (d,),
    ...           "embeddings.LayerNorm.bias": (d,)}
    >>> L = "encoder.layer.0."
    >>> for n in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
    ...     shapes.update({f"{L}{n}.weight": (d, d), f"{L}{n}.bias": (d,)})
    >>> shapes.update({f"{L}intermediate.dense.weight": (f, d), f"{L}intermediate.dense.bias": (f,),
    ...                f"{L}output.dense.weight": (d, f), f"{L}output.dense.bias": (d,)})
    >>> for n in ("attention.output.LayerNorm", "output.LayerNorm"):
    ...     shapes.update({f"{L}{n}.weight": (d,), f"{L}{n}.bias": (d,)})
    >>> [g.name for g in bert_spec(shapes, heads=2, residual=True).groups]
    ['encoder.layer.0.mlp', 'encoder.layer.0.heads', 'residual']
    """
    prefix, layers = _prefix(shapes, r"(?P<p>.*?)encoder\.layer\.(?P<i>\d+)\.attention\.self\.query\.weight")
    if not layers:
        raise InputError(
            "the built-in 'bert' spec needs 'encoder.layer.{i}.attention.self.query.weight' keys; this model has "
            "none",
            path=path,
        )
    b = _Builder(shapes, path, "bert")
    p = prefix
    res: list[AxisRef] = []
    dim = shapes[f"{p}encoder.layer.{layers[0]}.attention.self.query.weight"][0]
    for i in layers:
        blk = f"{p}encoder.layer.{i}"
        up, down = b.need(f"{blk}.intermediate.dense.weight"), b.need(f"{blk}.output.dense.weight")
        up_b, down_b = b.opt(f"{blk}.intermediate.dense.bias"), b.opt(f"{blk}.output.dense.bias")
        mlp = [AxisRef(up, 0)] + ([AxisRef(up_b, 0)] if up_b else []) + [AxisRef(down, 1)]
        b.add(f"{blk}.mlp".removeprefix(p), mlp, f"feed-forward hidden units of layer {i}")
        qkv = [b.need(f"{blk}.attention.self.{n}.weight") for n in ("query", "key", "value")]
        qkv_b = [b.opt(f"{blk}.attention.self.{n}.bias") for n in ("query", "key", "value")]
        out, out_b = b.need(f"{blk}.attention.output.dense.weight"), b.opt(f"{blk}.attention.output.dense.bias")
        if heads is not None:
            axes = _heads_axes(qkv, qkv_b, out, heads, shapes[qkv[0]][0], qkv[0])
            b.add(f"{blk}.heads".removeprefix(p), axes, f"{heads} attention heads of layer {i}")
        norms = [
            b.need(f"{blk}.{n}.{w}")
            for n in ("attention.output.LayerNorm", "output.LayerNorm")
            for w in ("weight", "bias")
        ]
        res += [AxisRef(k, 1) for k in qkv]
        res += [AxisRef(out, 0)] + ([AxisRef(out_b, 0)] if out_b else [])
        res += [AxisRef(up, 1), AxisRef(down, 0)] + ([AxisRef(down_b, 0)] if down_b else [])
        res += [AxisRef(k, 0) for k in norms]
    notes = []
    if heads is None:
        notes.append(
            "attention heads not permuted: no num_attention_heads in config.json and no bert:heads=H option"
        )
    if residual:
        emb = f"{p}embeddings"
        for n in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
            key = b.opt(f"{emb}.{n}.weight")
            if key is not None:
                res.append(AxisRef(key, 1))
        res += [AxisRef(b.need(f"{emb}.LayerNorm.{w}"), 0) for w in ("weight", "bias")]
        pooler = b.opt(f"{p}pooler.dense.weight")
        if pooler is not None:
            res.append(AxisRef(pooler, 1))
            b.opt(f"{p}pooler.dense.bias")
        b.add("residual", res, f"hidden stream ({dim} features), shared by every layer")
        left = [k for k in b.uncovered(p) if not k.startswith(f"{p}pooler.")]
        if left:
            raise InputError(
                "the hidden stream reaches every encoder tensor, and the built-in 'bert' spec does not know this "
                "one; write a spec file, or pass bert:residual=false",
                path=path,
                tensor=left[0],
            )
    else:
        notes.append(
            "hidden (residual) stream not permuted: the encoder's outputs are in its basis (bert:residual=true "
            "permutes it, and them)"
        )
    notes.append("pooler outputs and any classifier on them are not permuted")
    return PermutationSpec(
        tuple(b.groups), origin=f"built-in bert (heads={heads}, residual={residual})", notes=tuple(notes)
    )


BUILTIN_SPECS.register("vit", vit_spec)
BUILTIN_SPECS.register("bert", bert_spec)

_OPTIONS = {"heads": int, "residual": bool}


def parse_builtin(text: str) -> tuple[str, dict[str, Any]] | None:
    """``"vit:heads=4,residual=false"`` → ``("vit", {"heads": 4, "residual": False})``; None if not a built-in.

    Examples
    --------
    >>> parse_builtin("bert:heads=12")
    ('bert', {'heads': 12})
    >>> parse_builtin("spec.yaml") is None
    True
    """
    name, _, opts = text.partition(":")
    if name not in (*BUILTIN_SPECS.names(), "sequential"):
        return None
    out: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in opts.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in _OPTIONS or name == "sequential":
            allowed = "no options" if name == "sequential" else "heads=INT, residual=true|false"
            raise ParameterError(f"--spec {text!r}: option {item!r} is not understood ({name} takes {allowed})")
        if _OPTIONS[key] is int:
            if not value.isdigit() or int(value) < 1:
                raise ParameterError(f"--spec {text!r}: heads must be an int >= 1. Got {value!r}.")
            out[key] = int(value)
        else:
            low = value.lower()
            if low not in ("true", "false"):
                raise ParameterError(f"--spec {text!r}: residual must be true or false. Got {value!r}.")
            out[key] = low == "true"
    return name, out
