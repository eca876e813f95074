"""PEFT LoRA adapter directories: config parsing, key parsing and scaling semantics.

A LoRA adapter stores, per target module ``M``, ``base_model.model.M.lora_A.weight`` (r × d_in, or
r × c_in × k… for conv) and ``base_model.model.M.lora_B.weight`` (d_out × r, or c_out × r × 1…). The update it
applies is ``ΔW = s · B A`` with ``s = lora_alpha / r`` (``lora_alpha / √r`` with ``use_rslora``), where ``r``
and ``lora_alpha`` may be overridden per module by the first matching regex of ``rank_pattern`` /
``alpha_pattern`` (matched as ``(.*\\.)?(pattern)$`` against the module name, as PEFT does). With
``fan_in_fan_out`` the base weight is stored transposed (GPT-2 ``Conv1D``) and ``ΔW = s · (B A)ᵀ``.

Features whose update is not ``s · B A`` (DoRA, embedding LoRA, LoRA biases, token/parameter targeting,
layer replication, other PEFT types) are refused with an :class:`UnsupportedFormatError` rather than dropped.
Other tensors in the adapter (``modules_to_save`` copies, trained biases) are full weights, not deltas; they are
exposed as *extra* tensors, which the collection keeps per model verbatim.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weightspace.errors import CorruptFileError, ShapeMismatchError, TensorKeyError, UnsupportedFormatError

__all__ = ["LoraConfig", "LoraModule", "parse_adapter_keys", "read_adapter_config"]

PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>A|B)(?:\.(?P<adapter>[^.]+))?\.weight$")
_UNSUPPORTED_KEYS = (
    ("lora_embedding_A", "embedding LoRA (lora_embedding_A/B)"),
    ("lora_embedding_B", "embedding LoRA (lora_embedding_A/B)"),
    ("lora_magnitude_vector", "DoRA (lora_magnitude_vector)"),
    ("trainable_tokens", "trainable token deltas"),
)


@dataclass(frozen=True)
class LoraConfig:
    """The parts of ``adapter_config.json`` that define ``ΔW``; ``raw`` keeps the whole file for round trips."""

    r: int
    lora_alpha: float
    use_rslora: bool
    fan_in_fan_out: bool
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]
    raw: dict[str, Any]

    def rank_for(self, module: str) -> int:
        return int(self.rank_pattern.get(_pattern_key(self.rank_pattern, module), self.r))

    def alpha_for(self, module: str) -> float:
        return float(self.alpha_pattern.get(_pattern_key(self.alpha_pattern, module), self.lora_alpha))

    def scaling_for(self, module: str) -> float:
        r = self.rank_for(module)
        alpha = self.alpha_for(module)
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r


def _pattern_key(patterns: dict[str, Any], module: str) -> str:
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return module


def read_adapter_config(path: Path) -> LoraConfig:
    """Parse and check ``adapter_config.json``; unsupported features raise :class:`UnsupportedFormatError`."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptFileError(f"cannot read adapter config ({err})", path=path) from None
    if not isinstance(raw, dict):
        raise CorruptFileError("adapter config is not a JSON object", path=path)
    peft_type = raw.get("peft_type")
    if peft_type != "LORA":
        raise UnsupportedFormatError(
            f"peft_type {peft_type!r} is not supported; only LORA adapters are", path=path
        )
    refusals = {
        "use_dora": "DoRA (use_dora=true) scales the whole weight, so its update is not s·B·A",
        "layer_replication": "layer_replication changes the model's layer structure",
        "target_parameters": "target_parameters (LoRA on raw nn.Parameters) is not supported",
        "trainable_token_indices": "trainable_token_indices (token deltas) is not supported",
        "lora_bias": "lora_bias=true adds a bias update that is not part of s·B·A",
        "use_qalora": "QA-LoRA is not supported",
    }
    for field, why in refusals.items():
        if raw.get(field):
            raise UnsupportedFormatError(f"{why}; convert the adapter to plain LoRA first", path=path)
    try:
        r = int(raw["r"])
        alpha = float(raw.get("lora_alpha", r))
    except (KeyError, TypeError, ValueError):
        raise CorruptFileError(
            "adapter config needs an integer 'r' and a numeric 'lora_alpha'", path=path
        ) from None
    if r < 1:
        raise CorruptFileError(f"adapter config has r={r}; r must be >= 1", path=path)
    rank_pattern = raw.get("rank_pattern") or {}
    alpha_pattern = raw.get("alpha_pattern") or {}
    if not isinstance(rank_pattern, dict) or not isinstance(alpha_pattern, dict):
        raise CorruptFileError("rank_pattern and alpha_pattern must be JSON objects", path=path)
    try:
        ranks = {str(k): int(v) for k, v in rank_pattern.items()}
        alphas = {str(k): float(v) for k, v in alpha_pattern.items()}
    except (TypeError, ValueError):
        raise CorruptFileError(
            "rank_pattern values must be ints and alpha_pattern values numbers", path=path
        ) from None
    for pattern in [*ranks, *alphas]:
        try:
            re.compile(pattern)
        except re.error as err:
            raise CorruptFileError(
                f"pattern {pattern!r} is not a valid regular expression ({err})", path=path
            ) from None
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        use_rslora=bool(raw.get("use_rslora", False)),
        fan_in_fan_out=bool(raw.get("fan_in_fan_out", False)),
        rank_pattern=ranks,
        alpha_pattern=alphas,
        raw=raw,
    )


@dataclass(frozen=True)
class LoraModule:
    """One LoRA-adapted module: file keys of its factors, its rank and scaling, and the base weight's shape."""

    module: str
    a_key: str
    b_key: str
    rank: int
    scaling: float
    fan_in_fan_out: bool
    weight_shape: tuple[int, ...]

    @property
    def unit_key(self) -> str:
        """The base model's weight key this update applies to."""
        return f"{self.module}.weight"


def parse_adapter_keys(
    shapes: dict[str, tuple[int, ...]], config: LoraConfig, path: Path
) -> tuple[dict[str, LoraModule], dict[str, str]]:
    """Split adapter tensor keys into LoRA modules and extra (full-weight) tensors.

    Parameters
    ----------
    shapes : dict of str to tuple of int
        Every tensor key in the adapter file and its shape.
    config : LoraConfig
        The adapter's config.
    path : Path
        For messages.

    Returns
    -------
    modules : dict of str to LoraModule
        Keyed by unit key (``<module>.weight`` without the ``base_model.model.`` prefix).
    extras : dict of str to str
        Unit-style key (prefix stripped) → file key, for non-LoRA tensors such as ``modules_to_save`` copies.
    """
    factors: dict[str, dict[str, str]] = {}
    extras: dict[str, str] = {}
    for key in shapes:
        for marker, what in _UNSUPPORTED_KEYS:
            if marker in key:
                raise UnsupportedFormatError(
                    f"{what} is not supported; only s·B·A LoRA updates are", path=path, tensor=key
                )
        stripped = key[len(PREFIX) :] if key.startswith(PREFIX) else key
        m = _LORA_KEY.match(stripped)
        if m is None:
            if ".lora_" in stripped:
                raise UnsupportedFormatError("unrecognised LoRA tensor name", path=path, tensor=key)
            extras[stripped] = key
            continue
        factors.setdefault(m["module"], {})[m["which"]] = key
    modules: dict[str, LoraModule] = {}
    for module, pair in sorted(factors.items()):
        if set(pair) != {"A", "B"}:
            missing = "lora_B" if "A" in pair else "lora_A"
            raise TensorKeyError(
                f"LoRA module '{module}' has no {missing} tensor", path=path, tensor=next(iter(pair.values()))
            )
        a_shape, b_shape = shapes[pair["A"]], shapes[pair["B"]]
        if len(a_shape) < 2 or len(b_shape) < 2 or a_shape[0] != b_shape[1]:
            raise ShapeMismatchError(
                f"lora_A {a_shape} and lora_B {b_shape} do not chain (A must be r×…, B must be …×r×1…)",
                path=path,
                tensor=pair["A"],
            )
        if any(d != 1 for d in b_shape[2:]):
            raise UnsupportedFormatError(f"lora_B kernel {b_shape[2:]} is not 1×…×1", path=path, tensor=pair["B"])
        rank = a_shape[0]
        expected = config.rank_for(module)
        if rank != expected:
            raise ShapeMismatchError(
                f"factor rank is {rank} but the config (r / rank_pattern) says {expected}",
                path=path,
                tensor=pair["A"],
            )
        if config.fan_in_fan_out:
            if len(a_shape) != 2:
                raise UnsupportedFormatError(
                    "fan_in_fan_out applies to 2-D weights only", path=path, tensor=pair["A"]
                )
            weight_shape: tuple[int, ...] = (a_shape[1], b_shape[0])
        else:
            weight_shape = (b_shape[0], *a_shape[1:])
        mod = LoraModule(
            module=module,
            a_key=pair["A"],
            b_key=pair["B"],
            rank=rank,
            scaling=config.scaling_for(module),
            fan_in_fan_out=config.fan_in_fan_out,
            weight_shape=weight_shape,
        )
        modules[mod.unit_key] = mod
    clash = set(modules) & set(extras)
    if clash:
        raise UnsupportedFormatError(
            "adapter holds both a LoRA update and a full tensor for the same weight",
            path=path,
            tensor=sorted(clash)[0],
        )
    return modules, extras
