"""SharedSubspace: sklearn contract, class/function agreement, partial_fit == fit, HOSVD invariants."""

from __future__ import annotations

import pytest
import torch

from weightspace.collection import Collection
from weightspace.decompose import SharedSubspace, hosvd, pca_basis
from weightspace.errors import NotFittedError, ParameterError, ShapeMismatchError


def _models(n: int = 6, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"w": torch.randn(5, 7, generator=g), "b": torch.randn(5, generator=g)} for _ in range(n)]


def test_init_stores_params_only() -> None:
    ss = SharedSubspace(n_components=3, method="hosvd", center=False)
    assert ss.get_params()["n_components"] == 3
    assert not hasattr(ss, "basis_")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"n_components": 0},
            r"The 'n_components' parameter of SharedSubspace must be an int >= 1 or a float in \(0, 1\)\. Got 0 instead\.",
        ),
        ({"n_components": 1.5}, "Got 1.5 instead"),
        (
            {"method": "svd"},
            r"The 'method' parameter of SharedSubspace must be one of 'auto', 'hosvd', 'lora-hosvd', 'pca'\. "
            r"Got 'svd' instead\.",
        ),
        ({"center": 1}, "must be a bool"),
        ({"svd_solver": "arpack"}, "'svd_solver'"),
    ],
)
def test_parameter_validation_messages(kwargs: dict, match: str) -> None:
    with pytest.raises(ParameterError, match=match):
        SharedSubspace(**kwargs).fit(_models())


def test_not_fitted_error_uses_sklearn_wording() -> None:
    with pytest.raises(NotFittedError, match=r"This SharedSubspace instance is not fitted yet\. Call 'fit'"):
        SharedSubspace().transform(_models()[0])


def test_class_wrapper_passes_arguments_to_functional_core() -> None:
    models = _models()
    ss = SharedSubspace(n_components=3, center=False, svd_solver="tsqr").fit(models)
    fit = pca_basis([m["w"] for m in models], 3, center=False, svd_solver="tsqr")
    torch.testing.assert_close(ss.basis_["w"], fit.basis)
    torch.testing.assert_close(ss.coefficients_["w"], fit.coefficients)
    torch.testing.assert_close(ss.singular_values_["w"], fit.singular_values)
    hs = SharedSubspace(n_components=(2, 3), method="hosvd", modes=(1, 2)).fit(models)
    hf = hosvd([m["w"] for m in models], (2, 3))
    torch.testing.assert_close(hs.factors_["w"][0], hf.u)
    torch.testing.assert_close(hs.coefficients_["w"], hf.cores)
    assert hs.method_["b"] == "pca"  # vectors fall back to PCA


def test_transform_inverse_transform_round_trip_at_full_rank() -> None:
    models = _models(5)
    ss = SharedSubspace(n_components=4).fit(models)
    for m in models:
        back = ss.inverse_transform(ss.transform(m))
        for k in m:
            torch.testing.assert_close(back[k], m[k].double(), rtol=1e-10, atol=1e-10)


def test_partial_fit_over_all_models_matches_fit() -> None:
    models = _models(7, seed=3)
    full = SharedSubspace(n_components=4).fit(models)
    inc = SharedSubspace(n_components=4)
    inc.partial_fit(models[:2])
    for m in models[2:5]:
        inc.partial_fit(m)
    inc.partial_fit(models[5:])
    for k in ("w", "b"):
        torch.testing.assert_close(inc.singular_values_[k], full.singular_values_[k], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(inc.basis_[k], full.basis_[k], rtol=0, atol=1e-10)
        torch.testing.assert_close(inc.coefficients_[k], full.coefficients_[k], rtol=0, atol=1e-10)
        torch.testing.assert_close(inc.mean_[k], full.mean_[k])


def test_hosvd_full_ranks_reconstruct_and_storage_is_tucker() -> None:
    models = _models(4)
    hs = SharedSubspace(n_components=(5, 7), method="hosvd").fit(models)
    for i, m in enumerate(models):
        torch.testing.assert_close(hs.reconstruct(i)["w"], m["w"].double(), rtol=1e-10, atol=1e-10)
    u, v = hs.factors_["w"]
    assert u.shape == (5, 5)
    assert v.shape == (7, 7)
    assert hs.coefficients_["w"].shape == (4, 5, 7)


def test_hosvd_order_one_keeps_mode_two_whole() -> None:
    fit = hosvd([m["w"] for m in _models(6)], 2, modes=(1,))
    assert fit.k1 == 2
    assert fit.k2 == 7
    assert torch.equal(fit.v, torch.eye(7, dtype=torch.float64))


def test_fit_on_collection(model_dir) -> None:
    coll = Collection.from_paths([str(model_dir)])
    ss = SharedSubspace(n_components=0.9).fit(coll)
    assert ss.layer_keys_ == ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]
    assert ss.model_names_ == [f"m{i}" for i in range(8)]
    assert all(ss.explained_variance_ratio_[k][: ss.n_components_[k]].sum() >= 0.9 for k in ss.layer_keys_)


def test_transform_checks_shapes() -> None:
    ss = SharedSubspace(n_components=2).fit(_models())
    with pytest.raises(ShapeMismatchError, match="tensor 'w'"):
        ss.transform({"w": torch.zeros(3, 3), "b": torch.zeros(5)})
