"""Weight matching (Git Re-Basin) and the transforms it produces: permutations and per-unit scales.

:func:`match_permutations` finds, for one model and a target (a reference model or the mean of aligned models),
the permutation of every group that maximises ``Σ_t ⟨target_t, π(model_t)⟩`` by coordinate descent: visit the
groups in a seeded random order; for each, with every other group's permutation fixed, the best permutation is a
linear assignment on the ``n × n`` matrix of summed inner products between the target's and the model's units
(:func:`scipy.optimize.linear_sum_assignment`); repeat until a sweep improves nothing. Each step can only raise
the objective, so it terminates; the result is a local optimum (exact for permuted copies).

:func:`canonical_scales` removes the positive scale symmetry of ReLU-like units: each unit's incoming weights and
bias (role ``in``) are divided by their norm and the factor is pushed into its outgoing weights (role ``out``),
group by group until every ``in`` norm is 1 (one sweep for a chain in order).

A :class:`Transform` holds both; :func:`transform_tensor` applies it to one tensor (scales first, in the model's
own unit order, then permutations) or undoes it (``inverse=True``). All arithmetic is float64.

References
----------
Ainsworth, Hayase, Srinivasa, "Git Re-Basin: Merging Models modulo Permutation Symmetries", ICLR 2023,
arXiv:2209.04836 (weight matching, Algorithm 1).

Examples
--------
>>> from weightspace.align._spec import AxisRef, PermGroup, PermutationSpec
>>> spec = PermutationSpec((PermGroup("h", (AxisRef("a", 0), AxisRef("b", 1))),))
>>> g = torch.Generator().manual_seed(0)
>>> ref = {"a": torch.randn(6, 3, generator=g, dtype=torch.float64),
...        "b": torch.randn(2, 6, generator=g, dtype=torch.float64)}
>>> shuffled = transform_state(ref, spec, Transform({"h": torch.tensor([3, 0, 5, 1, 4, 2])}))
>>> perms, _ = match_permutations(ref, shuffled, spec, {"h": 6}, seed=0)
>>> back = transform_state(shuffled, spec, Transform(perms))
>>> bool(torch.equal(back["a"], ref["a"]) and torch.equal(back["b"], ref["b"]))
True
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from weightspace.align._spec import AxisRef, PermGroup, PermutationSpec

__all__ = [
    "SMALL_GROUP",
    "Transform",
    "canonical_scales",
    "expand",
    "few_threads",
    "match_permutations",
    "transform_state",
    "transform_tensor",
]

# A sweep counts as an improvement only above this relative gain: ties (identical units) never flip back and forth.
_REL_TOL = 1e-12
_SCALE_TOL = 1e-12
# Up to this many units per group the matching's products are tiny: torch's intra-op thread pool costs more than
# it gains (each op pays a fork/join, and on a busy machine a descheduled worker stalls it for a time slice).
SMALL_GROUP = 256


@contextlib.contextmanager
def few_threads(largest_group: int) -> Iterator[None]:
    """One intra-op thread inside the block when every group has ≤ ``SMALL_GROUP`` units (restored on exit)."""
    previous = torch.get_num_threads()
    limit = previous > 1 and largest_group <= SMALL_GROUP
    if limit:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if limit:
            torch.set_num_threads(previous)


@dataclass
class Transform:
    """What alignment does to one model.

    Attributes
    ----------
    perms : dict of str to Tensor of shape (n_units,), int64
        Per group: aligned unit ``i`` is the model's unit ``perms[g][i]``. Missing groups are the identity.
    scales : dict of str to Tensor of shape (n_units,), float64
        Per scale group, in the model's own unit order: ``in`` axes were divided by ``c``, ``out`` axes
        multiplied by it (applied before the permutation).
    """

    perms: dict[str, torch.Tensor] = field(default_factory=dict)
    scales: dict[str, torch.Tensor] = field(default_factory=dict)

    def moved(self) -> int:
        """Number of units that changed place, over all groups."""
        return sum(int((p != torch.arange(p.numel())).sum()) for p in self.perms.values())


def expand(perm: torch.Tensor, block: int) -> torch.Tensor:
    """Index of every element along an axis of ``len(perm) × block`` entries, for a block-wise permutation.

    Examples
    --------
    >>> expand(torch.tensor([1, 0]), 2).tolist()
    [2, 3, 0, 1]
    """
    if block == 1:
        return perm
    return (perm.unsqueeze(1) * block + torch.arange(block)).reshape(-1)


def _along(t: torch.Tensor, axis: int, factor: torch.Tensor) -> torch.Tensor:
    shape = [1] * t.dim()
    shape[axis] = factor.numel()
    return t * factor.reshape(shape)


def _factor(a: AxisRef, c: torch.Tensor, inverse: bool) -> torch.Tensor:
    f = c if (a.role == "out") != inverse else 1.0 / c
    return f.repeat_interleave(a.block) if a.block != 1 else f


def transform_tensor(
    t: torch.Tensor,
    entries: Sequence[tuple[PermGroup, AxisRef]],
    tf: Transform,
    *,
    inverse: bool = False,
    skip_axes: Sequence[int] = (),
) -> torch.Tensor:
    """Apply (or undo) ``tf`` to one tensor whose permuted axes are ``entries`` (``spec.entries(key)``).

    Parameters
    ----------
    t : Tensor
        float64 (a lower precision is computed in, and returned as, float64 too).
    entries : sequence of (PermGroup, AxisRef)
    tf : Transform
    inverse : bool
        Undo: un-permute, then un-scale.
    skip_axes : sequence of int
        Axes left alone (a caller that selected rows itself handles axis 0).

    Returns
    -------
    Tensor, float64, same shape
    """
    t = t.to(torch.float64)
    todo = [(g, a) for g, a in entries if a.axis not in skip_axes]
    if not inverse:
        for g, a in todo:
            if g.name in tf.scales:
                t = _along(t, a.axis, _factor(a, tf.scales[g.name], inverse=False))
    for g, a in todo:
        p = tf.perms.get(g.name)
        if p is not None:
            idx = torch.argsort(p) if inverse else p
            t = t.index_select(a.axis, expand(idx, a.block))
    if inverse:
        for g, a in todo:
            if g.name in tf.scales:
                t = _along(t, a.axis, _factor(a, tf.scales[g.name], inverse=True))
    return t


def transform_state(
    state: Mapping[str, torch.Tensor], spec: PermutationSpec, tf: Transform, *, inverse: bool = False
) -> dict[str, torch.Tensor]:
    """:func:`transform_tensor` on every tensor of ``state`` (float64; keys the spec does not touch are copied)."""
    return {k: transform_tensor(v, spec.entries(k), tf, inverse=inverse) for k, v in state.items()}


def canonical_scales(
    state: Mapping[str, torch.Tensor], spec: PermutationSpec, sizes: Mapping[str, int]
) -> dict[str, torch.Tensor]:
    """Per-unit factors that give every ``in`` side of every scale group unit norm.

    Parameters
    ----------
    state : mapping of str to Tensor
        The model (at least every key of a scale group).
    spec : PermutationSpec
    sizes : mapping of str to int
        Units per group.

    Returns
    -------
    dict of str to Tensor of shape (n_units,), float64
        Factors ``c > 0`` (dead units, with an all-zero ``in`` side, keep ``c = 1``).

    Examples
    --------
    >>> from weightspace.align._spec import AxisRef, PermGroup, PermutationSpec
    >>> spec = PermutationSpec((PermGroup("h", (AxisRef("w1", 0, role="in"), AxisRef("w2", 1, role="out")),
    ...                                   scale=True),))
    >>> state = {"w1": torch.tensor([[3.0, 4.0], [0.0, 2.0]]), "w2": torch.ones(1, 2)}
    >>> canonical_scales(state, spec, {"h": 2})["h"].tolist()
    [5.0, 2.0]
    """
    groups = [g for g in spec.groups if g.scale]
    work = {a.key: state[a.key].to(torch.float64) for g in groups for a in g.axes}
    total = {g.name: torch.ones(sizes[g.name], dtype=torch.float64) for g in groups}
    for _ in range(len(groups) + 1):
        worst = 0.0
        for g in groups:
            n = sizes[g.name]
            sq = torch.zeros(n, dtype=torch.float64)
            for a in g.axes:
                if a.role == "in":
                    m = work[a.key].movedim(a.axis, 0).reshape(n, -1)  # (n_units, rest)
                    sq += (m * m).sum(dim=1)
            c = sq.sqrt()
            c = torch.where(c > 0, c, torch.ones_like(c))
            for a in g.axes:
                work[a.key] = _along(work[a.key], a.axis, _factor(a, c, inverse=False))
            total[g.name] *= c
            worst = max(worst, float((c - 1).abs().max()))
        if worst < _SCALE_TOL:
            break
    return total


def match_permutations(
    target: Mapping[str, torch.Tensor],
    model: Mapping[str, torch.Tensor],
    spec: PermutationSpec,
    sizes: Mapping[str, int],
    *,
    seed: int | Sequence[int] = 0,
    init: Mapping[str, torch.Tensor] | None = None,
    max_iter: int = 100,
) -> tuple[dict[str, torch.Tensor], int]:
    """Permutations of ``model``'s groups that best match ``target`` (Git Re-Basin weight matching).

    Parameters
    ----------
    target, model : mapping of str to Tensor
        float64 tensors; a key is scored only where both have it with the same shape (per-model heads are
        permuted but not scored).
    spec : PermutationSpec
    sizes : mapping of str to int
        Units per group.
    seed : int or sequence of int
        Seeds the random group order of each sweep (``numpy.random.default_rng(seed)``).
    init : mapping of str to Tensor, optional
        Starting permutations (default identity).
    max_iter : int
        Most sweeps over the groups.

    Returns
    -------
    perms : dict of str to Tensor of shape (n_units,), int64
    sweeps : int
        Sweeps run (the last one improved nothing, unless ``max_iter`` stopped it).
    """
    from scipy.optimize import linear_sum_assignment  # imported here: `import weightspace.analyze` stays light

    rng = np.random.default_rng(seed)
    perms = {
        g.name: (init[g.name].clone() if init and g.name in init else torch.arange(sizes[g.name]))
        for g in spec.groups
    }
    entries = {k: spec.entries(k) for k in spec.keys}
    scored = {
        g.name: [
            a for a in g.axes if a.key in target and a.key in model and target[a.key].shape == model[a.key].shape
        ]
        for g in spec.groups
    }
    groups = [g for g in spec.groups if scored[g.name]]
    sweeps = 0
    for sweeps in range(1, max_iter + 1):  # noqa: B007 - the count is returned
        improved = False
        for gi in rng.permutation(len(groups)):
            g = groups[int(gi)]
            n = sizes[g.name]
            cost = torch.zeros(n, n, dtype=torch.float64)
            for a in scored[g.name]:
                b = model[a.key]
                for g2, a2 in entries[a.key]:
                    if g2.name == g.name and a2.axis == a.axis:
                        continue
                    b = b.index_select(a2.axis, expand(perms[g2.name], a2.block))
                ta = target[a.key].movedim(a.axis, 0).reshape(n, -1)  # (n_units, block * rest)
                tb = b.movedim(a.axis, 0).reshape(n, -1)  # (n_units, block * rest)
                cost += ta @ tb.T
            _, col = linear_sum_assignment(cost.numpy(), maximize=True)
            rows = torch.arange(n)
            old = float(cost[rows, perms[g.name]].sum())
            new = float(cost[rows, torch.from_numpy(col)].sum())
            if new > old + _REL_TOL * max(abs(old), abs(new)):
                perms[g.name] = torch.from_numpy(col).to(torch.int64)
                improved = True
        if not improved:
            break
    return perms, sweeps
