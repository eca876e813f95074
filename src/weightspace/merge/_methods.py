"""Data-free merge methods in task-vector (ΔW) space, one unit (tensor key) at a time.

Every method takes the N task vectors ``deltas`` of one unit (all of one shape: 1-D, or 2-D ``(d_out, d_in)``
with conv weights already reshaped), computes in float64 and returns the merged delta in float64 with the same
shape; the caller adds the base weight and casts back. The public functions validate their inputs and
parameters (see :func:`~weightspace.merge.merge_deltas`); the registered raw implementations do not.

Matrix-only methods fall back on 1-D units: ``knots`` applies its inner method to the vectors directly (which is
exactly what KnOTS computes on a 1 × d matrix), ``tsv`` returns ``lam`` times the mean, as the reference TSV code
does for non-matrix parameters.

Per-model weights (mergekit's ``weight``) reach ``linear``, ``task_arithmetic``, ``ties``, ``dare`` and
``dare_ties`` with mergekit's formulas (the weighted task vectors ``w_i δ_i`` elect the signs, and normalised
methods divide by the weights of the contributing models); ``ties`` takes a per-model ``density`` and the DARE
methods a per-model ``p``. ``linear`` and ``slerp`` may merge raw weights (no base).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from weightspace._validation import BOOL, NONE, Interval, Kind, StrOptions
from weightspace.decompose import FitParams, MemoryStore, PCAUnit
from weightspace.errors import NonFiniteError, ParameterError, ShapeMismatchError
from weightspace.merge._registry import Param, merge_method
from weightspace.units import UnitStack

__all__ = ["dare", "dare_ties", "knots", "linear", "mean", "slerp", "subspace", "task_arithmetic", "ties", "tsv"]

_EPS = torch.finfo(torch.float64).eps
# A Gram-matrix eigendecomposition resolves singular values only down to ~sqrt(eps) of the largest one; below
# that the "components" are rounding noise, and keeping them would feed noise directions into TIES trimming and
# Procrustes steps. Dropping them changes any reconstruction by at most this relative amount per component.
_GRAM_RTOL = math.sqrt(_EPS)
# Rows of a caller-provided basis must be orthonormal to this tolerance (loose enough for a float32 archive).
_BASIS_ATOL = 1e-4
#: Components of the ``subspace`` merge when ``k`` is not given (capped at the numerical rank), as SharedSubspace.
DEFAULT_K = 16

_LAM = Param(
    Interval(float, -math.inf, math.inf, closed="neither"),
    default=1.0,
    doc="scaling λ of the merged delta (task arithmetic is usually tuned to 0.3–0.5; negative subtracts tasks)",
)
_FRACTION = Interval(float, 0, 1, closed="right")  # (0, 1]
_DENSITY = Param(_FRACTION, default=0.2, doc="fraction of entries kept per task, by magnitude", per_model=True)
_P = Param(
    Interval(float, 0, 1, closed="left"), default=0.9, doc="probability of dropping each entry", per_model=True
)
#: mergekit's threshold above which two directions count as colinear and slerp falls back to lerp.
SLERP_DOT_THRESHOLD = 0.9995
_SLERP_EPS = 1e-8
_SEED = Param(
    Interval(int, 0, math.inf, closed="left"), default=0, doc="seed of the random drop masks (used modulo 2**64)"
)


# --------------------------------------------------------------------------------------------------- helpers


def _stack(deltas: Sequence[Tensor]) -> Tensor:
    """Flatten and stack into one float64 tensor of shape ``(n_models, numel)`` with a single copy."""
    first = deltas[0]
    out = torch.empty((len(deltas), first.numel()), dtype=torch.float64, device=first.device)
    for i, delta in enumerate(deltas):
        out[i].copy_(delta.reshape(-1))
    return out


def _n_keep(fraction: float, total: int) -> int:
    """``max(1, floor(fraction · total))``, clipped to ``total``."""
    # The slack keeps products such as 0.29 * 100 = 28.999999999999996 from landing one below the intended count.
    return max(1, min(total, math.floor(fraction * total + 1e-9)))


def _per_row(value: float | Sequence[float], n_rows: int) -> list[float]:
    """A scalar parameter repeated per model, or the per-model values as given."""
    return [float(v) for v in value] if isinstance(value, Sequence) else [float(value)] * n_rows


def _magnitude_trim(x: Tensor, density: float | Sequence[float]) -> Tensor:
    """Keep the ``density`` fraction of largest-magnitude entries per row of ``x`` (n_models, n); zero the rest.

    Exactly ``max(1, floor(density · n))`` entries survive per row; magnitudes tied at the threshold are kept from
    the lowest index up, so the result does not depend on the sort backend. A per-model ``density`` (one value
    per row) trims each row at its own fraction.
    """
    if isinstance(density, Sequence):
        return torch.cat([_magnitude_trim(x[i : i + 1], d) for i, d in enumerate(_per_row(density, x.shape[0]))])
    n = x.shape[1]
    k = _n_keep(density, n)
    if k >= n:
        return x
    mag = x.abs()
    threshold = torch.kthvalue(mag, n - k + 1, dim=1, keepdim=True).values  # (n_models, 1): k-th largest
    above = mag > threshold
    tied = mag == threshold
    room = k - above.sum(dim=1, keepdim=True)  # (n_models, 1): how many threshold-tied entries still fit
    if bool((tied.sum(dim=1, keepdim=True) > room).any()):
        # Only exact magnitude ties (rare in real weights) pay for the (n_models, n) running count.
        tied &= tied.cumsum(dim=1, dtype=torch.int32) <= room
    return x * (above | tied)


def _elect_disjoint(x: Tensor, normalize: bool = True, weights: Tensor | None = None) -> Tensor:
    """TIES sign election and disjoint merge over the rows of ``x`` (n_models, n) → (n,).

    With per-model ``weights`` w the rows are weighted first, ``x_i ← w_i x_i`` (mergekit's generalized task
    arithmetic). The elected sign of an entry is the sign of its total mass ``Σ_i x_i``. Entries whose total is
    exactly zero elect no sign and merge to zero. With ``normalize`` the agreeing nonzero entries are averaged
    (disjoint mean; with weights, divided by the sum of the agreeing models' weights), otherwise summed.
    """
    if weights is not None:
        x = x * weights[:, None]
    elected = torch.sign(x.sum(dim=0))  # (n,)
    agree = (torch.sign(x) == elected) & (x != 0)  # (n_models, n)
    total = (x * agree).sum(dim=0)
    if not normalize:
        return total
    if weights is None:
        return total / agree.sum(dim=0).clamp(min=1)
    divisor = (weights[:, None] * agree).sum(dim=0)  # (n,)
    return total / torch.where(divisor == 0, torch.ones_like(divisor), divisor)


def _dare_drop(x: Tensor, p: float | Sequence[float], seed: int) -> Tensor:
    """Drop each entry of ``x`` (n_models, n) with probability ``p`` (per model if given per model) and rescale
    the survivors by 1/(1 − p)."""
    ps = _per_row(p, x.shape[0])
    if all(v == 0.0 for v in ps):
        return x
    # Masks are drawn on the CPU in float32 so a given seed gives the same masks on every device and whatever the
    # global default dtype; one row at a time keeps the extra memory to one row.
    generator = torch.Generator(device="cpu").manual_seed(seed % 2**64)
    keep = torch.empty(x.shape, dtype=torch.bool)
    for i in range(x.shape[0]):
        keep[i] = torch.rand(x.shape[1], generator=generator, dtype=torch.float32) >= ps[i]
    scale = torch.tensor([1.0 / (1.0 - v) for v in ps], dtype=x.dtype, device=x.device)  # (n_models,)
    return x * keep.to(x.device) * scale[:, None]


def _thin_svd(m: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD ``m ≈ U diag(s) Vh`` of a float64 matrix through the Gram matrix of its shorter side.

    For ``m`` (rows, cols) with rows ≤ cols: eigendecompose ``G = m mᵀ`` (rows × rows), set ``P = Qᵀ m`` and take
    ``s`` as the row norms of ``P`` and ``Vh = P / s``. Because ``Q`` is exactly orthonormal, ``Q P = m`` holds to
    rounding whatever the accuracy of the eigenvalues, so reconstruction and sums of blocks stay exact; only
    components below ``sqrt(eps) · s_max`` are dropped. Cost ``O(rows² · cols)`` instead of a full SVD. Tall
    matrices are handled by transposition.

    Returns
    -------
    u : Tensor
        ``(rows, r)``, unit columns.
    s : Tensor
        ``(r,)``, descending, positive.
    vh : Tensor
        ``(r, cols)``, unit rows.
    """
    rows, cols = m.shape
    if rows > cols:
        u_t, s_t, vh_t = _thin_svd(m.mT)
        return vh_t.mT, s_t, u_t.mT
    gram = m @ m.mT  # (rows, rows)
    _, q = torch.linalg.eigh(gram)
    proj = q.mT @ m  # (rows, cols) = diag(s) @ vh for exact eigenvectors
    s = torch.linalg.vector_norm(proj, dim=1)
    order = torch.argsort(s, descending=True)
    s, q, proj = s[order], q[:, order], proj[order]
    if s.numel() == 0 or s[0] == 0:
        return q[:, :0], s[:0], proj[:0]
    keep = s > s[0] * _GRAM_RTOL
    s = s[keep]
    return q[:, keep], s, proj[keep] / s[:, None]


def _polar(a: Tensor) -> Tensor:
    """Orthogonal Procrustes / polar factor: the nearest matrix with orthonormal columns (or rows) to ``a``.

    With ``a = P Σ Qᵀ`` the result is ``P Qᵀ``. Zero singular values are dropped first: their singular vectors
    are arbitrary and would add directions that ``a`` does not have.
    """
    p, s, qh = torch.linalg.svd(a, full_matrices=False)
    keep = s > s[0] * max(a.shape) * _EPS if s.numel() else s > 0
    return p[:, keep] @ qh[keep]


def _flush_rounding(x: Tensor) -> Tensor:
    """Zero the entries of ``x`` below ``sqrt(eps)`` of its largest magnitude.

    Coordinates computed through an SVD carry rounding residue (~1e-16 relative) where the exact value is 0. Sign
    election and disjoint means count every nonzero entry, so without this a task whose exact coordinate is 0
    would still halve another task's entry.
    """
    mag = x.abs()
    return torch.where(mag <= mag.max() * _GRAM_RTOL, torch.zeros_like(x), x)


def _zeros_like_first(deltas: Sequence[Tensor]) -> Tensor:
    return torch.zeros(deltas[0].shape, dtype=torch.float64, device=deltas[0].device)


# ---------------------------------------------------------------------------------------------------- methods


@merge_method("mean", reference_url="https://arxiv.org/abs/2203.05482")
def mean(deltas: Sequence[Tensor]) -> Tensor:
    """Average of the task vectors (uniform model soup in ΔW space).

    .. math:: \\delta = \\frac{1}{N} \\sum_{i=1}^{N} \\delta_i

    Parameters
    ----------
    deltas : sequence of Tensor
        N task vectors of one unit, each of shape ``(d,)`` or ``(d_out, d_in)``, any float dtype.

    Returns
    -------
    Tensor
        float64, same shape as one delta.

    References
    ----------
    .. [1] Wortsman et al., "Model soups: averaging weights of multiple fine-tuned models improves accuracy
       without increasing inference time", ICML 2022. https://arxiv.org/abs/2203.05482

    Examples
    --------
    >>> import torch
    >>> mean([torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, -2.0, 1.0])])
    tensor([2., 0., 2.], dtype=torch.float64)
    """
    return _stack(deltas).mean(dim=0).reshape(deltas[0].shape)


@merge_method(
    "linear",
    reference_url="https://arxiv.org/abs/2203.05482",
    params={
        "normalize": Param(BOOL, default=True, doc="divide by the sum of the weights (mergekit's default)"),
    },
    weighted=True,
    base_free=True,
)
def linear(deltas: Sequence[Tensor], *, weights: Tensor | None = None, normalize: bool = True) -> Tensor:
    """Weighted average of the models (mergekit's linear): works on task vectors or on raw weights.

    .. math:: \\delta = \\frac{\\sum_i w_i \\delta_i}{\\sum_i w_i} \\quad (\\text{normalize}),
              \\qquad \\delta = \\sum_i w_i \\delta_i \\quad (\\text{otherwise})

    With a base and ``normalize`` this equals mergekit's linear merge of the full weights,
    :math:`\\sum_i w_i \\theta_i / \\sum_i w_i = \\theta_{base} + \\sum_i w_i \\delta_i / \\sum_i w_i`;
    without a base the raw weights are averaged. Equal weights give :func:`mean`.

    Parameters
    ----------
    deltas : sequence of Tensor
        N task vectors (or raw weights) of one unit, each of shape ``(d,)`` or ``(d_out, d_in)``, any float dtype.
    weights : Tensor of shape (N,), optional
        Per-model weights (default: all 1).
    normalize : bool, default True
        Divide by ``Σ w_i`` (which must then be nonzero).

    Returns
    -------
    Tensor
        float64, same shape as one delta.

    Raises
    ------
    ParameterError
        ``normalize`` with weights that sum to zero.

    References
    ----------
    .. [1] Wortsman et al., "Model soups", ICML 2022. https://arxiv.org/abs/2203.05482
    .. [2] mergekit ``linear``: https://github.com/arcee-ai/mergekit

    Examples
    --------
    >>> import torch
    >>> a, b = torch.tensor([1.0, 2.0]), torch.tensor([3.0, -2.0])
    >>> linear([a, b], weights=torch.tensor([1.0, 3.0], dtype=torch.float64))
    tensor([ 2.5000, -1.0000], dtype=torch.float64)
    >>> linear([a, b])  # equal weights: the mean
    tensor([2., 0.], dtype=torch.float64)
    """
    x = _stack(deltas)  # (n_models, numel)
    w = torch.ones(x.shape[0], dtype=torch.float64, device=x.device) if weights is None else weights
    total = w @ x  # (numel,)
    if normalize:
        wsum = float(w.sum())
        if wsum == 0.0:
            raise ParameterError("linear merge with normalize=True needs weights whose sum is not 0.")
        total = total / wsum
    return total.reshape(deltas[0].shape)


@merge_method(
    "slerp",
    reference_url="https://arxiv.org/abs/2403.13257",
    params={
        "t": Param(
            Interval(float, 0, 1, closed="both"),
            default=0.5,
            doc="interpolation factor: 0 gives the first model, 1 the second",
        ),
    },
    base_free=True,
    n_models=2,
)
def slerp(deltas: Sequence[Tensor], *, t: float = 0.5) -> Tensor:
    """Spherical linear interpolation between two models (mergekit's slerp), per tensor.

    With :math:`v_0, v_1` the two flattened tensors, :math:`\\hat v = v / \\lVert v \\rVert` (left as is
    when :math:`\\lVert v \\rVert \\le 10^{-8}`), :math:`d = \\hat v_0 \\cdot \\hat v_1` and
    :math:`\\theta = \\arccos d`:

    .. math:: \\operatorname{slerp}(t) = \\frac{\\sin((1 - t)\\theta)}{\\sin\\theta} v_0 +
              \\frac{\\sin(t\\theta)}{\\sin\\theta} v_1

    and the linear interpolation :math:`(1 - t) v_0 + t v_1` when :math:`|d| > 0.9995` (nearly colinear, where
    the formula is ill-conditioned), exactly as mergekit. Merged without a base, the two models' raw weights are
    interpolated (mergekit's slerp, whose ``base_model`` is the first model); with a base, their task vectors.

    Parameters
    ----------
    deltas : sequence of 2 Tensor
        The two models' tensors of one unit (raw weights or task vectors), same shape, any float dtype.
    t : float in [0, 1], default 0.5
        Interpolation factor.

    Returns
    -------
    Tensor
        float64, same shape as one delta.

    References
    ----------
    .. [1] Shoemake, "Animating rotation with quaternion curves", SIGGRAPH 1985.
    .. [2] Goddard et al., "Arcee's MergeKit: A Toolkit for Merging Large Language Models", 2024.
       https://arxiv.org/abs/2403.13257

    Examples
    --------
    >>> import torch
    >>> slerp([torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])], t=0.5)  # a quarter turn, halfway
    tensor([0.7071, 0.7071], dtype=torch.float64)
    >>> slerp([torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0])], t=0.5)  # colinear: linear interpolation
    tensor([1.5000, 3.0000], dtype=torch.float64)
    """
    x = _stack(deltas)  # (2, numel)
    v0, v1 = x[0], x[1]
    n0, n1 = float(torch.linalg.vector_norm(v0)), float(torch.linalg.vector_norm(v1))
    u0 = v0 / n0 if n0 > _SLERP_EPS else v0
    u1 = v1 / n1 if n1 > _SLERP_EPS else v1
    dot = float(u0 @ u1)
    if abs(dot) > SLERP_DOT_THRESHOLD:
        out = (1.0 - t) * v0 + t * v1
    else:
        theta = math.acos(dot)
        sin_theta = math.sin(theta)
        s0 = math.sin(theta - t * theta) / sin_theta
        s1 = math.sin(t * theta) / sin_theta
        out = s0 * v0 + s1 * v1
    return out.reshape(deltas[0].shape)


@merge_method(
    "task_arithmetic", reference_url="https://arxiv.org/abs/2212.04089", params={"lam": _LAM}, weighted=True
)
def task_arithmetic(deltas: Sequence[Tensor], *, weights: Tensor | None = None, lam: float = 1.0) -> Tensor:
    """Scaled sum of the task vectors (task arithmetic), weighted per model if weights are given.

    .. math:: \\delta = \\lambda \\sum_{i=1}^{N} w_i \\delta_i \\qquad (w_i = 1 \\text{ by default})

    Parameters
    ----------
    deltas : sequence of Tensor
        N task vectors of one unit, each of shape ``(d,)`` or ``(d_out, d_in)``, any float dtype.
    weights : Tensor of shape (N,), optional
        Per-model weights ``w_i`` (mergekit's ``weight``; no normalisation, as mergekit's ``task_arithmetic``).
    lam : float, default 1.0
        Scaling λ. With λ = 1/N this is :func:`mean`; Ilharco et al. tune λ on held-out data and typically land
        around 0.3–0.5 for 4–8 tasks. A negative λ subtracts (negates) the tasks.

    Returns
    -------
    Tensor
        float64, same shape as one delta.

    References
    ----------
    .. [1] Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023. https://arxiv.org/abs/2212.04089

    Examples
    --------
    >>> import torch
    >>> task_arithmetic([torch.tensor([1.0, 2.0]), torch.tensor([3.0, -2.0])], lam=0.5)
    tensor([2., 0.], dtype=torch.float64)
    """
    x = _stack(deltas)  # (n_models, numel)
    total = x.sum(dim=0) if weights is None else weights @ x
    return lam * total.reshape(deltas[0].shape)


@merge_method(
    "ties",
    reference_url="https://arxiv.org/abs/2306.01708",
    params={"density": _DENSITY, "lam": _LAM},
    weighted=True,
)
def ties(
    deltas: Sequence[Tensor],
    *,
    weights: Tensor | None = None,
    density: float | Sequence[float] = 0.2,
    lam: float = 1.0,
) -> Tensor:
    """TIES-Merging: trim each task vector, elect a sign per entry, average the agreeing entries.

    1. Trim: keep the ``k = max(1, ⌊density · n⌋)`` largest-magnitude entries of each flattened δ_i (n entries),
       zero the rest → :math:`\\hat\\delta_i`. Magnitude ties at the threshold are kept from the lowest index up.
    2. Elect: :math:`\\gamma = \\operatorname{sign}(\\sum_i \\hat\\delta_i)` per entry (total mass).
    3. Disjoint mean over the tasks that agree, :math:`A = \\{i : \\hat\\delta_i \\neq 0,
       \\operatorname{sign}\\hat\\delta_i = \\gamma\\}`:

    .. math:: \\delta = \\lambda \\frac{1}{|A|} \\sum_{i \\in A} \\hat\\delta_i
              \\quad (0 \\text{ where } A = \\emptyset)

    An entry whose trimmed total is exactly zero elects no sign and merges to zero (the reference code breaks such
    ties by the majority sign of the whole tensor instead; this only differs on exact cancellations).

    With per-model weights the trimmed vectors are weighted before the election and the disjoint mean divides by
    the agreeing models' weights: :math:`\\delta = \\lambda \\sum_{i \\in A} w_i \\hat\\delta_i /
    \\sum_{i \\in A} w_i` (mergekit's ``ties`` with ``normalize: true``).

    Parameters
    ----------
    deltas : sequence of Tensor
        N task vectors of one unit, each of shape ``(d,)`` or ``(d_out, d_in)``, any float dtype.
    weights : Tensor of shape (N,), optional
        Per-model weights (default: all 1).
    density : float in (0, 1] or one per model, default 0.2
        Fraction of entries kept per task (the paper's top-k%, k = 20). ``density=1`` skips trimming.
    lam : float, default 1.0
        Scaling λ of the merged delta.

    Returns
    -------
    Tensor
        float64, same shape as one delta.

    References
    ----------
    .. [1] Yadav et al., "TIES-Merging: Resolving Interference When Merging Models", NeurIPS 2023.
       https://arxiv.org/abs/2306.01708

    Examples
    --------
    >>> import torch
    >>> a = torch.tensor([4.0, -1.0, 2.0, 0.5])
    >>> b = torch.tensor([-3.0, 2.0, 1.0, -0.1])
    >>> c = torch.tensor([1.0, 3.0, -5.0, 0.2])
    >>> ties([a, b, c], density=0.5)  # trimmed: [4,0,2,0], [-3,2,0,0], [0,3,-5,0]
    tensor([ 4.0000,  2.5000, -5.0000,  0.0000], dtype=torch.float64)
    """
    merged = _elect_disjoint(_magnitude_trim(_stack(deltas), density), weights=weights)
    return lam * merged.reshape(deltas[0].shape)


@merge_method(
    "dare",
    reference_url="https://arxiv.org/abs/2311.03099",
    params={"p": _P, "lam": _LAM, "seed": _SEED},
    weighted=True,
)
def dare(
    deltas: Sequence[Tensor],
    *,
    weights: Tensor | None = None,
    p: float | Sequence[float] = 0.9,
    lam: float = 1.0,
    seed: int = 0,
) -> Tensor:
    """DARE: randomly drop entries of each task vector, rescale the survivors, then sum (task arithmetic).

    .. math:: \\delta = \\lambda \\sum_{i=1}^{N} \\frac{m_i \\odot \\delta_i}{1 - p}, \\qquad
              m_i \\sim \\operatorname{Bernoulli}(1 - p) \\text{ entrywise}

    The rescaling keeps each entry unbiased, :math:`E[\\delta] = \\lambda \\sum_i \\delta_i`. The masks come from
    a ``torch.Generator`` seeded with ``seed``: the same seed, shapes and task order give the same result on any
    device (masks are drawn on the CPU). A caller merging many units should derive one seed per unit (e.g. from
    the tensor key), otherwise units of equal shape get identical masks.

    Parameters
    ----------
    deltas : sequence of Tensor
        N task vectors of one unit, each of shape ``(d,)`` or ``(d_out, d_in)``, any float dtype.
    weights : Tensor of shape (N,), optional
        Per-model weights ``w_i`` multiplying each rescaled task vector (mergekit's ``dare_linear``, not
        normalised).
    p : float in [0, 1) or one per model, default 0.9
        Drop probability (mergekit's ``density`` is 1 − p). ``p=0`` is exactly task arithmetic.
    lam : float, default 1.0
        Scaling λ of the merged delta.
    seed : int ≥ 0, default 0
        Seed of the masks (taken modulo 2**64).

    Returns
    -------
    Tensor
        float64, same shape as one delta.

    References
    ----------
    .. [1] Yu et al., "Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free
       Lunch", ICML 2024. https://arxiv.org/abs/2311.03099

    Examples
    --------
    >>> import torch
    >>> a, b = torch.tensor([1.0, 2.0]), torch.tensor([3.0, -2.0])
    >>> dare([a, b], p=0.0)  # no drops: plain sum
    tensor([4., 0.], dtype=torch.float64)
    >>> bool((dare([a, b], p=0.5, seed=1) == dare([a, b], p=0.5, seed=1)).all())
    True
    """
    dropped = _dare_drop(_stack(deltas), p, seed)  # (n_models, numel)
    merged = dropped.sum(dim=0) if weights is None else weights @ dropped
    return lam * merged.reshape(deltas[0].shape)


@merge_method(
    "dare_ties",
    reference_url="https://arxiv.org/abs/2311.03099",
    weighted=True,
    params={
        "p": _P,
        "lam": _LAM,
        "seed": _SEED,
        "normalize": Param(
            BOOL,
            default=True,
            doc="disjoint mean of the agreeing entries (True) or their sum (False, mergekit's default)",
        ),
    },
)
def dare_ties(
    deltas: Sequence[Tensor],
    *,
    weights: Tensor | None = None,
    p: float | Sequence[float] = 0.9,
    lam: float = 1.0,
    seed: int = 0,
    normalize: bool = True,
) -> Tensor:
    """DARE-TIES: DARE's random drop and rescale in place of TIES' magnitude trim, then TIES sign election.

    With :math:`\\tilde\\delta_i = m_i \\odot \\delta_i / (1 - p)` (see :func:`dare`), elect
    :math:`\\gamma = \\operatorname{sign}(\\sum_i \\tilde\\delta_i)` per entry and keep the agreeing nonzero
    entries :math:`A = \\{i : \\operatorname{sign}\\tilde\\delta_i = \\gamma \\neq 0\\}`:

    .. math:: \\delta = \\lambda \\frac{1}{|A|} \\sum_{i \\in A} \\tilde\\delta_i \\quad (\\text{normalize}),
              \\qquad \\delta = \\lambda \\sum_{i \\in A} \\tilde\\delta_i \\quad (\\text{otherwise})

    As in mergekit there is no separate ``density``: the random drop is the sparsification (mergekit's
    ``density`` = 1 − p). mergekit's ``dare_ties`` defaults to ``normalize: false`` (a sign-filtered sum); the
    default here is the disjoint mean of TIES-Merging, i.e. DARE used as a plug-in pre-processing for TIES as in
    the DARE paper. Pass ``normalize=False`` for mergekit's behaviour. ``p=0`` equals :func:`ties` with
    ``density=1``.

    Parameters
    ----------
    deltas : sequence of Tensor
        N task vectors of one unit, each of shape ``(d,)`` or ``(d_out, d_in)``, any float dtype.
    weights : Tensor of shape (N,), optional
        Per-model weights: the rescaled vectors are weighted before the election, and the disjoint mean divides
        by the agreeing models' weights (mergekit).
    p : float in [0, 1) or one per model, default 0.9
        Drop probability.
    lam : float, default 1.0
        Scaling λ of the merged delta.
    seed : int ≥ 0, default 0
        Seed of the masks (taken modulo 2**64); derive one per unit when merging many units.
    normalize : bool, default True
        Disjoint mean (True) or sum (False) of the agreeing entries.

    Returns
    -------
    Tensor
        float64, same shape as one delta.

    References
    ----------
    .. [1] Yu et al., "Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free
       Lunch", ICML 2024. https://arxiv.org/abs/2311.03099
    .. [2] Yadav et al., "TIES-Merging", NeurIPS 2023. https://arxiv.org/abs/2306.01708

    Examples
    --------
    >>> import torch
    >>> a, b, c = torch.tensor([1.0, -2.0, 3.0]), torch.tensor([2.0, 1.0, -1.0]), torch.tensor([-1.0, 1.0, -1.0])
    >>> dare_ties([a, b, c], p=0.0)  # elected signs (+, none, +)
    tensor([1.5000, 0.0000, 3.0000], dtype=torch.float64)
    >>> dare_ties([a, b, c], p=0.0, normalize=False)
    tensor([3., 0., 3.], dtype=torch.float64)
    """
    merged = _elect_disjoint(_dare_drop(_stack(deltas), p, seed), normalize=normalize, weights=weights)
    return lam * merged.reshape(deltas[0].shape)


def _inner_ties(x: Tensor, density: float) -> Tensor:
    return _elect_disjoint(_magnitude_trim(x, density))


_KNOTS_INNER: dict[str, Callable[[Tensor, float], Tensor]] = {
    "mean": lambda x, density: x.mean(dim=0),
    "task_arithmetic": lambda x, density: x.sum(dim=0),
    "ties": _inner_ties,
}


@merge_method(
    "knots",
    reference_url="https://arxiv.org/abs/2410.19735",
    params={
        "inner": Param(StrOptions(_KNOTS_INNER), default="ties", doc="merge applied to the aligned blocks"),
        "density": Param(_FRACTION, default=0.2, doc="fraction kept per task when inner='ties'"),
        "lam": _LAM,
        "s_on_v": Param(
            BOOL, default=True, doc="merge the Σ-scaled blocks ΣV_iᵀ (True, reference default) or V_iᵀ"
        ),
    },
)
def knots(
    deltas: Sequence[Tensor],
    *,
    inner: str = "ties",
    density: float = 0.2,
    lam: float = 1.0,
    s_on_v: bool = True,
) -> Tensor:
    """KnOTS: align the task updates with one SVD of their concatenation, then merge the aligned blocks.

    The column-concatenated updates share one left basis:

    .. math:: [\\delta_1 \\cdots \\delta_N] = U \\Sigma [V_1^\\top \\cdots V_N^\\top], \\qquad
              U \\in \\mathbb{R}^{d_{out} \\times r},\\ V_i \\in \\mathbb{R}^{d_{in} \\times r}

    so :math:`\\delta_i = U (\\Sigma V_i^\\top)` exactly. The inner method merges the per-task blocks
    :math:`B_i = \\Sigma V_i^\\top` (``s_on_v=True``, the reference implementation's default) or
    :math:`B_i = V_i^\\top` (then Σ is applied after merging), and

    .. math:: \\delta = \\lambda \\, U \\, \\operatorname{inner}(B_1, \\dots, B_N)
              \\quad (\\text{or } \\lambda \\, U \\Sigma \\operatorname{inner}(V_1^\\top, \\dots, V_N^\\top))

    where ``inner`` is ``"ties"`` (trim each block to ``density``, elect signs, disjoint mean),
    ``"task_arithmetic"`` (sum) or ``"mean"``; λ scales the result for every inner method. Since the blocks
    reconstruct each δ_i exactly, ``inner="task_arithmetic"`` gives exactly λ Σ δ_i and ``inner="mean"`` gives
    λ · mean; KnOTS only changes TIES-like inner methods, whose trimming and sign election now act in the aligned
    basis.

    The SVD is computed from the Gram matrix of the shorter side of the ``d_out × N·d_in`` concatenation
    (``O(min² · max)``), in float64; components below ``sqrt(eps)`` of the largest singular value are dropped.
    For ``inner="ties"``, block entries below ``sqrt(eps)`` of the largest one are set to exactly 0 first: they
    are rounding residue of the SVD, and the disjoint mean would otherwise count them as agreeing tasks.

    **1-D units** (biases, norms): the concatenation is a 1 × N·d matrix whose SVD is ``U = ±1``, ``Σ = ‖·‖``,
    so KnOTS reduces exactly to the inner method applied to the vectors themselves (times λ), which is what is
    computed.

    Parameters
    ----------
    deltas : sequence of Tensor
        N task vectors of one unit: ``(d_out, d_in)`` matrices, or ``(d,)`` vectors (see above).
    inner : {"ties", "task_arithmetic", "mean"}, default "ties"
        Merge applied to the aligned blocks.
    density : float in (0, 1], default 0.2
        Fraction of entries kept per task block when ``inner="ties"`` (the reference's topK = 20); ignored
        otherwise.
    lam : float, default 1.0
        Scaling λ of the merged delta.
    s_on_v : bool, default True
        Merge the Σ-scaled blocks (True) or the unscaled V_iᵀ (False).

    Returns
    -------
    Tensor
        float64, same shape as one delta.

    References
    ----------
    .. [1] Stoica et al., "Model merging with SVD to tie the KnOTS", ICLR 2025. https://arxiv.org/abs/2410.19735

    Examples
    --------
    Here U = (e₂, e₁) up to signs and the aligned blocks are ΣV₁ᵀ = [[0, 0], [2, 1]], ΣV₂ᵀ = [[0, 3], [-1, 0]];
    b's -1 loses the sign election against a's 2:

    >>> import torch
    >>> a = torch.tensor([[2.0, 1.0], [0.0, 0.0]])
    >>> b = torch.tensor([[-1.0, 0.0], [0.0, 3.0]])
    >>> knots([a, b], inner="ties", density=0.5)
    tensor([[2., 1.],
            [0., 3.]], dtype=torch.float64)
    >>> knots([a, b], inner="task_arithmetic", lam=0.5)
    tensor([[0.5000, 0.5000],
            [0.0000, 1.5000]], dtype=torch.float64)
    """
    merge_inner = _KNOTS_INNER[inner]
    shape = deltas[0].shape
    if len(shape) != 2:
        if len(shape) > 2:
            raise ShapeMismatchError(f"knots needs 1-D or 2-D deltas; got shape {tuple(shape)} (reshape to 2-D).")
        return lam * merge_inner(_stack(deltas), density).reshape(shape)
    n_models = len(deltas)
    d_out, d_in = shape
    # (d_out, n_models * d_in): the task updates side by side, filled in place to avoid a second float64 copy
    concat = torch.empty((d_out, n_models * d_in), dtype=torch.float64, device=deltas[0].device)
    for i, delta in enumerate(deltas):
        concat[:, i * d_in : (i + 1) * d_in].copy_(delta)
    u, s, vh = _thin_svd(concat)  # u (d_out, r), s (r,), vh (r, n_models * d_in)
    rank = s.numel()
    if rank == 0:
        return _zeros_like_first(deltas)
    blocks = s[:, None] * vh if s_on_v else vh  # (rank, n_models * d_in)
    # (rank, n_models, d_in) -> (n_models, rank * d_in): one flattened aligned block per task, as TIES expects
    blocks = blocks.reshape(rank, n_models, d_in).transpose(0, 1).reshape(n_models, rank * d_in)
    if inner == "ties":
        blocks = _flush_rounding(blocks)
    merged = merge_inner(blocks, density).reshape(rank, d_in)
    if not s_on_v:
        merged = s[:, None] * merged
    return lam * (u @ merged)


@merge_method(
    "tsv",
    reference_url="https://arxiv.org/abs/2412.00081",
    params={
        "fraction": Param(
            _FRACTION,
            NONE,
            default=None,
            doc="fraction of singular triplets kept per task (default 1/N)",
        ),
        "lam": _LAM,
    },
)
def tsv(deltas: Sequence[Tensor], *, fraction: float | None = None, lam: float = 1.0) -> Tensor:
    """TSV-Merge: keep each task's top singular triplets, decorrelate them across tasks, recombine.

    1. Per task, truncated SVD :math:`\\delta_i \\approx U_i S_i V_i^\\top` with
       ``k = max(1, ⌊fraction · min(d_out, d_in)⌋)`` triplets (fewer if δ_i has lower numerical rank: zero
       singular values have arbitrary vectors that would tilt step 2).
    2. Concatenate :math:`U = [U_1 \\cdots U_N]`, :math:`S = \\operatorname{blockdiag}(S_i)`,
       :math:`V = [V_1 \\cdots V_N]` and replace U and V by their nearest orthonormal matrices (orthogonal
       Procrustes): with :math:`U = P \\Sigma Q^\\top`, :math:`U_\\perp = P Q^\\top`; likewise :math:`V_\\perp`.
    3. :math:`\\delta = \\lambda \\, U_\\perp S V_\\perp^\\top`.

    If the tasks' singular vectors are already mutually orthogonal, :math:`U_\\perp = U`, :math:`V_\\perp = V` and
    the result is λ Σ δ_i (task arithmetic) whenever each task's rank is at most k. Overlapping directions are
    shrunk (two tasks sharing one left singular vector contribute with weight 1/√2 each).

    **1-D units** (biases, norms): there is no SVD to decorrelate, so the result is ``lam`` times the mean of
    the deltas, as in the reference implementation (which averages all non-matrix parameters).

    Parameters
    ----------
    deltas : sequence of Tensor
        N task vectors of one unit: ``(d_out, d_in)`` matrices, or ``(d,)`` vectors (see above).
    fraction : float in (0, 1] or None, default None
        Fraction of ``min(d_out, d_in)`` singular triplets kept per task; None means 1/N, the paper's choice,
        so that the N blocks together have at most full rank.
    lam : float, default 1.0
        Scaling λ (the paper's α, 1.0 in its experiments).

    Returns
    -------
    Tensor
        float64, same shape as one delta.

    References
    ----------
    .. [1] Gargiulo et al., "Task Singular Vectors: Reducing Task Interference in Model Merging", CVPR 2025.
       https://arxiv.org/abs/2412.00081

    Examples
    --------
    Both tasks write along the same output direction e₁, so each is shrunk by 1/√2:

    >>> import torch
    >>> a = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    >>> b = torch.tensor([[0.0, 4.0], [0.0, 0.0]])
    >>> tsv([a, b])
    tensor([[1.4142, 2.8284],
            [0.0000, 0.0000]], dtype=torch.float64)
    >>> tsv([torch.tensor([1.0, 3.0]), torch.tensor([3.0, 1.0])], lam=0.5)  # 1-D: lam * mean
    tensor([1., 1.], dtype=torch.float64)
    """
    shape = deltas[0].shape
    n_models = len(deltas)
    if len(shape) != 2:
        if len(shape) > 2:
            raise ShapeMismatchError(f"tsv needs 1-D or 2-D deltas; got shape {tuple(shape)} (reshape to 2-D).")
        return lam * _stack(deltas).mean(dim=0).reshape(shape)
    k = _n_keep(1.0 / n_models if fraction is None else fraction, min(shape))
    us, ss, vs = [], [], []
    for delta in deltas:
        u, s, vh = _thin_svd(delta.to(torch.float64))
        r = min(k, s.numel())
        us.append(u[:, :r])
        ss.append(s[:r])
        vs.append(vh[:r].mT)
    s_cat = torch.cat(ss)  # (n_triplets,)
    if s_cat.numel() == 0:
        return _zeros_like_first(deltas)
    u_orth = _polar(torch.cat(us, dim=1))  # (d_out, n_triplets)
    v_orth = _polar(torch.cat(vs, dim=1))  # (d_in, n_triplets)
    return lam * ((u_orth * s_cat) @ v_orth.mT)


def subspace_fit(deltas: Sequence[Tensor], k: int | float | None = None) -> PCAUnit:
    """The uncentered model-axis PCA of ``deltas`` that the ``subspace`` merge projects on.

    This is :class:`~weightspace.decompose.SharedSubspace`'s own unit fit with ``center=False``: the same rank
    rule (``k`` an int count or a float energy fraction, capped at the numerical rank with the same zero
    tolerance) and the same sign convention, so ``SharedSubspace(center=False)`` fitted on these deltas has
    this basis and these coefficients.

    Parameters
    ----------
    deltas : sequence of Tensor
        N task vectors of one unit.
    k : int, float or None
        None means :data:`DEFAULT_K` components.

    Returns
    -------
    PCAUnit
        ``basis()`` of shape (k, numel) and ``coefficients`` of shape (N, k).
    """
    stack = UnitStack.from_tensors([d.detach().reshape(-1).to("cpu") for d in deltas], name="delta")
    params = FitParams(n_components=DEFAULT_K if k is None else k, center=False)
    return PCAUnit.fit(stack, params, MemoryStore())


def _checked_basis(basis: Tensor, dim: int, like: Tensor) -> Tensor:
    if basis.ndim != 2 or basis.shape[1] != dim:
        raise ShapeMismatchError(
            f"basis has shape {tuple(basis.shape)}; expected (k, {dim}): orthonormal rows over the flattened unit."
        )
    if not basis.is_floating_point():
        raise ParameterError(f"basis has dtype {basis.dtype}; it must be floating point.")
    if not bool(torch.isfinite(basis).all()):
        raise NonFiniteError("basis contains NaN or infinity.")
    rows = basis.to(dtype=torch.float64, device=like.device)
    error = (rows @ rows.mT - torch.eye(rows.shape[0], dtype=torch.float64, device=like.device)).abs()
    worst = float(error.max()) if error.numel() else 0.0
    if worst > _BASIS_ATOL:
        raise ParameterError(
            f"The rows of 'basis' must be orthonormal (max |B Bᵀ - I| = {worst:.3g} > {_BASIS_ATOL:g}); "
            "orthonormalize it first, e.g. torch.linalg.qr(basis.mT).Q.mT."
        )
    return rows


@merge_method(
    "subspace",
    reference_url="https://arxiv.org/abs/2512.05117",
    params={
        "k": Param(
            Interval(int, 1, math.inf, closed="left"),
            Interval(float, 0, 1, closed="neither"),
            NONE,
            default=None,
            doc="number of components (int) or captured energy fraction (float in (0, 1)); default 16, capped at the rank",
        ),
        "lam": _LAM,
        "elect": Param(
            BOOL, default=True, doc="TIES-style sign election per coefficient (True) or plain mean (False)"
        ),
        "basis": Param(
            Kind((Tensor,), "a torch.Tensor"),
            NONE,
            default=None,
            cli=False,
            doc="external (k, D) basis with orthonormal rows",
        ),
    },
)
def subspace(
    deltas: Sequence[Tensor],
    *,
    k: int | float | None = None,
    lam: float = 1.0,
    elect: bool = True,
    basis: Tensor | None = None,
) -> Tensor:
    """Shared-subspace merge: project the task vectors on a shared basis, merge the coefficients, map back.

    With the N flattened task vectors stacked as :math:`X \\in \\mathbb{R}^{N \\times D}` (D = numel of the unit):

    1. Basis: the top-k right singular vectors :math:`v_1, \\dots, v_k` of the **uncentered** X
       (:math:`X = U \\Sigma V^\\top`; :func:`subspace_fit`, the same unit fit as
       ``SharedSubspace(center=False)``), or the rows of a caller-provided ``basis``.
    2. Coefficients :math:`c_{ij} = \\langle \\delta_i, v_j \\rangle` (:math:`= U_{ij} \\sigma_j` for the
       computed basis).
    3. Combine per component j: with ``elect=True`` elect :math:`\\gamma_j = \\operatorname{sign}(\\sum_i c_{ij})`
       and take the disjoint mean :math:`c^*_j` of the nonzero :math:`c_{ij}` whose sign is :math:`\\gamma_j`
       (0 if the total is exactly 0; coefficients below ``sqrt(eps)`` of the largest one count as 0, being
       rounding residue); with ``elect=False``, :math:`c^*_j = \\frac{1}{N} \\sum_i c_{ij}`.
    4. :math:`\\delta = \\lambda \\sum_{j=1}^{k} c^*_j v_j`.

    The projection discards the part of each δ_i outside the k-dimensional basis.

    **Why uncentered.** With a centered basis (PCA of :math:`\\delta_i - \\bar\\delta`) the coefficients of the
    centered task vectors sum to zero over i for every component, so averaging them contributes nothing and the
    "merge" :math:`\\bar\\delta + \\sum_j \\bar c_j v_j` is identically the plain mean :math:`\\bar\\delta` (as a
    public replication found). The uncentered basis keeps the shared (mean) direction inside the subspace and the
    coefficients of the raw task vectors, so sign election actually changes the result. With ``elect=False`` and
    ``k`` ≥ rank(X) the projection is lossless and the result is λ · mean; the method differs from the mean
    through election and truncation.

    Parameters
    ----------
    deltas : sequence of Tensor
        N task vectors of one unit, each of shape ``(d,)`` or ``(d_out, d_in)``, any float dtype; flattened
        row-major to D entries. 1-D units need no fallback.
    k : int ≥ 1, float in (0, 1) or None, default None
        Number of leading components; a float picks the fewest leading components whose squared singular values
        (uncentered energy) reach that fraction. None means 16. Capped at the numerical rank of X with the zero
        tolerance every fit in weightspace uses (:func:`weightspace.decompose.choose_rank`). With ``basis``: an
        int keeps its first k rows, None keeps all, and a float is rejected.
    lam : float, default 1.0
        Scaling λ of the merged delta.
    elect : bool, default True
        TIES-style sign election per coefficient (True) or plain mean of the coefficients (False).
    basis : Tensor of shape (k_b, D) or None, default None
        An external basis with orthonormal rows (checked to 1e-4, so float32 is fine), e.g. the archive's shared
        basis for this unit with rows flattened in the same row-major order as ``delta.reshape(-1)``. Rows are
        assumed ordered by importance. Not settable from text (``Param.cli`` is False).

    Returns
    -------
    Tensor
        float64, same shape as one delta.

    Raises
    ------
    ShapeMismatchError
        ``basis`` is not ``(k_b, D)``.
    ParameterError
        ``basis`` rows are not orthonormal, or a float ``k`` is combined with ``basis``.

    References
    ----------
    .. [1] Kaushik et al., "The Universal Weight Subspace Hypothesis", 2025. https://arxiv.org/abs/2512.05117

    Examples
    --------
    The basis of these three tasks is (e₂, e₁); the coefficients on e₂ are (0, 1, -3), elected sign − keeps -3:

    >>> import torch
    >>> ds = [torch.tensor([2.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]), torch.tensor([0.0, -3.0, 0.0])]
    >>> subspace(ds).round(decimals=6)
    tensor([ 2., -3.,  0.], dtype=torch.float64)
    >>> subspace(ds, elect=False).round(decimals=4)  # full rank and no election: the mean
    tensor([ 0.6667, -0.6667,  0.0000], dtype=torch.float64)
    >>> subspace(ds, basis=torch.tensor([[1.0, 0.0, 0.0]]))
    tensor([2., 0., 0.], dtype=torch.float64)
    """
    x = _stack(deltas)  # (n_models, numel)
    dim = x.shape[1]
    if basis is None:
        fit = subspace_fit(deltas, k)
        if fit.k == 0:
            return _zeros_like_first(deltas)
        coeffs = fit.coefficients.to(x.device)  # (n_models, n_comp)
        vectors = fit.basis().to(x.device)  # (n_comp, numel)
    else:
        if isinstance(k, float):
            raise ParameterError(
                "The 'k' parameter of merge method 'subspace' must be an int or None when a basis is given "
                f"(slice the basis to choose components). Got {k!r} instead."
            )
        vectors = _checked_basis(basis, dim, x)
        if k is not None:
            vectors = vectors[:k]
        coeffs = x @ vectors.mT  # (n_models, n_comp)
    combined = _elect_disjoint(_flush_rounding(coeffs)) if elect else coeffs.mean(dim=0)  # (n_comp,)
    return lam * (combined @ vectors).reshape(deltas[0].shape)
