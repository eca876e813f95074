"""compress, SharedSubspace.fit, project, the subspace merge and adapt.inject see the same fitted object: same k,
same basis, same coefficients (to 1e-10)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from helpers import write_models
from weightspace.adapt import SubspaceAdapterConfig, inject
from weightspace.collection import Collection
from weightspace.compress import compress, project
from weightspace.decompose import SharedSubspace
from weightspace.io import save_safetensors
from weightspace.merge import merge, subspace_fit

TOL = 1e-10


def _zoo(root: Path, n: int = 7) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(11)
    base = {
        "fc.weight": torch.randn(6, 8, generator=g, dtype=torch.float64),
        "fc.bias": torch.zeros(6, dtype=torch.float64),
    }
    span = torch.randn(3, 48, generator=g, dtype=torch.float64)
    models = []
    for _ in range(n):
        c = torch.randn(3, generator=g, dtype=torch.float64)
        w = (
            base["fc.weight"]
            + (c @ span).reshape(6, 8)
            + 1e-3 * torch.randn(6, 8, generator=g, dtype=torch.float64)
        )
        models.append({"fc.weight": w, "fc.bias": torch.randn(6, generator=g, dtype=torch.float64)})
    write_models(root / "m", models)
    save_safetensors(root / "base.safetensors", base)
    return models, base


def test_every_entry_point_sees_one_fit(tmp_path: Path) -> None:
    models, base = _zoo(tmp_path)
    coll = Collection.from_paths([str(tmp_path / "m")], base=tmp_path / "base.safetensors")
    params = {"n_components": 3, "storage_dtype": "float64"}
    compress(coll, tmp_path / "a.wsz", **params)
    loaded = SharedSubspace.load(tmp_path / "a.wsz")
    fitted = SharedSubspace(**params).fit(coll)
    assert loaded.n_components_ == fitted.n_components_ == {"fc.weight": 3, "fc.bias": 3}
    for key in ("fc.weight", "fc.bias"):
        torch.testing.assert_close(loaded.basis_[key], fitted.basis_[key], rtol=0, atol=TOL)
        torch.testing.assert_close(loaded.coefficients_[key], fitted.coefficients_[key], rtol=0, atol=TOL)
        torch.testing.assert_close(loaded.mean_[key], fitted.mean_[key], rtol=0, atol=TOL)

    # project: an in-sample model's coefficients are its stored coefficients.
    res = project(tmp_path / "a.wsz", [str(tmp_path / "m" / "m2.safetensors")])
    for key in ("fc.weight", "fc.bias"):
        torch.testing.assert_close(res.models[0].coefficients[key], fitted.coefficients_[key][2], rtol=0, atol=TOL)
    # transform on the in-memory task vectors agrees too.
    deltas = {k: models[2][k] - base[k] for k in base}
    coef = fitted.transform(deltas)
    torch.testing.assert_close(coef["fc.weight"], fitted.coefficients_["fc.weight"][2], rtol=0, atol=TOL)

    # adapt: the frozen basis and the mean-init coefficients come from the same fit.
    net = nn.Module()
    net.fc = nn.Linear(8, 6).double()
    with torch.no_grad():
        net.fc.weight.copy_(base["fc.weight"])
        net.fc.bias.copy_(base["fc.bias"])
    for subspace in (loaded, fitted):
        adapted = inject(_copy(net), SubspaceAdapterConfig(None, init="mean"), subspace=subspace)
        torch.testing.assert_close(adapted.fc.weight_basis, fitted.basis_["fc.weight"], rtol=0, atol=TOL)
        torch.testing.assert_close(
            adapted.fc.weight_coef.detach(), fitted.coefficients_["fc.weight"].mean(0), rtol=0, atol=TOL
        )


def _copy(net: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(net)


def test_subspace_merge_uses_the_shared_subspace(tmp_path: Path) -> None:
    models, base = _zoo(tmp_path)
    paths = sorted(str(p) for p in (tmp_path / "m").glob("*.safetensors"))
    deltas = [{k: m[k] - base[k] for k in base} for m in models]
    # The merge's own basis is SharedSubspace's uncentered unit fit: same rank rule, basis and coefficients.
    ss = SharedSubspace(n_components=3, center=False).fit(deltas)
    for key in base:
        own = subspace_fit([d[key] for d in deltas], 3)
        assert own.k == ss.n_components_[key]
        torch.testing.assert_close(own.basis(), ss.basis_[key], rtol=0, atol=TOL)
        torch.testing.assert_close(own.coefficients, ss.coefficients_[key], rtol=0, atol=TOL)
    # Handing that fit to merge gives the same merge as letting the method fit it.
    coll = Collection.from_paths(paths, base=tmp_path / "base.safetensors")
    given = merge(coll, method="subspace", subspace=ss)
    fitted = merge(paths, base=tmp_path / "base.safetensors", method="subspace", params={"k": 3})
    for key in base:
        torch.testing.assert_close(given.tensors[key].double(), fitted.tensors[key].double(), rtol=0, atol=1e-6)
