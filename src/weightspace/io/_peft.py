"""PEFT LoRA adapter directories: config parsing, key parsing and scaling semantics.

A LoRA adapter stores, per target module ``M``, ``base_model.model.M.lora_A.weight`` (r × d_in, or
r × c_in × k… for conv) and ``base_model.model.M.lora_B.weight`` (d_out × r, or c_out × r × 1…). The update it
applies is ``ΔW = s · B A`` with ``s = lora_alpha / r`` (``lora_alpha / √r`` with ``use_rslora``), where ``r``
and ``lora_alpha`` may be overridden per module by the first matching regex of ``rank_pattern`` /
``alpha_pattern`` (matched as ``(.*\\.)?(pattern)$`` against the module name, as PEFT does). With
``fan_in_fan_out`` the base weight is stored transposed (GPT-2 ``Conv1D``) and ``ΔW = s · (B A)ᵀ``.

``adapter_config.json`` is untrusted: it is read through the path policy and the bounded JSON parser and checked
as PEFT's ``LoraConfig`` would type it, with PEFT's defaults — ``r`` a positive int (not ``2.0``, ``"2"`` or
``true``), ``lora_alpha`` a finite number in ``(0, 1e6]`` defaulting to 8 when absent (PEFT's default, not ``r``),
``rank_pattern`` / ``alpha_pattern`` mapping patterns to positive ranks / alphas, ``target_modules`` a list of
names (a module matches when it equals one or ends with ``.name``), a regex (``re.fullmatch``) or
``"all-linear"``; every LoRA module in the weights must be one ``target_modules`` selects. Regexes are checked by
:func:`weightspace.io._regex.safe_pattern` before use, so matching cannot backtrack catastrophically. Keys PEFT's
``LoraConfig`` does not know are reported in a warning (PEFT ignores them too).

Features whose update is not ``s · B A`` (DoRA, embedding LoRA, LoRA biases, token/parameter targeting,
layer replication, other PEFT types) are refused with an :class:`UnsupportedFormatError` rather than dropped.
Other tensors in the adapter (``modules_to_save`` copies, trained biases) are full weights, not deltas; they are
exposed as *extra* tensors, which the collection keeps per model verbatim.

Writing adapters and mapping them onto a base model:

* :func:`base_key_for` / :func:`adapter_base_keys` find the base checkpoint's key of each adapted module (exact
  name, else the unique dotted-suffix match: PEFT names are relative to the wrapped model, while a base may be saved
  from the inner model or a longer wrapper).
* :func:`lora_targets` lays out a rank-``R`` adapter in the layout of a template adapter (file keys, factor
  shapes, dtypes, scaling); :meth:`LoraTarget.factors` turns an update ``ΔW`` into its factors
  (:func:`lora_factors_from_delta`, a truncated SVD that keeps the config's alpha semantics).
"""

from __future__ import annotations

import copy
import math
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from weightspace._json import parse_json
from weightspace.errors import CorruptFileError, ShapeMismatchError, TensorKeyError, UnsupportedFormatError
from weightspace.io._pathpolicy import read_regular
from weightspace.io._regex import MAX_NAME_CHARS, safe_pattern
from weightspace.io._safetensors import dtype_from_tag

if TYPE_CHECKING:
    from weightspace.io._sources import ModelSource, PeftSource

__all__ = [
    "LoraConfig",
    "LoraModule",
    "LoraTarget",
    "adapter_base_keys",
    "base_key_for",
    "lora_factors_from_delta",
    "lora_factors_from_svd",
    "lora_targets",
    "parse_adapter_keys",
    "read_adapter_config",
]

PREFIX = "base_model.model."
MAX_ADAPTER_CONFIG_BYTES = 16 << 20
DEFAULT_LORA_ALPHA = 8
"""PEFT's ``LoraConfig.lora_alpha`` default, used when a config has no ``lora_alpha``."""
MAX_LORA_ALPHA = 1e6
MAX_RANK = 1 << 16
# Every field of peft.LoraConfig (0.17-0.21) and a few older ones; other keys are reported in a warning.
_KNOWN_KEYS = frozenset(
    {
        "alora_invocation_tokens",
        "alpha_pattern",
        "arrow_config",
        "auto_mapping",
        "base_model_name_or_path",
        "bias",
        "corda_config",
        "ensure_weight_tying",
        "eva_config",
        "exclude_modules",
        "fan_in_fan_out",
        "inference_mode",
        "init_lora_weights",
        "kasa_config",
        "layer_replication",
        "layers_pattern",
        "layers_to_transform",
        "loftq_config",
        "lora_alpha",
        "lora_bias",
        "lora_dropout",
        "lora_ga_config",
        "megatron_config",
        "megatron_core",
        "modules_to_save",
        "monteclora_config",
        "peft_type",
        "peft_version",
        "qalora_group_size",
        "r",
        "rank_pattern",
        "revision",
        "runtime_config",
        "target_modules",
        "target_parameters",
        "task_type",
        "trainable_token_indices",
        "use_bdlora",
        "use_dora",
        "use_qalora",
        "use_rslora",
        "velora_config",
        "enable_lora",
        "merge_weights",
        "use_original_module",
    }
)
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>A|B)(?:\.(?P<adapter>[^.]+))?\.weight$")
_UNSUPPORTED_KEYS = (
    ("lora_embedding_A", "embedding LoRA (lora_embedding_A/B)"),
    ("lora_embedding_B", "embedding LoRA (lora_embedding_A/B)"),
    ("lora_magnitude_vector", "DoRA (lora_magnitude_vector)"),
    ("trainable_tokens", "trainable token deltas"),
)


@dataclass(frozen=True)
class LoraConfig:
    """The parts of ``adapter_config.json`` that define ``ΔW``; ``raw`` keeps the whole file for round trips.

    Attributes
    ----------
    r : int
    lora_alpha : float
    use_rslora, fan_in_fan_out : bool
    rank_pattern : dict of str to int
    alpha_pattern : dict of str to float
    raw : dict
        The parsed file (written back as ``adapter_config.json``).
    target_modules : list of str, str or None
        As in the file: names, one regex, ``"all-linear"``, or None (not recorded).
    text : str
        The file verbatim ("" for a config built in memory).
    """

    r: int
    lora_alpha: float
    use_rslora: bool
    fan_in_fan_out: bool
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]
    raw: dict[str, Any]
    target_modules: list[str] | str | None = None
    text: str = ""

    def rank_for(self, module: str) -> int:
        return int(self.rank_pattern.get(_pattern_key(self.rank_pattern, module), self.r))

    def alpha_for(self, module: str) -> float:
        return float(self.alpha_pattern.get(_pattern_key(self.alpha_pattern, module), self.lora_alpha))

    def scaling_for(self, module: str) -> float:
        r = self.rank_for(module)
        alpha = self.alpha_for(module)
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r

    def targets(self, module: str) -> bool:
        """Whether ``target_modules`` selects ``module`` (PEFT's rules; True when it is not recorded).

        Examples
        --------
        >>> cfg = LoraConfig(2, 4.0, False, False, {}, {}, {}, target_modules=["q_proj"])
        >>> cfg.targets("model.layers.0.self_attn.q_proj"), cfg.targets("model.layers.0.mlp.up_proj")
        (True, False)
        """
        t = self.target_modules
        if t is None or t == "all-linear":
            return True
        if isinstance(t, str):
            return re.fullmatch(t, module[:MAX_NAME_CHARS]) is not None
        return module in t or any(module.endswith(f".{name}") for name in t)

    def with_rank(self, rank: int, **raw_overrides: Any) -> LoraConfig:
        """The config of the same adapter at one rank ``rank`` for every module.

        ``r`` becomes ``rank`` and ``rank_pattern`` is cleared; ``lora_alpha``, ``alpha_pattern`` and
        ``use_rslora`` are kept, so the scaling follows the source's alpha semantics at the new rank. ``raw`` (the
        file written as ``adapter_config.json``) is a deep copy with those changes and ``raw_overrides`` applied.

        Examples
        --------
        >>> cfg = LoraConfig(2, 4.0, False, False, {"q": 4}, {}, {"r": 2, "lora_alpha": 4, "rank_pattern": {"q": 4}})
        >>> new = cfg.with_rank(8, modules_to_save=None)
        >>> new.rank_for("q"), new.scaling_for("q"), new.raw
        (8, 0.5, {'r': 8, 'lora_alpha': 4, 'rank_pattern': {}, 'modules_to_save': None})
        """
        raw = copy.deepcopy(self.raw)
        raw["r"] = rank
        raw["rank_pattern"] = {}
        raw.update(raw_overrides)
        return replace(self, r=rank, rank_pattern={}, raw=raw, text="")


def _pattern_key(patterns: dict[str, Any], module: str) -> str:
    """PEFT's ``get_pattern_key``: the first pattern ``p`` with ``re.match(rf"(.*\\.)?({p})$", module)``."""
    name = module[:MAX_NAME_CHARS]
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", name):
            return key
    return module


def _bad(path: Path, message: str) -> CorruptFileError:
    return CorruptFileError(message, path=path)


def _positive_int(value: object, field: str, path: Path) -> int:
    if type(value) is not int or not 1 <= value <= MAX_RANK:
        raise _bad(
            path, f"adapter config field '{field}' must be an int in [1, {MAX_RANK}], got {str(value)[:40]!r}"
        )
    return value


def _alpha(value: object, field: str, path: Path) -> float:
    if type(value) not in (int, float) or not (0 < value <= MAX_LORA_ALPHA):  # type: ignore[operator]
        raise _bad(
            path,
            f"adapter config field '{field}' must be a finite number in (0, {MAX_LORA_ALPHA:g}], got {str(value)[:40]!r}",
        )
    return float(value)  # type: ignore[arg-type]


def _flag(raw: dict[str, Any], field: str, path: Path) -> bool:
    value = raw.get(field)
    if value is None:
        return False
    if type(value) is not bool:
        raise _bad(path, f"adapter config field '{field}' must be true or false, got {str(value)[:40]!r}")
    return value


def _patterns(raw: dict[str, Any], field: str, path: Path, check: Any) -> dict[str, Any]:
    value = raw.get(field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(
            path,
            f"adapter config field '{field}' must be an object (pattern -> value), got {type(value).__name__}",
        )
    out = {}
    for key, v in value.items():
        try:
            safe_pattern(key, what=field, max_unbounded=2)  # PEFT's wrapper adds one more
        except ValueError as err:
            raise _bad(path, f"adapter config field {err}") from None
        out[key] = check(v, f"{field}[{key!r}]", path)
    return out


def _target_modules(raw: dict[str, Any], path: Path) -> list[str] | str | None:
    value = raw.get("target_modules")
    if value is None or value == "all-linear":
        return value
    if isinstance(value, str):
        try:
            safe_pattern(value, what="target_modules")
        except ValueError as err:
            raise _bad(path, f"adapter config field {err}") from None
        return value
    if isinstance(value, list) and all(isinstance(v, str) and v for v in value):
        return list(value)
    raise _bad(
        path,
        f"adapter config field 'target_modules' must be a list of module names or a regex, got {str(value)[:60]!r}",
    )


def read_adapter_config(path: Path, *, root: str | os.PathLike[str] | None = None) -> LoraConfig:
    """Parse and check ``adapter_config.json`` (see the module docstring); unsupported features raise
    :class:`UnsupportedFormatError`, malformed values :class:`CorruptFileError` naming the field.

    Parameters
    ----------
    path : Path
    root : path, optional
        The adapter directory (a link out of it is refused).
    """
    text_bytes = read_regular(path, limit=MAX_ADAPTER_CONFIG_BYTES, root=root, what="adapter config")
    raw = parse_json(text_bytes, path=path, what="adapter config", max_depth=16)
    if not isinstance(raw, dict):
        raise CorruptFileError("adapter config is not a JSON object", path=path)
    peft_type = raw.get("peft_type")
    if peft_type != "LORA":
        raise UnsupportedFormatError(
            f"adapter config field 'peft_type' is {str(peft_type)[:40]!r}; only LORA adapters are supported",
            path=path,
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
    r = _positive_int(raw.get("r"), "r", path)
    alpha = _alpha(raw.get("lora_alpha", DEFAULT_LORA_ALPHA), "lora_alpha", path)
    unknown = sorted(k for k in raw if k not in _KNOWN_KEYS)
    if unknown:
        listing = ", ".join(repr(k[:40]) for k in unknown[:5])
        warnings.warn(
            f"{path}: adapter config keys PEFT does not know are ignored: {listing}", UserWarning, stacklevel=2
        )
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        use_rslora=_flag(raw, "use_rslora", path),
        fan_in_fan_out=_flag(raw, "fan_in_fan_out", path),
        rank_pattern=_patterns(raw, "rank_pattern", path, _positive_int),
        alpha_pattern=_patterns(raw, "alpha_pattern", path, _alpha),
        raw=raw,
        target_modules=_target_modules(raw, path),
        text=text_bytes.decode("utf-8"),
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
        if not config.targets(module):
            raise CorruptFileError(
                f"LoRA module '{module}' is not selected by the config's target_modules "
                f"({str(config.target_modules)[:120]}); the weights and adapter_config.json disagree",
                path=path,
                tensor=next(iter(pair.values())),
            )
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


# ------------------------------------------------------------------------------------ writing adapters, base keys


def lora_factors_from_delta(
    delta: torch.Tensor,
    rank: int,
    scaling: float,
    *,
    fan_in_fan_out: bool = False,
    a_shape: tuple[int, ...] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Best rank-``rank`` LoRA factors of an update, keeping the adapter's scaling.

    Solves ``s · B A ≈ ΔW`` by truncated SVD ``ΔW ≈ U_r S_r V_rᵀ`` with ``B = U_r S_r^{1/2} / √s`` and
    ``A = S_r^{1/2} V_rᵀ / √s`` (balanced factors), so ``lora_alpha`` and ``r`` in the config stay valid.

    Parameters
    ----------
    delta : Tensor of shape (rows, cols)
        The update in the base weight's 2-D layout (for ``fan_in_fan_out``, the transposed layout).
    rank : int
        Rank of the factors.
    scaling : float
        The module's ``s`` (``alpha / r`` or ``alpha / √r``).
    fan_in_fan_out : bool
        Whether the base weight is stored transposed.
    a_shape : tuple of int, optional
        Shape of ``lora_A`` for conv adapters (``(r, c_in, k…)``); B then gets trailing 1-dims.

    Returns
    -------
    B : Tensor, A : Tensor, rel_error : float
        Factors in PEFT layout and the relative Frobenius error of the truncation.

    Examples
    --------
    >>> import torch
    >>> b, a, err = lora_factors_from_delta(torch.diag(torch.tensor([3.0, 1.0])), 1, 2.0)
    >>> b.shape, a.shape, round(err, 4)
    (torch.Size([2, 1]), torch.Size([1, 2]), 0.3162)
    """
    u, s, vh = torch.linalg.svd(delta.to(torch.float64), full_matrices=False)
    return lora_factors_from_svd(u, s, vh.T, rank, scaling, fan_in_fan_out=fan_in_fan_out, a_shape=a_shape)


def lora_factors_from_svd(
    left: torch.Tensor,
    singular_values: torch.Tensor,
    right: torch.Tensor,
    rank: int,
    scaling: float,
    *,
    fan_in_fan_out: bool = False,
    a_shape: tuple[int, ...] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Best rank-``rank`` LoRA factors of an update given as a thin SVD ``left diag(s) rightᵀ`` (never formed).

    The same balanced factors as :func:`lora_factors_from_delta` (whose update this SVD is), for updates that are
    cheaper to keep factored, e.g. ``U (M + C_i) Vᵀ`` from a factored archive. Components beyond ``rank`` are
    dropped (zero-padded when there are fewer); the error is that of the dropped singular values.

    Parameters
    ----------
    left : Tensor of shape (rows, m)
    singular_values : Tensor of shape (m,)
        Decreasing.
    right : Tensor of shape (cols, m)
        In the base weight's 2-D layout (for ``fan_in_fan_out``, the transposed layout).
    rank, scaling, fan_in_fan_out, a_shape
        As in :func:`lora_factors_from_delta`.

    Returns
    -------
    B : Tensor, A : Tensor, rel_error : float

    Examples
    --------
    >>> import torch
    >>> b, a, err = lora_factors_from_svd(torch.eye(2), torch.tensor([3.0, 1.0]), torch.eye(2), 1, 2.0)
    >>> b.shape, a.shape, round(err, 4)
    (torch.Size([2, 1]), torch.Size([1, 2]), 0.3162)
    """
    u, s, v = left.to(torch.float64), singular_values.to(torch.float64), right.to(torch.float64)
    if fan_in_fan_out:
        u, v = v, u  # (d_out, d_in): the orientation in which ΔW = s·B·A
    k = min(rank, s.numel())
    root = s[:k].sqrt()
    b = torch.zeros(u.shape[0], rank, dtype=torch.float64)
    a = torch.zeros(rank, v.shape[0], dtype=torch.float64)
    b[:, :k] = u[:, :k] * root / scaling**0.5
    a[:k] = root[:, None] * v[:, :k].T / scaling**0.5
    total = float((s * s).sum())
    rel = (float((s[k:] * s[k:]).sum()) / total) ** 0.5 if total > 0 else 0.0
    if a_shape is not None:
        a = a.reshape(a_shape)
        b = b.reshape(b.shape[0], rank, *([1] * (len(a_shape) - 2)))
    return b, a, rel


def base_key_for(key: str, base: ModelSource, *, adapter: str | os.PathLike[str]) -> str:
    """The base checkpoint's key of an adapted module's weight: the exact name, else the unique dotted-suffix match.

    PEFT module names are relative to the wrapped model (``bert.encoder.layer.0.attention.self.query``), while the
    base checkpoint may be saved from the inner model (``encoder.layer.0.attention.self.query.weight``) or from a
    wrapper with a longer prefix; a match in either direction counts.

    Parameters
    ----------
    key : str
        The adapter's unit key (``<module>.weight``).
    base : ModelSource
        The base checkpoint.
    adapter : path
        The adapter, for messages.

    Raises
    ------
    TensorKeyError
        No base key matches, or several do (naming the base and the key).

    Examples
    --------
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from safetensors.torch import save_file
    >>> from weightspace.io import open_source
    >>> p = Path(tempfile.mkdtemp()) / "base.safetensors"
    >>> save_file({"encoder.q.weight": torch.zeros(2, 2)}, p)
    >>> base_key_for("bert.encoder.q.weight", open_source(p), adapter="a0")
    'encoder.q.weight'
    """
    if key in base.entries:
        return key
    matches = [b for b in base.entries if key.endswith("." + b) or b.endswith("." + key)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        example = next(iter(base.entries), "(none)")
        raise TensorKeyError(
            f"adapter module weight '{key}' (from {adapter}) has no counterpart in the base: no base key equals it "
            f"or is a dotted suffix of it (or has it as a dotted suffix); base keys look like '{example}'",
            path=base.path,
            tensor=key,
        )
    listing = ", ".join(repr(m) for m in sorted(matches)[:5])
    raise TensorKeyError(
        f"adapter module weight '{key}' (from {adapter}) matches several base keys by dotted suffix ({listing}); "
        "rename the base keys or the adapter modules so the match is unique",
        path=base.path,
        tensor=key,
    )


def adapter_base_keys(
    updates: Mapping[str, tuple[int, ...]], base: ModelSource, *, adapter: str | os.PathLike[str]
) -> dict[str, str]:
    """Map every adapted weight onto the base key its update is added to, checked one to one.

    Parameters
    ----------
    updates : mapping of str to tuple of int
        Unit key (``<module>.weight``) → shape of its update ``ΔW`` (the base weight's shape).
    base : ModelSource
        The base checkpoint.
    adapter : path
        The adapter, for messages.

    Returns
    -------
    dict of str to str
        Unit key → base key, in the order of ``updates``.

    Raises
    ------
    TensorKeyError
        A module without (or with an ambiguous) base counterpart, or two modules on one base key.
    ShapeMismatchError
        A base weight whose shape is not the update's.
    UnsupportedFormatError
        A base weight that is not a float tensor.
    """
    out: dict[str, str] = {}
    for key, shape in updates.items():
        bkey = base_key_for(key, base, adapter=adapter)
        if bkey in out.values():
            other = next(u for u, b in out.items() if b == bkey)
            raise TensorKeyError(
                f"adapter modules '{other}' and '{key}' both map to this base key", path=base.path, tensor=bkey
            )
        entry = base.entries[bkey]
        if entry.shape != tuple(shape):
            raise ShapeMismatchError(
                f"the base has shape {entry.shape} but the adapter update for '{key}' (from {adapter}) has shape "
                f"{tuple(shape)}",
                path=base.path,
                tensor=bkey,
            )
        if not entry.is_float:
            raise UnsupportedFormatError(
                f"base dtype {entry.dtype} is not a float type; a LoRA update cannot be added to it",
                path=base.path,
                tensor=bkey,
            )
        out[key] = bkey
    return out


@dataclass(frozen=True)
class LoraTarget:
    """Where and how one LoRA update is written as adapter factors.

    Attributes
    ----------
    unit : str
        The update's unit key (``<module>.weight``).
    a_key, b_key : str
        File keys of ``lora_A`` and ``lora_B``.
    a_shape, b_shape : tuple of int
        Factor shapes: ``(r, d_in)`` / ``(d_out, r)``, or ``(r, c_in, k…)`` / ``(c_out, r, 1…)`` for conv.
    dtype : torch.dtype
        Storage dtype of the factors.
    scaling : float
        ``s`` of the module in the written config.
    fan_in_fan_out : bool
        Whether the base weight is stored transposed (``ΔW = s · (B A)ᵀ``).
    """

    unit: str
    a_key: str
    b_key: str
    a_shape: tuple[int, ...]
    b_shape: tuple[int, ...]
    dtype: torch.dtype
    scaling: float
    fan_in_fan_out: bool

    @property
    def rank(self) -> int:
        return self.a_shape[0]

    def factors(self, delta: torch.Tensor) -> tuple[dict[str, torch.Tensor], float]:
        """Best rank-``rank`` factors of ``delta`` by file key, and the relative truncation error.

        Parameters
        ----------
        delta : Tensor of shape (rows, cols)
            The update in the base weight's 2-D layout (conv weights flattened to ``(c_out, c_in·k…)``).

        Returns
        -------
        factors : dict of str to Tensor
            ``{a_key: A, b_key: B}`` in :attr:`dtype` and the declared shapes.
        rel_error : float
            Relative Frobenius error of the truncation.
        """
        a_shape = self.a_shape if len(self.a_shape) > 2 else None
        b, a, err = lora_factors_from_delta(
            delta, self.rank, self.scaling, fan_in_fan_out=self.fan_in_fan_out, a_shape=a_shape
        )
        return {self.a_key: a.to(self.dtype), self.b_key: b.reshape(self.b_shape).to(self.dtype)}, err


def lora_targets(
    template: PeftSource, config: LoraConfig, units: Iterable[str] | None = None
) -> dict[str, LoraTarget]:
    """Lay out an adapter with ``config``'s ranks in the layout of ``template`` (same modules, file keys, dtypes).

    Parameters
    ----------
    template : PeftSource
        The adapter whose module names, file keys, factor dtypes and file order are kept.
    config : LoraConfig
        The written config (e.g. ``template.config.with_rank(R)``): gives each module's rank and scaling.
    units : iterable of str, optional
        Unit keys to keep (default: every LoRA module of the template).

    Returns
    -------
    dict of str to LoraTarget
        By unit key, in the template's file order; ``{k: spec for t in targets for k, spec in ...}`` gives the
        tensor specs of a :class:`~weightspace.io.LayoutWriter`.
    """
    keep = None if units is None else set(units)
    order = {fk: i for i, fk in enumerate(template.file_keys())}
    targets: list[LoraTarget] = []
    for key, mod in template.modules.items():
        if keep is not None and key not in keep:
            continue
        rank = config.rank_for(mod.module)
        a_src = template.raw_shape(mod.a_key)
        b_src = template.raw_shape(mod.b_key)
        targets.append(
            LoraTarget(
                unit=key,
                a_key=mod.a_key,
                b_key=mod.b_key,
                a_shape=(rank, *a_src[1:]),
                b_shape=(b_src[0], rank, *b_src[2:]),
                dtype=dtype_from_tag(template.entries[key].dtype, path=template.path, tensor=key),
                scaling=config.scaling_for(mod.module),
                fan_in_fan_out=mod.fan_in_fan_out,
            )
        )
    targets.sort(key=lambda t: (order.get(t.a_key, 0), t.a_key))
    return {t.unit: t for t in targets}
