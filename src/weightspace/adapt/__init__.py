"""Coefficient-only adapters: train a new task inside an archive's shared subspace.

With the shared subspace fixed, a layer's weight becomes ``W = W0 + m·μ + Σ_j c_j V_j`` (PCA) or
``W0 + m·μ + U C Vᵀ`` (HOSVD) and only ``c`` (``C``) trains — VeRA's mechanics with the archive's basis in
frozen buffers. :func:`weightspace.bench.adaptation_benchmark` measures it honestly against LoRA, full
fine-tuning and head-only / mean-only controls on a held-out zoo task.

Examples
--------
>>> from weightspace.adapt import SubspaceAdapterConfig, inject, trainable_parameters  # doctest: +SKIP
>>> model = inject(model, SubspaceAdapterConfig("zoo.wsz", k=4, modules_to_save=["head"]))  # doctest: +SKIP
>>> trainable_parameters(model)["coefficients"]  # doctest: +SKIP
32

References
----------
Kaushik et al., "The Universal Weight Subspace Hypothesis", arXiv:2512.05117.
"""

from weightspace.adapt.config import KCapWarning, SubspaceAdapterConfig
from weightspace.adapt.layer import LayerUnit, SubspaceConv, SubspaceLayer, SubspaceLinear
from weightspace.adapt.model import (
    adapter_layers,
    inject,
    load,
    merge_into_base,
    save,
    trainable_parameters,
    unload,
)

__all__ = [
    "KCapWarning",
    "LayerUnit",
    "SubspaceAdapterConfig",
    "SubspaceConv",
    "SubspaceLayer",
    "SubspaceLinear",
    "adapter_layers",
    "inject",
    "load",
    "merge_into_base",
    "save",
    "trainable_parameters",
    "unload",
]
