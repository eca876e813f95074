"""Tiny nets for the align tests: sequential MLPs and CNNs, their states, random unit permutations and rescaling."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from weightspace.align import PermutationSpec, Transform, derive_sequential, transform_state
from weightspace.io import save_safetensors


def mlp(seed: int, widths: tuple[int, ...] = (10, 32, 24, 5)) -> nn.Sequential:
    """``nn.Sequential`` ReLU MLP (keys ``0.weight``, ``2.weight`` …)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def cnn1d(seed: int) -> nn.Sequential:
    """Conv1d → ReLU → Conv1d (stride 2) → ReLU → flatten → Linear → ReLU → Linear, inputs (B, 1, 12)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv1d(1, 8, 5, padding=2),
        nn.ReLU(),
        nn.Conv1d(8, 6, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 6, 12),
        nn.ReLU(),
        nn.Linear(12, 3),
    )


def cnn2d(seed: int, norm: bool = False) -> nn.Sequential:
    """Conv2d [→ BatchNorm] → ReLU → Conv2d → ReLU → flatten → Linear → ReLU → Linear, inputs (B, 2, 5, 5)."""
    torch.manual_seed(seed)
    first: list[nn.Module] = [nn.Conv2d(2, 6, 3, padding=1)]
    if norm:
        bn = nn.BatchNorm2d(6)
        with torch.no_grad():  # non-trivial statistics, as after training
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
        first.append(bn)
    return nn.Sequential(
        *first,
        nn.ReLU(),
        nn.Conv2d(6, 5, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(5 * 5 * 5, 7),
        nn.ReLU(),
        nn.Linear(7, 3),
    ).eval()


def state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items() if v.is_floating_point()}


def shuffled(
    sd: Mapping[str, torch.Tensor], spec: PermutationSpec, g: torch.Generator, *, rescale: bool = False
) -> dict[str, torch.Tensor]:
    """``sd`` with every group's units randomly permuted (and, with ``rescale``, scale groups rescaled)."""
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    sizes = spec.sizes(shapes)
    perms = {name: torch.randperm(n, generator=g) for name, n in sizes.items()}
    scales = {}
    if rescale:
        scales = {
            gr.name: torch.exp(torch.randn(sizes[gr.name], generator=g, dtype=torch.float64))
            for gr in spec.groups
            if gr.scale
        }
    out = transform_state(sd, spec, Transform(perms, scales))
    return {k: v.to(sd[k].dtype) for k, v in out.items()}


def write_copies(
    directory: Path,
    sd: Mapping[str, torch.Tensor],
    n: int,
    *,
    seed: int = 0,
    rescale: bool = False,
    dtype: torch.dtype = torch.float32,
) -> list[Path]:
    """``n`` randomly permuted (and rescaled) copies of ``sd`` as safetensors files; copy 0 is ``sd`` itself."""
    sd = {k: v.to(dtype) for k, v in sd.items()}
    spec = derive_sequential({k: tuple(v.shape) for k, v in sd.items()})
    g = torch.Generator().manual_seed(seed)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        copy = dict(sd) if i == 0 else shuffled(sd, spec, g, rescale=rescale)
        p = directory / f"copy{i}.safetensors"
        save_safetensors(p, {k: v.contiguous() for k, v in copy.items()})
        paths.append(p)
    return paths


def outputs(make: Callable[[int], nn.Module], sd: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Outputs of the architecture ``make(0)`` loaded with ``sd`` (strict, eval mode)."""
    net = make(0).eval()
    own = net.state_dict()
    unknown = set(sd) - set(own)
    assert not unknown, unknown
    own.update({k: v.to(own[k].dtype) for k, v in sd.items()})
    net.load_state_dict(own)
    with torch.no_grad():
        return net(x)
