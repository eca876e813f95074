"""``method="hosvd"``: mode spectra vs a Wishart null, K-fold held-out errors equal to refitting HOSVD."""

from __future__ import annotations

from pathlib import Path

import torch

from weightspace.analyze import analyze, analyze_unit
from weightspace.collection import Collection
from weightspace.decompose import hosvd


def _tucker_planted(n: int = 10, rows: int = 12, cols: int = 9, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(rows, 2, generator=g, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(cols, 2, generator=g, dtype=torch.float64)).Q
    mu = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    return [
        mu
        + 4 * u @ torch.randn(2, 2, generator=g, dtype=torch.float64) @ v.T
        + 0.01 * torch.randn(rows, cols, generator=g, dtype=torch.float64)
        for _ in range(n)
    ]


def test_hosvd_reports_mode_spectra_and_verdicts() -> None:
    rec = analyze_unit(_tucker_planted(), method="hosvd", n_null=3)
    assert rec["method"] == "hosvd"
    assert rec["verdict"] == "shared-subspace"
    m1, m2 = rec["modes"]["1"], rec["modes"]["2"]
    assert (m1["dim"], m2["dim"]) == (12, 9)
    assert m1["k90"] <= 2 < m1["null_k90"]
    assert m2["k90"] <= 2 < m2["null_k90"]
    assert len(m1["spectrum"]["evr"]) == 12
    assert len(m1["spectrum"]["null_evr"]) == 12
    assert rec["evr"] == m1["evr"]
    assert rec["stability"]["overlap"][rec["stability"]["k"].index(2)] > 0.99
    g = torch.Generator().manual_seed(1)
    noise = analyze_unit([torch.randn(12, 9, generator=g) for _ in range(10)], method="hosvd", n_null=3)
    assert noise["verdict"] == "null-like"


def test_hosvd_heldout_matches_refitting() -> None:
    ws = _tucker_planted(n=6, seed=2)
    ws = [
        w + 0.5 * torch.randn(w.shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
        for i, w in enumerate(ws)
    ]
    rec = analyze_unit(ws, method="hosvd", n_null=1, ks=[1, 2, 4])  # 6 models: leave-one-out
    ks = rec["loo"]["k"]
    mo, mb, bo = [], [[] for _ in ks], [[] for _ in ks]
    for h in range(6):
        train = [w for i, w in enumerate(ws) if i != h]
        x = ws[h]
        for j, k in enumerate(ks):
            fit = hosvd(train, (k, k))
            z = x - fit.mean
            mb[j].append(float((z - fit.u @ fit.u.T @ z @ fit.v @ fit.v.T).norm() / x.norm()))
            bo[j].append(float((x - fit.u @ fit.u.T @ x @ fit.v @ fit.v.T).norm() / x.norm()))
            if j == 0:
                mo.append(float(z.norm() / x.norm()))
    assert abs(rec["loo"]["mean_only"] - sum(mo) / 6) < 1e-10
    for j in range(len(ks)):
        assert abs(rec["loo"]["mean_plus_basis"][j] - sum(mb[j]) / 6) < 1e-10
        assert abs(rec["loo"]["basis_only"][j] - sum(bo[j]) / 6) < 1e-10
    # the mean-only control does not depend on the method
    assert abs(analyze_unit(ws, n_null=1)["loo"]["mean_only"] - rec["loo"]["mean_only"]) < 1e-10


def test_hosvd_collection_kfold(tmp_path: Path) -> None:
    from analyze._builders import write_state_dicts

    g = torch.Generator().manual_seed(3)
    write_state_dicts(
        tmp_path,
        {
            "l.0.w": [t.float() for t in _tucker_planted(n=12)],
            "l.0.b": [torch.randn(5, generator=g) for _ in range(12)],
        },
    )
    rep = analyze(Collection.from_paths([tmp_path]), method="hosvd", n_null=2)
    assert rep.data["folds"]["scheme"] == "10-fold"
    by = {u["name"]: u for u in rep.units}
    assert by["l.0.w"]["method"] == "hosvd"
    assert by["l.0.w"]["verdict"] == "shared-subspace"
    assert by["l.0.b"]["method"] == "pca"  # vectors fall back to PCA
    assert rep.data["folds"]["n_folds"] == 10
    assert sum(len(f) for f in rep.data["folds"]["held_out"]) == 12
