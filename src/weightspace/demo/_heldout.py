"""Weights of models rebuilt from an archive (in-sample) or from a subspace fitted without them (held out).

Everything returned is a state dict in the zoo model's own key space, ready for ``Zoo.accuracy``:

* full checkpoints: unit tensors (plus the base for task-vector collections) and the model's private tensors;
* PEFT adapters: ``W0 + ΔŴ`` for every adapted weight (``W0`` from the zoo's base model) and the adapter's own
  head; the evaluator fills the rest of the backbone from the base.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from weightspace.collection import Collection
from weightspace.decompose import pca_basis
from weightspace.units import UnitStack

__all__ = ["VARIANTS", "heldout_states", "member_matrix", "own_private", "state_from_members"]

VARIANTS = ("mean_only", "basis_only", "mean_plus_basis")


def member_matrix(coll: Collection, unit: str) -> torch.Tensor:
    """All members of ``unit`` in memory, float64, shape (n_models, rows * cols)."""
    stack = coll.stack(unit)
    return stack.chunk(0, stack.spec.rows)  # (n_models, D)


def own_private(coll: Collection, i: int) -> dict[str, torch.Tensor]:
    """Model ``i``'s private tensors (heads etc.), verbatim, in model key space."""
    src = coll.sources[i]
    return {k: coll.read_private(i, k) for k in coll.private if k in src.entries}


def state_from_members(
    coll: Collection, i: int, members: dict[str, torch.Tensor], base_state: dict[str, torch.Tensor] | None
) -> dict[str, torch.Tensor]:
    """A loadable state dict for model ``i`` with its units replaced by ``members`` (2-D, float64).

    Parameters
    ----------
    base_state : dict, optional
        ``W0`` by key: the base checkpoint for task-vector collections, the zoo base model for PEFT adapters.
    """
    out: dict[str, torch.Tensor] = {}
    for spec in coll.units:
        w = members[spec.name].reshape(spec.shape)
        if coll.is_delta and base_state is not None:
            w = base_state[spec.name].to(torch.float64) + w
        out[spec.name] = w.to(torch.float32)
    out.update(own_private(coll, i))
    return out


def heldout_states(
    coll: Collection,
    stacks: dict[str, torch.Tensor],
    h: int,
    k: int,
    base_state: dict[str, torch.Tensor] | None,
) -> dict[str, dict[str, torch.Tensor]]:
    """Model ``h`` rebuilt from a subspace fitted on the other N − 1 models, three ways.

    Parameters
    ----------
    stacks : dict of str to Tensor of shape (n_models, D)
        Members of every unit (from :func:`member_matrix`).
    h : int
        The held-out model.
    k : int
        Components per unit (capped by each fit's rank).

    Returns
    -------
    dict
        ``{"mean_only": state, "basis_only": state, "mean_plus_basis": state}``: ``μ₋ₕ``,
        ``Vᵀ V x_h`` and ``μ₋ₕ + Vᵀ V (x_h − μ₋ₕ)`` per unit, with model h's own private tensors.
    """
    rebuilt: dict[str, dict[str, torch.Tensor]] = {v: {} for v in VARIANTS}
    for spec in coll.units:
        x = stacks[spec.name]
        others: Sequence[torch.Tensor] = [x[i] for i in range(x.shape[0]) if i != h]
        fit = pca_basis(UnitStack.from_tensors(others, name=spec.name), k)
        assert fit.mean is not None
        assert fit.basis is not None
        mu, v, xh = fit.mean.reshape(-1), fit.basis, x[h]
        rebuilt["mean_only"][spec.name] = mu
        rebuilt["basis_only"][spec.name] = (v @ xh) @ v
        rebuilt["mean_plus_basis"][spec.name] = mu + (v @ (xh - mu)) @ v
    return {name: state_from_members(coll, h, members, base_state) for name, members in rebuilt.items()}
