"""Tiny BERT base models and PEFT adapters on them (built at test time, offline)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from helpers import write_adapter

TARGETS = ("query", "value")


def tiny_bert(seed: int = 0) -> nn.Module:
    """A 2-layer, hidden-size-32 ``transformers`` BertModel with random weights (eval mode, no dropout)."""
    import transformers

    cfg = transformers.BertConfig(
        vocab_size=40,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(seed)
    return transformers.BertModel(cfg).eval()


def bert_adapters(
    root: Path,
    n: int,
    *,
    hidden: int,
    layers: int,
    r: int = 4,
    seed: int = 1,
    head: str | None = None,
    scale: float = 0.1,
) -> list[Path]:
    """``n`` PEFT LoRA adapters on every query/value projection (random, nonzero B), optionally with a
    ``modules_to_save`` copy of the linear layer ``head`` (hidden × hidden)."""
    g = torch.Generator().manual_seed(seed)
    paths = []
    for i in range(n):
        factors = {
            f"encoder.layer.{layer}.attention.self.{t}": (
                scale * torch.randn(r, hidden, generator=g),
                scale * torch.randn(hidden, r, generator=g),
            )
            for layer in range(layers)
            for t in TARGETS
        }
        extra = None
        config: dict[str, object] = {"target_modules": list(TARGETS)}
        if head is not None:
            extra = {
                f"{head}.weight": scale * torch.randn(hidden, hidden, generator=g),
                f"{head}.bias": scale * torch.randn(hidden, generator=g),
            }
            config["modules_to_save"] = [head]
        paths.append(write_adapter(root / f"ad{i}", factors, r=r, alpha=2 * r, extra=extra, **config))
    return paths


def peft_model(base: nn.Module, adapters: Sequence[Path]) -> nn.Module:
    """``PeftModel`` over a copy of ``base`` with every adapter loaded (named by its directory)."""
    import peft

    model = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(adapters[0]), adapter_name=adapters[0].name)
    for p in adapters[1:]:
        model.load_adapter(str(p), adapter_name=p.name)
    return model.eval()
