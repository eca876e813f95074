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

__all__ = ["VARIANTS", "heldout_members", "heldout_states", "member_matrix", "own_private", "state_from_members"]

VARIANTS = ("mean_only", "basis_only", "mean_plus_basis")
_CHUNK_ENTRIES = 1 << 24  # float64 entries of the held-out models' training stacks gathered at once (128 MiB)


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


def heldout_members(
    x: torch.Tensor, gram: torch.Tensor, held: Sequence[int], k: int
) -> dict[int, dict[str, torch.Tensor]]:
    """Members of one unit for each held-out model, rebuilt from a PCA of the other N − 1 models, three ways.

    The fit is model-axis PCA of the other models' members, done in N × N algebra on their Gram (the same fit
    ``pca_basis`` makes, without an SVD of the N × D stack per held-out model, and for a chunk of held-out
    models in one batched eigendecomposition): basis vector j is ``Σ_i w_ij x_i`` with ``w`` from
    :func:`~weightspace.analyze.fit_subsets`.

    Parameters
    ----------
    x : Tensor of shape (n_models, D)
        The unit's members (:func:`member_matrix`).
    gram : Tensor of shape (n_models, n_models)
        ``x xᵀ``.
    held : sequence of int
        Models to hold out, one at a time.
    k : int
        Components (capped by each fit's rank).

    Returns
    -------
    dict
        ``{h: {"mean_only": μ₋ₕ, "basis_only": Vᵀ V x_h, "mean_plus_basis": μ₋ₕ + Vᵀ V (x_h − μ₋ₕ)}}``, each of
        shape (D,), float32 (they are cast to the checkpoint's float32 anyway).
    """
    from weightspace.analyze import fit_subsets

    n, d = x.shape
    top = float(gram.diagonal().max().clamp_min(0))
    # Eigenvalues of the others' centered Gram below this are rounding noise, not directions.
    tol_sq = (max(x.shape) * torch.finfo(torch.float64).eps) ** 2 * top * n
    held = list(held)
    out: dict[int, dict[str, torch.Tensor]] = {}
    step = max(1, _CHUNK_ENTRIES // max(1, (n - 1) * d))
    for c0 in range(0, len(held), step):
        part = held[c0 : c0 + step]
        subsets = torch.stack([torch.tensor([i for i in range(n) if i != h], dtype=torch.long) for h in part])
        w = fit_subsets(gram, subsets, tol_sq)[:, :, :k]  # (b, s, k)
        xs = x[subsets]  # (b, s, D)
        mu = xs.mean(dim=1)  # (b, D)
        v = w.transpose(1, 2) @ xs  # (b, k, D), orthonormal rows
        xh = x[torch.tensor(part)]  # (b, D)
        proj_x = (v @ xh[:, :, None])[:, :, 0]  # (b, k)
        proj_z = (v @ (xh - mu)[:, :, None])[:, :, 0]
        basis_only = (proj_x[:, None, :] @ v)[:, 0]  # (b, D)
        mean_plus_basis = mu + (proj_z[:, None, :] @ v)[:, 0]
        for j, h in enumerate(part):
            out[h] = {
                "mean_only": mu[j].to(torch.float32),
                "basis_only": basis_only[j].to(torch.float32),
                "mean_plus_basis": mean_plus_basis[j].to(torch.float32),
            }
    return out


def heldout_states(
    coll: Collection, held: Sequence[int], k: int, base_state: dict[str, torch.Tensor] | None
) -> dict[int, dict[str, dict[str, torch.Tensor]]]:
    """Each model of ``held`` rebuilt from a subspace fitted on the other N − 1 models, as loadable states.

    One unit in memory at a time (its N × D members and N × N Gram).

    Returns
    -------
    dict
        ``{h: {"mean_only": state, "basis_only": state, "mean_plus_basis": state}}`` with model h's own private
        tensors (see :func:`heldout_members` for the three rebuilds).
    """
    members: dict[int, dict[str, dict[str, torch.Tensor]]] = {h: {v: {} for v in VARIANTS} for h in held}
    for spec in coll.units:
        x = member_matrix(coll, spec.name)  # (n, D)
        for h, rebuilt in heldout_members(x, x @ x.T, held, k).items():
            for variant, t in rebuilt.items():
                members[h][variant][spec.name] = t
        del x
    return {
        h: {
            v: state_from_members(coll, h, {u: t.to(torch.float64) for u, t in m.items()}, base_state)
            for v, m in per.items()
        }
        for h, per in members.items()
    }
