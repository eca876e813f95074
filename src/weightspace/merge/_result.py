"""Typed results of :func:`~weightspace.merge.merge`: per-unit statistics, keys not merged, the run summary."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from torch import Tensor

__all__ = ["MergeFormat", "MergeResult", "NotMerged", "UnitStats"]

MergeFormat = Literal["full", "peft"]
"""What a merge produces: a full model (``base + merged ΔW``) or a PEFT LoRA adapter."""


@dataclass(frozen=True)
class UnitStats:
    """What merging one unit (tensor key) did.

    Attributes
    ----------
    name : str
        Unit key (for adapters, ``<module>.weight``).
    shape : tuple of int
        Shape of the unit's weight (merged in the view ``(shape[0], prod(shape[1:]))``).
    kind : {"matrix", "vector"}
        ``matrix`` for ≥2-D weights, ``vector`` for biases, norms and scalars.
    lora : bool
        Whether the unit is a LoRA update ``s·B·A``.
    delta_norm : float
        ``‖merged ΔW‖_F``.
    mean_delta_norm : float
        ``‖mean ΔW‖_F`` (the plain average, for comparison).
    rel_diff_from_mean : float or None
        ``‖merged ΔW − mean ΔW‖ / ‖mean ΔW‖`` (None when the mean is zero).
    seed : int or None
        The unit's mask seed, :func:`~weightspace.merge.unit_seed` (methods with a ``seed`` parameter).
    basis_k : int or None
        Rows of the archive basis used (``basis_archive``).
    base_key : str or None
        The base key the update went into, where it differs from ``name`` (adapters merged into a base).
    rank : int or None
        Rank of the written factors (PEFT output).
    truncation_error : float or None
        Relative Frobenius error of truncating the merged ``ΔW`` to ``rank`` (PEFT output).
    """

    name: str
    shape: tuple[int, ...]
    kind: str
    lora: bool
    delta_norm: float
    mean_delta_norm: float
    rel_diff_from_mean: float | None
    seed: int | None = None
    basis_k: int | None = None
    base_key: str | None = None
    rank: int | None = None
    truncation_error: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form; the optional fields appear only where they apply."""
        out: dict[str, Any] = {
            "name": self.name,
            "shape": list(self.shape),
            "kind": self.kind,
            "lora": self.lora,
            "delta_norm": self.delta_norm,
            "mean_delta_norm": self.mean_delta_norm,
            "rel_diff_from_mean": self.rel_diff_from_mean,
        }
        for key in ("seed", "basis_k", "base_key", "rank", "truncation_error"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


@dataclass(frozen=True)
class NotMerged:
    """A key that could not be merged (a private tensor) and what the output holds instead.

    Attributes
    ----------
    key : str
        The key (unit-style for adapters).
    reason : str
        Why it is private ("shape differs across models", "base lacks this tensor (no task vector)" ...).
    shapes : mapping of str to tuple of int
        Model name → its shape of the key.
    action : str
        What was done: ``"kept the base's tensor ..."``, ``"left out (...)"`` ...
    base_key : str or None
        The base's key for it (full output; None where there is none).
    """

    key: str
    reason: str
    shapes: Mapping[str, tuple[int, ...]]
    action: str
    base_key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (shapes as lists)."""
        return {
            "key": self.key,
            "reason": self.reason,
            "shapes": {m: list(s) for m, s in self.shapes.items()},
            "action": self.action,
            "base_key": self.base_key,
        }


@dataclass(frozen=True)
class MergeResult:
    """What :func:`~weightspace.merge.merge` did, and the merged tensors when nothing was written.

    Attributes
    ----------
    method : str
        The merge method's name (a callable's ``__name__``).
    params : mapping of str to object
        The resolved parameters (defaults filled in; tensors left out).
    format : {"full", "peft"}
        What was produced: a full model or a PEFT adapter.
    layout : str
        The file layout (``safetensors``, ``hf-dir``, ``hf-sharded``, ``peft``, ``torch``, ``torch-dir``): the
        base's for a full model, the first adapter's for an adapter.
    out : Path or None
        Where the model was written; None for an in-memory merge (then :attr:`tensors` holds it).
    models : tuple of str
        Model names, in collection order.
    model_paths : tuple of str
        Their paths.
    input : {"full", "peft"}
        Full checkpoints or PEFT adapters.
    base : str or None
        Path of the base model.
    basis_archive : str or None
        Path of the ``.wsz`` archive whose basis ``subspace`` used.
    units : tuple of UnitStats
        Per merged unit, in collection order.
    rel_diff_from_mean : float or None
        ``‖merged − mean‖ / ‖mean‖`` over all units (None when the mean is zero).
    not_merged : tuple of NotMerged
        Private keys and what the output holds for them.
    excluded : tuple of str
        Keys left out of the merge by ``exclude`` (copied from the base into a full output).
    copied_from_base : tuple of str
        Base keys written verbatim (buffers, excluded and private keys).
    rank : int or None
        Rank of a PEFT output.
    adapter_config_from : str or None
        The model whose ``adapter_config.json`` the PEFT output follows.
    max_truncation_error : float or None
        Largest relative truncation error over the modules of a PEFT output.
    worst_truncation_module : str or None
        Where it occurred.
    wall_s : float
        Seconds the merge took.
    tensors : dict of str to Tensor or None
        The merged model by file key, in the output's order and dtypes (full: the base's keys; PEFT: the
        ``lora_A``/``lora_B`` keys), for an in-memory merge; None when it was written to :attr:`out`.
    weights : tuple of float or None
        Per-model weights, in model order (None: unweighted).
    dtype : str or None
        The output dtype asked for (None: the source's dtypes).

    Examples
    --------
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from safetensors.torch import save_file
    >>> from weightspace.merge import merge
    >>> d = Path(tempfile.mkdtemp())
    >>> save_file({"w": torch.zeros(2, 2)}, d / "base.safetensors")
    >>> for i in range(2):
    ...     save_file({"w": (i + 1) * torch.eye(2)}, d / f"m{i}.safetensors")
    >>> models = [d / "m0.safetensors", d / "m1.safetensors"]
    >>> r = merge(models, base=d / "base.safetensors", method="task_arithmetic", params={"lam": "0.5"})
    >>> r.method, dict(r.params), r.format, r.units[0].name, r.units[0].rel_diff_from_mean
    ('task_arithmetic', {'lam': 0.5}, 'full', 'w', 0.0)
    >>> sorted(r.to_dict())[:4]
    ['base', 'basis_archive', 'copied_from_base', 'dtype']
    """

    method: str
    params: Mapping[str, Any]
    format: MergeFormat
    layout: str
    out: Path | None
    models: tuple[str, ...]
    model_paths: tuple[str, ...]
    input: MergeFormat
    base: str | None
    basis_archive: str | None
    units: tuple[UnitStats, ...]
    rel_diff_from_mean: float | None
    not_merged: tuple[NotMerged, ...]
    excluded: tuple[str, ...]
    copied_from_base: tuple[str, ...]
    rank: int | None
    adapter_config_from: str | None
    max_truncation_error: float | None
    worst_truncation_module: str | None
    wall_s: float
    tensors: dict[str, Tensor] | None = field(default=None, repr=False, compare=False)
    weights: tuple[float, ...] | None = None
    dtype: str | None = None

    @property
    def n_models(self) -> int:
        return len(self.models)

    @property
    def n_units(self) -> int:
        return len(self.units)

    @property
    def truncation_errors(self) -> dict[str, float]:
        """Unit key → relative truncation error of its factors (empty for a full output)."""
        return {u.name: u.truncation_error for u in self.units if u.truncation_error is not None}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (what ``weightspace merge --json`` prints); :attr:`tensors` is not included.

        Keys: ``method``, ``params``, ``n_models``, ``models``, ``model_paths``, ``input``, ``format``,
        ``layout``, ``out``, ``base``, ``basis_archive``, ``n_units``, ``units``, ``rel_diff_from_mean``,
        ``not_merged``, ``excluded``, ``copied_from_base``, ``wall_s``, ``weights``, ``dtype``; for a PEFT output
        also ``rank``,
        ``adapter_config_from``, ``max_truncation_error`` and ``worst_truncation_module``.
        """
        out: dict[str, Any] = {
            "method": self.method,
            "params": dict(self.params),
            "n_models": self.n_models,
            "models": list(self.models),
            "model_paths": list(self.model_paths),
            "input": self.input,
            "format": self.format,
            "layout": self.layout,
            "out": None if self.out is None else str(self.out),
            "base": self.base,
            "basis_archive": self.basis_archive,
            "n_units": self.n_units,
            "units": [u.to_dict() for u in self.units],
            "rel_diff_from_mean": self.rel_diff_from_mean,
            "not_merged": [p.to_dict() for p in self.not_merged],
            "excluded": list(self.excluded),
            "copied_from_base": list(self.copied_from_base),
            "wall_s": self.wall_s,
            "weights": None if self.weights is None else list(self.weights),
            "dtype": self.dtype,
        }
        if self.format == "peft":
            out["rank"] = self.rank
            out["adapter_config_from"] = self.adapter_config_from
            out["max_truncation_error"] = self.max_truncation_error
            out["worst_truncation_module"] = self.worst_truncation_module
        return out
