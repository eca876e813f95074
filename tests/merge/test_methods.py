"""Tests of the pure merge-method core: hand-computed cases, invariants, parameter handling and errors."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from weightspace._validation import Interval, Kind
from weightspace.errors import NonFiniteError, ParameterError, ShapeMismatchError
from weightspace.merge import (
    MERGE_METHODS,
    MergeMethod,
    Param,
    dare,
    dare_ties,
    knots,
    linear,
    mean,
    merge_deltas,
    merge_method,
    slerp,
    subspace,
    task_arithmetic,
    ties,
    tsv,
)

ALL_METHODS = [
    "dare",
    "dare_ties",
    "knots",
    "linear",
    "mean",
    "slerp",
    "subspace",
    "task_arithmetic",
    "ties",
    "tsv",
]
# Methods whose result does not depend on the order of the task vectors (dare draws masks in task order; slerp's
# t runs from the first model to the second).
ORDER_FREE = ["knots", "linear", "mean", "subspace", "task_arithmetic", "ties", "tsv"]


def n_for(name: str, n: int = 3) -> int:
    """How many models a generic test gives ``name`` (slerp merges exactly two)."""
    return MERGE_METHODS.get(name).n_models or n


S2 = math.sqrt(2.0)


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def close(actual: torch.Tensor, expected, atol: float = 1e-10) -> None:
    expected = expected if isinstance(expected, torch.Tensor) else t(expected)
    assert actual.dtype == torch.float64
    torch.testing.assert_close(actual, expected.to(torch.float64), atol=atol, rtol=1e-10)


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def orthogonal_low_rank(d_out: int = 8, d_in: int = 7, ranks=(2, 2, 1), seed: int = 0) -> list[torch.Tensor]:
    """Task vectors U_i S_i V_iᵀ whose U_i (and V_i) blocks are mutually orthogonal, with distinct singular values."""
    q_out, _ = torch.linalg.qr(randn(d_out, d_out, seed=seed))
    q_in, _ = torch.linalg.qr(randn(d_in, d_in, seed=seed + 1))
    singular_values = t([5.0, 4.0, 3.2, 2.5, 1.9, 1.4, 1.0, 0.7])
    deltas, start = [], 0
    for r in ranks:
        cols = slice(start, start + r)
        deltas.append(q_out[:, cols] @ torch.diag(singular_values[cols]) @ q_in[:, cols].T)
        start += r
    return deltas


# The three tasks of the subspace examples: the uncentered basis is (e2, e1) with σ² = (10, 4).
AXES3 = [t([2.0, 0.0, 0.0]), t([0.0, 1.0, 0.0]), t([0.0, -3.0, 0.0])]
TIES3 = [t([4.0, -1.0, 2.0, 0.5]), t([-3.0, 2.0, 1.0, -0.1]), t([1.0, 3.0, -5.0, 0.2])]

# (method, deltas, params, expected): every expectation is worked out by hand in the comment beside it.
CASES = [
    ("mean", [t([1, 2, 3]), t([3, -2, 1])], {}, [2, 0, 2]),
    ("mean", [t([[1, 2], [3, 4]]), t([[3, 2], [1, 0]]), t([[2, 2], [2, 2]])], {}, [[2, 2], [2, 2]]),
    ("task_arithmetic", [t([1, 2, 3]), t([3, -2, 1])], {"lam": 0.5}, [2, 0, 2]),  # 0.5 * [4, 0, 4]
    ("task_arithmetic", [t([1, 2]), t([1, 1])], {}, [2, 3]),
    ("task_arithmetic", [t([1, -2])], {"lam": -1.0}, [-1, 2]),  # task negation
    # trim to top-2: [4,0,2,0], [-3,2,0,0], [0,3,-5,0]; totals [1,5,-3,0] -> signs (+,+,-,none);
    # disjoint means: 4/1, (2+3)/2, -5/1, 0
    ("ties", TIES3, {"density": 0.5}, [4, 2.5, -5, 0]),
    ("ties", TIES3, {"density": 0.5, "lam": 2.0}, [8, 5, -10, 0]),
    # top-1: [4,0,0,0], [-3,0,0,0], [0,0,-5,0]; entry 0 total +1 keeps only 4
    ("ties", TIES3, {"density": 0.25}, [4, 0, -5, 0]),
    # no trim: totals [4, -1] -> mean(1, 3) = 2 and only -2 agrees with "-"
    ("ties", [t([1, -2]), t([3, 1])], {"density": 1.0}, [2, -2]),
    ("ties", [t([2.0]), t([-2.0])], {"density": 1.0}, [0]),  # exact cancellation elects no sign
    ("ties", [t([1, -1, 1, -1])], {"density": 0.5}, [1, -1, 0, 0]),  # equal magnitudes: lowest indices kept
    # totals [2, 0, 1]: entry 0 mean(1, 2), entry 1 no sign, entry 2 only 3 agrees with "+"
    ("dare_ties", [t([1, -2, 3]), t([2, 1, -1]), t([-1, 1, -1])], {"p": 0.0}, [1.5, 0, 3]),
    ("dare_ties", [t([1, -2, 3]), t([2, 1, -1]), t([-1, 1, -1])], {"p": 0.0, "normalize": False}, [3, 0, 3]),
    ("dare", [t([1, 2]), t([3, -2])], {"p": 0.0, "lam": 0.5}, [2, 0]),
    # [a | b] = [[2,1,-1,0],[0,0,0,3]] has orthogonal rows: U = (e2, e1), Σ = (3, √6);
    # blocks ΣV_aᵀ = [[0,0],[2,1]], ΣV_bᵀ = [[0,3],[-1,0]]. Top-2 keeps all nonzeros; -1 loses to 2.
    ("knots", [t([[2, 1], [0, 0]]), t([[-1, 0], [0, 3]])], {"density": 0.5}, [[2, 1], [0, 3]]),
    # top-1 per block: [[0,0],[2,0]] and [[0,3],[0,0]]
    ("knots", [t([[2, 1], [0, 0]]), t([[-1, 0], [0, 3]])], {"density": 0.25}, [[2, 0], [0, 3]]),
    # rank 1: U = e1, blocks [2, 1] and [-1, 0]; the top-1 of each block is its first entry, total +1 keeps 2
    # (plain ties at density 0.5 trims the 4 raw entries instead and returns [[2, 1], [0, 0]])
    ("knots", [t([[2, 1], [0, 0]]), t([[-1, 0], [0, 0]])], {"density": 0.5}, [[2, 0], [0, 0]]),
    (
        "knots",
        [t([[2, 1], [0, 0]]), t([[-1, 0], [0, 3]])],
        {"inner": "task_arithmetic", "lam": 0.5},
        [[0.5, 0.5], [0, 1.5]],
    ),
    ("knots", [t([[2, 1], [0, 0]]), t([[-1, 0], [0, 3]])], {"inner": "mean"}, [[0.5, 0.5], [0, 1.5]]),
    ("knots", [t([1, -2]), t([3, 1])], {"density": 1.0}, [2, -2]),  # 1-D: plain ties
    # both tasks have u = e1: U = [e1, e1] -> U⊥ = [e1, e1]/√2, V = [e1, e2] = V⊥, so 2·e1e1ᵀ/√2 + 4·e1e2ᵀ/√2
    ("tsv", [t([[2, 0], [0, 0]]), t([[0, 4], [0, 0]])], {}, [[S2, 2 * S2], [0, 0]]),
    ("tsv", [t([[2, 0], [0, 0]]), t([[0, 0], [0, 3]])], {"lam": 0.5}, [[1, 0], [0, 1.5]]),  # orthogonal
    ("tsv", [t([1, 3]), t([3, 1])], {"lam": 0.5}, [1, 1]),  # 1-D: lam * mean
    # coefficients on e2: (0, 1, -3), total -2 keeps -3; on e1: (2, 0, 0) keeps 2
    ("subspace", AXES3, {}, [2, -3, 0]),
    ("subspace", AXES3, {"lam": 0.5}, [1, -1.5, 0]),
    ("subspace", AXES3, {"elect": False}, [2 / 3, -2 / 3, 0]),  # full rank, no election: the mean
    ("subspace", AXES3, {"k": 1}, [0, -3, 0]),  # only e2
    ("subspace", AXES3, {"k": 1, "elect": False}, [0, -2 / 3, 0]),
    ("subspace", AXES3, {"k": 0.7}, [0, -3, 0]),  # e2 alone holds 10/14 > 0.7 of the energy
    ("subspace", AXES3, {"k": 0.8}, [2, -3, 0]),
    ("subspace", AXES3, {"basis": t([[1, 0, 0]])}, [2, 0, 0]),
    ("subspace", AXES3, {"basis": t([[0, -1, 0], [1, 0, 0]])}, [2, -3, 0]),  # sign of a basis row is irrelevant
]


@pytest.mark.parametrize(("name", "deltas", "params", "expected"), CASES)
def test_hand_computed_cases(name, deltas, params, expected):
    close(merge_deltas(name, deltas, **params), expected)


@pytest.mark.parametrize(("name", "deltas", "params", "expected"), CASES[:3])
def test_public_function_and_method_object_agree_with_merge_deltas(name, deltas, params, expected):
    public = {"mean": mean, "task_arithmetic": task_arithmetic}[name]
    close(public(deltas, **params), expected)
    close(MERGE_METHODS.get(name)(deltas, **params), expected)
    close(merge_deltas(public, deltas, **params), expected)


# ------------------------------------------------------------------------------------------- ties reference


def ties_reference(deltas: list[list[float]], density: float, lam: float) -> list[float]:
    """Plain-Python TIES following the documented rules, independent of the tensor code."""
    n = len(deltas[0])
    k = max(1, min(n, math.floor(density * n + 1e-9)))
    trimmed = []
    for d in deltas:
        order = sorted(range(n), key=lambda j: (-abs(d[j]), j))  # ties in magnitude: lowest index first
        kept = set(order[:k])
        trimmed.append([d[j] if j in kept else 0.0 for j in range(n)])
    out = []
    for j in range(n):
        total = sum(row[j] for row in trimmed)
        sign = (total > 0) - (total < 0)
        agree = [row[j] for row in trimmed if row[j] != 0 and ((row[j] > 0) - (row[j] < 0)) == sign]
        out.append(lam * sum(agree) / len(agree) if agree and sign != 0 else 0.0)
    return out


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(
        st.lists(st.sampled_from([-3.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0]), min_size=6, max_size=6),
        min_size=1,
        max_size=4,
    ),
    density=st.sampled_from([0.1, 0.2, 0.34, 0.5, 0.7, 1.0]),
    lam=st.sampled_from([1.0, 0.4, -2.0]),
)
def test_ties_matches_plain_python_reference_with_magnitude_ties(data, density, lam):
    close(ties([t(row) for row in data], density=density, lam=lam), ties_reference(data, density, lam))


@pytest.mark.parametrize("n_models", [1, 2, 5])
@pytest.mark.parametrize("density", [0.13, 0.29, 0.5, 1.0])
def test_ties_matches_plain_python_reference_on_random_matrices(n_models, density):
    deltas = [randn(4, 5, seed=10 * n_models + i) for i in range(n_models)]
    expected = ties_reference([d.reshape(-1).tolist() for d in deltas], density, 0.7)
    close(ties(deltas, density=density, lam=0.7), t(expected).reshape(4, 5))


# ------------------------------------------------------------------------------------------------ invariants


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("mean", {}),
        ("task_arithmetic", {}),
        ("ties", {"density": 1.0}),
        ("dare", {"p": 0.0}),
        ("dare_ties", {"p": 0.0}),
        ("knots", {"inner": "ties", "density": 1.0}),
        ("knots", {"inner": "task_arithmetic"}),
        ("knots", {"inner": "mean", "s_on_v": False}),
        ("tsv", {}),
        ("subspace", {}),
        ("subspace", {"elect": False}),
    ],
)
@pytest.mark.parametrize("shape", [(6,), (5, 3), (3, 5)])
def test_single_model_returns_its_delta(name, params, shape):
    delta = randn(*shape, seed=1)
    close(merge_deltas(name, [delta], **params), delta)


def test_ties_density_one_same_sign_is_mean_of_nonzero_entries():
    deltas = [randn(3, 4, seed=i).abs() + 0.1 for i in range(3)]  # strictly positive
    close(ties(deltas, density=1.0, lam=0.5), 0.5 * torch.stack(deltas).mean(0))
    negative = [-d for d in deltas]
    close(ties(negative, density=1.0), torch.stack(negative).mean(0))
    # zeros do not vote and are not counted: the disjoint mean divides by the number of nonzero entries
    close(ties([t([2.0, 4.0, 0.0]), t([0.0, 2.0, 0.0])], density=1.0), [2.0, 3.0, 0.0])


@pytest.mark.parametrize("lam", [1.0, 0.3, -0.5])
def test_dare_with_p_zero_is_task_arithmetic(lam):
    deltas = [randn(4, 6, seed=i) for i in range(3)]
    close(dare(deltas, p=0.0, lam=lam, seed=7), task_arithmetic(deltas, lam=lam))


def test_dare_ties_with_p_zero_is_ties_without_trim():
    deltas = [randn(4, 6, seed=i) for i in range(4)]
    close(dare_ties(deltas, p=0.0), ties(deltas, density=1.0))


@pytest.mark.parametrize("name", ["dare", "dare_ties"])
def test_dare_seed_is_deterministic(name):
    deltas = [randn(8, 8, seed=i) for i in range(3)]
    first = merge_deltas(name, deltas, p=0.5, seed=3)
    assert torch.equal(first, merge_deltas(name, deltas, p=0.5, seed=3))
    assert not torch.equal(first, merge_deltas(name, deltas, p=0.5, seed=4))
    assert torch.equal(first, merge_deltas(name, deltas, p="0.5", seed="3"))  # CLI strings, same result


def test_dare_keeps_survivors_rescaled_at_rate_one_minus_p():
    delta = randn(20_000, seed=0)
    out = dare([delta], p=0.75, seed=11)
    kept = out != 0
    close(out[kept], delta[kept] / 0.25)
    # Binomial(20000, 0.25): standard deviation ≈ 61, so ±400 is more than 6 sigma.
    assert abs(int(kept.sum()) - 5_000) < 400


def test_dare_is_unbiased_over_seeds():
    deltas = [randn(50, seed=1), randn(50, seed=2)]
    average = torch.stack([dare(deltas, p=0.5, seed=s) for s in range(400)]).mean(0)
    # Per entry the draw has variance Σ δ_i² · p / (1 - p) ≈ 2, so the mean of 400 has sd ≈ 0.07.
    torch.testing.assert_close(average, deltas[0] + deltas[1], atol=0.45, rtol=0)


def test_dare_ties_sign_filtered_sum_equals_dare_when_all_tasks_agree():
    deltas = [randn(6, 5, seed=i).abs() for i in range(3)]
    close(dare_ties(deltas, p=0.6, seed=5, normalize=False), dare(deltas, p=0.6, seed=5))


@pytest.mark.parametrize("s_on_v", [True, False])
@pytest.mark.parametrize(
    ("params", "scale"),
    [
        ({"inner": "ties", "density": 1.0}, 1.0),
        # A task of rank r_i fills r_i of the r = Σ r_i rows of its aligned block, so density max(r_i)/r keeps it.
        ({"inner": "ties", "density": "tight", "lam": 0.5}, 0.5),
        ({"inner": "task_arithmetic", "lam": 2.0}, 2.0),
        ({"inner": "mean"}, 1 / 3),
    ],
)
@pytest.mark.parametrize(("dims", "ranks"), [((8, 7), (2, 2, 1)), ((12, 3), (1, 1, 1))])  # wide, tall [δ_1 … δ_N]
def test_knots_on_orthogonal_low_rank_tasks_is_task_arithmetic(params, scale, s_on_v, dims, ranks):
    deltas = orthogonal_low_rank(*dims, ranks=ranks, seed=3)
    if params.get("density") == "tight":
        params = {**params, "density": max(ranks) / sum(ranks)}
    close(knots(deltas, s_on_v=s_on_v, **params), scale * sum(deltas))


@pytest.mark.parametrize("shape", [(6, 4), (3, 10), (20, 3)])
def test_knots_linear_inner_methods_are_exact_on_random_tasks(shape):
    deltas = [randn(*shape, seed=i) for i in range(3)]
    close(knots(deltas, inner="task_arithmetic", lam=0.4), 0.4 * sum(deltas))
    close(knots(deltas, inner="mean"), sum(deltas) / 3)
    close(knots(deltas, inner="mean", s_on_v=False), sum(deltas) / 3)


@pytest.mark.parametrize("inner", ["ties", "task_arithmetic", "mean"])
def test_knots_on_vectors_is_its_inner_method(inner):
    deltas = [randn(7, seed=i) for i in range(3)]
    plain = {
        "ties": ties(deltas, density=0.5, lam=0.3),
        "task_arithmetic": task_arithmetic(deltas, lam=0.3),
        "mean": 0.3 * mean(deltas),
    }[inner]
    close(knots(deltas, inner=inner, density=0.5, lam=0.3), plain)


@pytest.mark.parametrize("lam", [1.0, 0.5])
@pytest.mark.parametrize("dims", [(8, 7), (7, 9)])
def test_tsv_on_orthogonal_low_rank_tasks_is_task_arithmetic(lam, dims):
    # fraction 1/N = 1/3 keeps 2 triplets per task, enough for ranks (2, 2, 1)
    deltas = orthogonal_low_rank(*dims, seed=5)
    close(tsv(deltas, lam=lam), lam * sum(deltas))
    close(tsv(deltas, fraction=1.0, lam=lam), lam * sum(deltas))  # extra zero triplets must not tilt Procrustes


def test_tsv_identical_tasks_are_not_double_counted():
    delta = randn(5, 4, seed=2)
    close(tsv([delta, delta], fraction=1.0), delta)


def test_tsv_truncates_each_task_to_its_top_triplets():
    delta = randn(6, 6, seed=4)
    u, s, vh = torch.linalg.svd(delta)
    close(tsv([delta], fraction=0.5), u[:, :3] @ torch.diag(s[:3]) @ vh[:3])


def test_tsv_default_fraction_is_one_over_n():
    deltas = [randn(6, 6, seed=i) for i in range(3)]
    close(tsv(deltas), tsv(deltas, fraction=1 / 3))
    assert not torch.allclose(tsv(deltas), tsv(deltas, fraction=1.0))


def test_subspace_is_not_the_mean_on_random_tasks():
    deltas = [randn(6, 5, seed=20 + i) for i in range(5)]
    merged = subspace(deltas)
    assert (merged - mean(deltas)).abs().max() > 0.1
    # ...whereas without election and with every component it reproduces the mean exactly
    close(subspace(deltas, elect=False), mean(deltas))


def test_centered_coefficient_averaging_is_identically_the_mean():
    """The replication finding: a *centered* basis makes any coefficient average collapse to the plain mean."""
    x = np.stack([randn(30, seed=40 + i).numpy() for i in range(6)])  # (n_models, D)
    mu = x.mean(axis=0)
    centered = x - mu
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    basis = vt[:4]  # (k, D)
    coeffs = centered @ basis.T  # (n_models, k)
    np.testing.assert_allclose(coeffs.sum(axis=0), 0.0, atol=1e-12)  # they cancel for every component
    merged = mu + coeffs.mean(axis=0) @ basis
    np.testing.assert_allclose(merged, mu, atol=1e-13)
    # the uncentered method does change the result
    deltas = [torch.from_numpy(row) for row in x]
    assert (subspace(deltas, k=4) - torch.from_numpy(mu)).abs().max() > 0.1


def test_subspace_on_orthogonal_tasks_is_task_arithmetic():
    deltas = orthogonal_low_rank(seed=8)
    close(subspace(deltas, lam=0.5), 0.5 * sum(deltas))


def test_subspace_external_basis_equal_to_own_basis_gives_same_result():
    deltas = [randn(4, 5, seed=50 + i) for i in range(4)]
    x = torch.stack([d.reshape(-1) for d in deltas])
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    for k in (2, 4):
        close(subspace(deltas, basis=vh[:k]), subspace(deltas, k=k))
        close(subspace(deltas, basis=vh, k=k), subspace(deltas, k=k))
    close(subspace(deltas, basis=vh.to(torch.float32), elect=False), mean(deltas), atol=1e-5)


def test_subspace_k_is_capped_at_the_rank():
    deltas = [randn(3, 3, seed=1), randn(3, 3, seed=2)]
    close(subspace(deltas, k=50), subspace(deltas, k=2))


@pytest.mark.parametrize("name", ALL_METHODS)
def test_positive_scaling_and_sign_flip_commute_with_merging(name):
    deltas = [randn(5, 4, seed=60 + i) for i in range(n_for(name))]
    params = {"density": 0.5} if name in ("ties", "knots") else {"p": 0.5} if name.startswith("dare") else {}
    merged = merge_deltas(name, deltas, **params)
    close(merge_deltas(name, [3.0 * d for d in deltas], **params), 3.0 * merged)
    close(merge_deltas(name, [-d for d in deltas], **params), -merged)


@pytest.mark.parametrize("name", ORDER_FREE)
def test_order_of_tasks_does_not_matter(name):
    deltas = [randn(5, 4, seed=70 + i) for i in range(4)]
    params = {"density": 0.5} if name in ("ties", "knots") else {}
    close(merge_deltas(name, deltas[::-1], **params), merge_deltas(name, deltas, **params))


# --------------------------------------------------------------------------------------------- shapes, dtypes


@pytest.mark.parametrize("name", ALL_METHODS)
@pytest.mark.parametrize("shape", [(5,), (), (4, 3)])
def test_every_method_accepts_vectors_scalars_and_matrices(name, shape):
    deltas = [randn(*shape, seed=80 + i) for i in range(n_for(name))]
    out = merge_deltas(name, deltas)
    assert out.shape == torch.Size(shape)
    assert out.dtype == torch.float64
    assert bool(torch.isfinite(out).all())


@pytest.mark.parametrize("name", ALL_METHODS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_inputs_are_computed_in_float64(name, dtype):
    deltas = [randn(6, 4, seed=90 + i).to(dtype) for i in range(n_for(name))]
    out = merge_deltas(name, deltas)
    assert out.dtype == torch.float64
    close(out, merge_deltas(name, [d.to(torch.float64) for d in deltas]), atol=1e-12)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_empty_unit_gives_empty_result(name):
    out = merge_deltas(name, [torch.zeros(3, 0), torch.zeros(3, 0)])
    assert out.shape == (3, 0)
    assert out.dtype == torch.float64


@pytest.mark.parametrize("name", ALL_METHODS)
def test_all_zero_tasks_merge_to_zero(name):
    close(merge_deltas(name, [torch.zeros(4, 3), torch.zeros(4, 3)]), torch.zeros(4, 3))


# ---------------------------------------------------------------------------------------- parameter handling

# (method, {param: bad value}, constraint, what "Got ..." reports); the full message is
# "The '<param>' parameter of merge method '<method>' must be <constraint>. Got <got> instead."
BAD_PARAMS = [
    ("ties", {"density": 1.5}, "a float in (0, 1]", "1.5"),
    ("ties", {"density": "1.5"}, "a float in (0, 1]", "1.5"),  # CLI string: reported parsed
    ("ties", {"density": 0}, "a float in (0, 1]", "0"),
    ("ties", {"density": "abc"}, "a float in (0, 1]", "'abc'"),
    ("dare", {"p": 1.0}, "a float in [0, 1)", "1.0"),
    ("dare", {"seed": -1}, "an int in [0, inf)", "-1"),
    ("dare", {"seed": 1.5}, "an int in [0, inf)", "1.5"),
    ("dare_ties", {"normalize": 1}, "a bool", "1"),
    ("task_arithmetic", {"lam": math.nan}, "a float in (-inf, inf)", "nan"),
    ("task_arithmetic", {"lam": "inf"}, "a float in (-inf, inf)", "inf"),
    ("task_arithmetic", {"lam": True}, "a float in (-inf, inf)", "True"),
    ("knots", {"inner": "dare"}, "a str among {'mean', 'task_arithmetic', 'ties'}", "'dare'"),
    ("tsv", {"fraction": 0}, "a float in (0, 1] or None", "0"),
    ("subspace", {"k": 0}, "an int in [1, inf), a float in (0, 1) or None", "0"),
    ("subspace", {"k": "1.0"}, "an int in [1, inf), a float in (0, 1) or None", "1.0"),
    ("subspace", {"elect": "maybe"}, "a bool", "'maybe'"),
    ("subspace", {"basis": "a.wsz"}, "a torch.Tensor or None", "'a.wsz'"),
]


@pytest.mark.parametrize(("name", "params", "constraint", "got"), BAD_PARAMS)
def test_bad_parameter_values_raise_sklearn_style_messages(name, params, constraint, got):
    (param,) = params
    message = f"The '{param}' parameter of merge method '{name}' must be {constraint}. Got {got} instead."
    with pytest.raises(ParameterError, match=f"^{re.escape(message)}$"):
        merge_deltas(name, [t([1.0, 2.0]), t([3.0, 4.0])], **params)


def test_brief_example_message_verbatim():
    message = "The 'density' parameter of merge method 'ties' must be a float in (0, 1]. Got 1.5 instead."
    with pytest.raises(ParameterError) as info:
        MERGE_METHODS.get("ties").resolve_params({"density": 1.5})
    assert str(info.value) == message


def test_parameter_error_is_also_a_value_error():
    with pytest.raises(ValueError, match="density"):
        ties([t([1.0])], density=2.0)


def test_unknown_parameter_lists_the_valid_ones():
    message = "Unknown parameter 'dens' for merge method 'ties'. Valid parameters: 'density', 'lam'."
    with pytest.raises(ParameterError, match=f"^{re.escape(message)}$"):
        merge_deltas("ties", [t([1.0])], dens=0.5)
    with pytest.raises(ParameterError, match=re.escape("Valid parameters: none.")):
        mean([t([1.0])], lam=0.5)


def test_unknown_method_lists_the_valid_names():
    valid = ", ".join(repr(n) for n in ALL_METHODS)
    with pytest.raises(ParameterError, match=re.escape(f"Unknown merge method 'foo'. Valid choices: {valid}.")):
        merge_deltas("foo", [t([1.0])])


def test_resolve_params_coerces_cli_strings_and_fills_defaults():
    assert MERGE_METHODS.get("ties").resolve_params({"density": "0.3", "lam": "2"}) == {"density": 0.3, "lam": 2.0}
    resolved = MERGE_METHODS.get("dare").resolve_params({"seed": "42"})
    assert resolved == {"p": 0.9, "lam": 1.0, "seed": 42}
    assert isinstance(resolved["seed"], int)
    assert isinstance(MERGE_METHODS.get("task_arithmetic").resolve_params({"lam": 1})["lam"], float)
    sub = MERGE_METHODS.get("subspace")
    assert sub.resolve_params({"k": "4"})["k"] == 4
    assert isinstance(sub.resolve_params({"k": "4"})["k"], int)
    assert sub.resolve_params({"k": "0.9"})["k"] == 0.9
    assert sub.resolve_params({"k": "none", "elect": "false"}) == {
        "k": None,
        "lam": 1.0,
        "elect": False,
        "basis": None,
    }
    assert MERGE_METHODS.get("knots").resolve_params() == {
        "inner": "ties",
        "density": 0.2,
        "lam": 1.0,
        "s_on_v": True,
    }


def test_registry_metadata():
    assert MERGE_METHODS.names() == ALL_METHODS
    for name in ALL_METHODS:
        method = MERGE_METHODS.get(name)
        assert isinstance(method, MergeMethod)
        assert method.name == name
        assert method.reference_url.startswith("https://arxiv.org/abs/")
        assert method.doc
        assert method.doc == method.fn.__doc__.strip().splitlines()[0]
        for param in method.params.values():
            assert param.doc
            assert param.cli == (Kind((torch.Tensor,), "a torch.Tensor") not in param.rules)
    assert ties.merge_method is MERGE_METHODS.get("ties")


def test_decorator_rejects_declarations_that_drift_from_the_signature():
    def impl(deltas, *, b: float = 1.0):
        """Doc."""
        return deltas[0]

    with pytest.raises(TypeError, match="declared"):
        merge_method(
            "drifted",
            reference_url="https://example.org",
            params={"a": Param(Interval(float, None, None), default=1.0)},
        )(impl)
    with pytest.raises(TypeError, match="default"):
        merge_method(
            "drifted",
            reference_url="https://example.org",
            params={"b": Param(Interval(float, None, None), default=2.0)},
        )(impl)
    assert "drifted" not in MERGE_METHODS


def test_param_default_must_satisfy_its_constraint():
    with pytest.raises(ValueError, match="breaks its own constraint"):
        Param(Interval(float, 0, 1, closed="right"), default=2.0)


# ----------------------------------------------------------------------------------------------- input errors


def test_mismatched_shapes_name_the_index():
    with pytest.raises(ShapeMismatchError, match=re.escape("delta 2 has shape (3,) but delta 0 has shape (2,)")):
        merge_deltas("mean", [t([1.0, 2.0]), t([1.0, 2.0]), t([1.0, 2.0, 3.0])])
    with pytest.raises(ShapeMismatchError, match=re.escape("delta 1 has shape (2, 3)")):
        ties([torch.zeros(3, 2), torch.zeros(2, 3)])


@pytest.mark.parametrize("name", ["knots", "tsv"])
def test_matrix_methods_reject_more_than_two_dimensions(name):
    with pytest.raises(ShapeMismatchError, match="reshape to 2-D"):
        merge_deltas(name, [torch.ones(2, 2, 2), torch.ones(2, 2, 2)])


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_input_raises(bad):
    with pytest.raises(NonFiniteError, match="delta 1 contains NaN or infinity"):
        dare([t([1.0, 2.0]), t([1.0, bad])], p=0.5)


def test_non_finite_result_raises():
    huge = t([1e308])
    with pytest.raises(NonFiniteError, match="merge method 'task_arithmetic' produced NaN or infinity"):
        task_arithmetic([huge, huge])


def test_sequence_rules():
    with pytest.raises(ParameterError, match="at least one delta"):
        merge_deltas("mean", [])
    with pytest.raises(ParameterError, match="single tensor"):
        merge_deltas("mean", torch.zeros(2, 3))
    with pytest.raises(ParameterError, match=r"delta 1 is a list, not a torch\.Tensor"):
        merge_deltas("mean", [t([1.0]), [1.0]])
    with pytest.raises(ParameterError, match="must be floating point"):
        merge_deltas("mean", [torch.tensor([1, 2])])
    with pytest.raises(ParameterError, match="merge-method name or a callable"):
        merge_deltas(3, [t([1.0])])


def test_any_iterable_of_tensors_is_accepted():
    close(merge_deltas("mean", (t([1.0]), t([3.0]))), [2.0])
    close(merge_deltas("mean", (d for d in [t([1.0]), t([3.0])])), [2.0])


def test_plain_callable():
    def max_merge(deltas, scale=1.0):
        assert all(d.dtype == torch.float64 for d in deltas)
        return scale * torch.stack(deltas).amax(0)

    def first_entry(deltas):
        return deltas[0][:1]

    close(merge_deltas(max_merge, [t([1.0, -2.0]), t([3.0, -5.0]).half()], scale=2.0), [6.0, -4.0])
    with pytest.raises(ShapeMismatchError, match=re.escape("merge function 'first_entry' returned shape (1,)")):
        merge_deltas(first_entry, [t([1.0, 2.0])])
    with pytest.raises(NonFiniteError, match="produced NaN"):
        merge_deltas(lambda ds: ds[0] * math.nan, [t([1.0])])
    with pytest.raises(ParameterError, match=r"not a torch\.Tensor"):
        merge_deltas(lambda ds: 1.0, [t([1.0])])


def test_subspace_basis_checks():
    deltas = [randn(6, seed=1), randn(6, seed=2)]
    with pytest.raises(ShapeMismatchError, match=re.escape("expected (k, 6)")):
        subspace(deltas, basis=torch.eye(5))
    with pytest.raises(ParameterError, match="must be orthonormal"):
        subspace(deltas, basis=2.0 * torch.eye(6)[:2])
    with pytest.raises(ParameterError, match="must be an int or None when a basis is given"):
        subspace(deltas, basis=torch.eye(6)[:2], k=0.5)
    with pytest.raises(NonFiniteError, match="basis contains NaN"):
        subspace(deltas, basis=torch.full((1, 6), math.nan))


# ------------------------------------------------------------------- mergekit's formulas, written out in numpy
# Transcribed from mergekit 0.1.5 (mergekit/merge_methods/{linear,slerp,generalized_task_arithmetic}.py and
# sparsify.py), so weightspace's linear, slerp and weighted task arithmetic / TIES are checked against them.


def mk_linear(tensors: list[np.ndarray], weights: list[float], normalize: bool = True) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64).reshape((-1,) + (1,) * tensors[0].ndim)
    res = (w * np.stack(tensors)).sum(axis=0)
    return res / w.sum(axis=0) if normalize else res


def mk_slerp(t: float, v0: np.ndarray, v1: np.ndarray, dot_threshold: float = 0.9995, eps: float = 1e-8):
    def normalize(v):
        n = np.linalg.norm(v)
        return v / n if n > eps else v

    n0, n1 = normalize(v0.copy()), normalize(v1.copy())
    dot = np.sum(n0 * n1)
    if np.abs(dot) > dot_threshold:
        return (1 - t) * v0 + t * v1
    theta_0 = np.arccos(dot)
    sin_theta_0 = np.sin(theta_0)
    theta_t = theta_0 * t
    s0 = np.sin(theta_0 - theta_t) / sin_theta_0
    s1 = np.sin(theta_t) / sin_theta_0
    return s0 * v0 + s1 * v1


def mk_magnitude(tensor: np.ndarray, density: float) -> np.ndarray:
    k = int(density * tensor.size)
    w = np.abs(tensor).reshape(-1)
    mask = np.zeros_like(w)
    mask[np.argsort(-w, kind="stable")[:k]] = 1
    return tensor * mask.reshape(tensor.shape)


def mk_gta(deltas, weights, *, densities=None, consensus: bool, normalize: bool, lam: float = 1.0):
    """mergekit's GeneralizedTaskArithmeticMerge on task vectors (magnitude sparsification, 'sum' consensus)."""
    dens = densities if densities is not None else [None] * len(deltas)
    tvs = [d if x is None else mk_magnitude(d, x) for d, x in zip(deltas, dens, strict=True)]
    d = np.stack(tvs)
    w = np.asarray(weights, dtype=np.float64).reshape((-1,) + (1,) * deltas[0].ndim)
    weighted = d * w
    if consensus:
        sign = np.where(weighted.sum(axis=0) >= 0, 1.0, -1.0)
        mask = np.sign(weighted) == sign
        mixed = (weighted * mask).sum(axis=0)
        divisor = (w * mask).sum(axis=0)
        divisor[divisor == 0] = 1
    else:
        mixed = weighted.sum(axis=0)
        divisor = w.sum(axis=0)
        divisor[np.abs(divisor) < 1e-8] = 1
    if normalize:
        mixed = mixed / divisor
    return lam * mixed


def _np(ts: list[torch.Tensor]) -> list[np.ndarray]:
    return [x.numpy() for x in ts]


@pytest.mark.parametrize("normalize", [True, False])
def test_linear_is_mergekits_weighted_average(normalize):
    ts = [randn(6, 5, seed=200 + i) for i in range(3)]
    w = [0.5, 2.0, 1.5]
    close(linear(ts, weights=w, normalize=normalize), t(mk_linear(_np(ts), w, normalize)))
    close(linear(ts), mean(ts))


def test_linear_with_a_base_equals_mergekits_linear_of_full_weights():
    base = randn(4, 3, seed=210)
    full = [randn(4, 3, seed=211 + i) for i in range(3)]
    w = [0.2, 0.3, 0.5]
    merged_full = base + linear([f - base for f in full], weights=w)
    close(merged_full, t(mk_linear(_np(full), w)))


def test_linear_refuses_weights_that_sum_to_zero():
    with pytest.raises(ParameterError, match="sum is not 0"):
        linear([randn(3, seed=1), randn(3, seed=2)], weights=[1.0, -1.0])


@pytest.mark.parametrize("tt", [0.0, 0.25, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("shape", [(7,), (4, 6)])
def test_slerp_is_mergekits_slerp(tt, shape):
    v0, v1 = randn(*shape, seed=220), randn(*shape, seed=221)
    close(slerp([v0, v1], t=tt), t(mk_slerp(tt, v0.numpy(), v1.numpy())))


def test_slerp_falls_back_to_lerp_for_nearly_colinear_tensors_and_keeps_norms_on_the_arc():
    v0 = randn(10, seed=230)
    v1 = 2.0 * v0 + 1e-6 * randn(10, seed=231)
    close(slerp([v0, v1], t=0.3), 0.7 * v0 + 0.3 * v1)
    a, b = t([3.0, 0.0]), t([0.0, 3.0])
    mid = slerp([a, b], t=0.5)
    assert abs(float(torch.linalg.vector_norm(mid)) - 3.0) < 1e-12  # on the arc, not the chord (3/√2·√2)


def test_slerp_merges_exactly_two_models():
    with pytest.raises(ParameterError, match="exactly 2 models"):
        slerp([randn(3, seed=i) for i in range(3)])


def test_weighted_task_arithmetic_is_mergekits():
    ds = [randn(5, 4, seed=240 + i) for i in range(3)]
    w = [0.3, 1.0, 0.6]
    close(
        task_arithmetic(ds, weights=w, lam=0.7), t(mk_gta(_np(ds), w, consensus=False, normalize=False, lam=0.7))
    )


@pytest.mark.parametrize("weights", [[1.0, 1.0, 1.0], [0.5, 1.0, 2.0]])
def test_weighted_ties_is_mergekits_ties(weights):
    # Continuous random entries: no magnitude ties and no exact sign-election cancellations.
    ds = [randn(6, 5, seed=250 + i) for i in range(3)]
    dens = [0.4, 0.4, 0.4]
    expected = mk_gta(_np(ds), weights, densities=dens, consensus=True, normalize=True)
    close(ties(ds, weights=weights, density=0.4), t(expected))


def test_ties_takes_a_density_per_model():
    ds = [randn(6, 5, seed=260 + i) for i in range(3)]
    dens = [0.2, 0.5, 1.0]
    w = [1.0, 2.0, 0.5]
    expected = mk_gta(_np(ds), w, densities=dens, consensus=True, normalize=True)
    close(ties(ds, weights=w, density=dens), t(expected))
    with pytest.raises(ParameterError, match="2 per-model values for 3 models"):
        ties(ds, density=[0.2, 0.5])


def test_dare_takes_weights_and_a_drop_rate_per_model():
    ds = [randn(30, seed=270 + i) for i in range(2)]
    # p = 0 for both: no drop, so weighted DARE is weighted task arithmetic
    close(dare(ds, weights=[2.0, 0.5], p=[0.0, 0.0]), task_arithmetic(ds, weights=[2.0, 0.5]))
    got = dare(ds, p=[0.0, 0.5], seed=3)
    kept = got - ds[0]  # model 0 undropped; model 1 entries are 0 or doubled
    assert bool(((kept.abs() < 1e-12) | ((kept - 2 * ds[1]).abs() < 1e-12)).all())


def test_methods_without_weights_refuse_unequal_weights_and_accept_ones():
    ds = [randn(4, 3, seed=280 + i) for i in range(2)]
    close(merge_deltas("tsv", ds, weights=[1.0, 1.0]), tsv(ds))
    with pytest.raises(ParameterError, match=r"takes no per-model weights .*linear"):
        merge_deltas("tsv", ds, weights=[1.0, 2.0])
    with pytest.raises(ParameterError, match=r"2 entries for 3 models"):
        merge_deltas("linear", [*ds, ds[0]], weights=[1.0, 2.0])


def test_registry_declares_weights_base_free_and_model_counts():
    weighted = sorted(n for n in MERGE_METHODS.names() if MERGE_METHODS.get(n).weighted)
    assert weighted == ["dare", "dare_ties", "linear", "task_arithmetic", "ties"]
    assert sorted(n for n in MERGE_METHODS.names() if MERGE_METHODS.get(n).base_free) == ["linear", "slerp"]
    assert MERGE_METHODS.get("slerp").n_models == 2
