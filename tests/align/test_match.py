"""Weight matching and scale canonicalisation: recovery of permuted copies, function preservation, determinism."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from align._nets import cnn1d, cnn2d, mlp, outputs, shuffled, state, write_copies
from weightspace.align import (
    AlignedSource,
    AlignOptions,
    align,
    align_collection,
    derive_sequential,
    match_permutations,
    resolve_spec,
)
from weightspace.analyze import analyze
from weightspace.collection import Collection
from weightspace.io import open_source, save_safetensors
from weightspace.zoo import read_checkpoint


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


@pytest.fixture(scope="module")
def trained_mlp() -> dict[str, torch.Tensor]:
    """A small ReLU MLP trained for a few steps (units no longer exchangeable)."""
    net = mlp(0, widths=(10, 32, 24, 5))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 10, generator=g), torch.randint(0, 5, (256,), generator=g)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(30):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return state(net)


@pytest.mark.parametrize(
    ("rescale", "dtype"),
    [(False, torch.float32), (True, torch.float64), (True, torch.float32)],
    ids=["permuted", "permuted+rescaled", "permuted+rescaled-float32"],
)
def test_permuted_copies_are_recovered_and_analyze_finds_rank_zero(
    tmp_path: Path, trained_mlp: dict[str, torch.Tensor], rescale: bool, dtype: torch.dtype
) -> None:
    paths = write_copies(tmp_path / "copies", trained_mlp, 8, seed=3, rescale=rescale, dtype=dtype)
    symmetries = ("permutation", "scale") if rescale else ("permutation",)
    res = align(paths, out=tmp_path / "aligned", reference="copy0", symmetries=symmetries)
    ref, _ = read_checkpoint(res.models[0].output)
    if not rescale:
        assert all(torch.equal(ref[k], v) for k, v in trained_mlp.items())
    for m in res.models:
        got, _ = read_checkpoint(m.output)
        for k in trained_mlp:
            assert got[k].dtype == dtype
            assert _rel_err(got[k], ref[k]) <= 1e-6, (m.name, k)
        assert m.distance_after <= 1e-5 * max(m.distance_before, 1.0)
    assert all(m.distance_before > 0 for m in res.models[1:])
    rep = analyze(Collection.from_paths([Path(m.output) for m in res.models]), n_null=1)
    # Rescaled float32 copies were rounded when they were written, so their canonical forms differ in the last
    # float32 bit (≈1e-7 relative), which analyze rightly does not call zero; in float64 they are identical.
    exact = not rescale or dtype == torch.float64
    for u in rep.units:
        sv = u["spectrum"]["singular_values"]
        if exact:
            assert u["zero_spread"], u["name"]
            assert max(sv, default=0.0) == 0.0, u["name"]
        else:
            assert u["spread_sq_norm"] ** 0.5 <= 1e-6 * u["mean_sq_norm"] ** 0.5, u["name"]
    # On the fly: analyze(align=...) of the shuffled copies gives the same spectra.
    on_the_fly = analyze(
        Collection.from_paths(paths), n_null=1, align=AlignOptions(reference="copy0", symmetries=symmetries)
    )
    assert [u["zero_spread"] for u in on_the_fly.units] == [u["zero_spread"] for u in rep.units]
    assert on_the_fly.data["alignment"]["reference"] == "copy0"


NETS: dict[str, tuple[Callable[[int], nn.Module], tuple[int, ...]]] = {
    "mlp": (lambda s: mlp(s), (16, 10)),
    "cnn1d": (cnn1d, (16, 1, 12)),
    "cnn2d": (lambda s: cnn2d(s), (16, 2, 5, 5)),
    "cnn2d-batchnorm": (lambda s: cnn2d(s, norm=True), (16, 2, 5, 5)),
}


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("to", ["reference", "mean"])
def test_alignment_never_changes_the_function(tmp_path: Path, name: str, to: str) -> None:
    make, shape = NETS[name]
    sds = [state(make(s)) for s in range(4)]
    for i, sd in enumerate(sds):
        save_safetensors(tmp_path / f"n{i}.safetensors", sd)
    symmetries = ("permutation",) if "batchnorm" in name else ("permutation", "scale")
    res = align(sorted(tmp_path.glob("n*.safetensors")), out=tmp_path / "out", to=to, symmetries=symmetries)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(9))
    moved = 0
    for sd, m in zip(sds, res.models, strict=True):
        got, _ = read_checkpoint(m.output)
        assert set(got) == set(sd)
        moved += m.moved_units
        torch.testing.assert_close(outputs(make, got, x), outputs(make, sd, x), rtol=1e-5, atol=1e-5)
    assert moved > 0  # independent inits: alignment did permute something
    assert sum(m.distance_after for m in res.models) < sum(m.distance_before for m in res.models)


def test_zoo_vit_function_is_unchanged(tmp_path: Path) -> None:
    from weightspace.zoo._vit import DigitsViT

    sds = []
    for s in range(3):
        torch.manual_seed(s)
        sds.append(state(DigitsViT(10)))
        save_safetensors(tmp_path / f"v{s}.safetensors", sds[-1])
    res = align(sorted(tmp_path.glob("v*.safetensors")), out=tmp_path / "out", spec="vit:heads=4")
    assert "blocks.1.heads" in res.groups
    assert res.groups["residual"] == 32
    x = torch.rand(8, 8, 8, generator=torch.Generator().manual_seed(0))
    for sd, m in zip(sds, res.models, strict=True):
        got, _ = read_checkpoint(m.output)
        torch.testing.assert_close(
            outputs(lambda _s: DigitsViT(10), got, x),
            outputs(lambda _s: DigitsViT(10), sd, x),
            rtol=1e-5,
            atol=1e-5,
        )
    assert sum(m.moved_units for m in res.models) > 0


def test_bert_function_is_unchanged(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=24,
        max_position_embeddings=20,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    models = []
    for s in range(3):
        torch.manual_seed(s)
        model = transformers.BertModel(cfg).eval()
        model.save_pretrained(tmp_path / f"bert{s}", safe_serialization=True)
        models.append(model)
    paths = [tmp_path / f"bert{s}" for s in range(3)]
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    # Default: heads and feed-forward units; the encoder's outputs keep their basis.
    res = align(paths, out=tmp_path / "out", exclude=["*position_ids"])
    assert res.groups["encoder.layer.0.heads"] == 4  # from config.json
    assert "residual" not in res.groups
    for model, m in zip(models, res.models, strict=True):
        aligned = transformers.BertModel.from_pretrained(m.output).eval()
        with torch.no_grad():
            want, got = model(ids), aligned(ids)
        torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state, rtol=1e-5, atol=1e-5)
        config = Path(m.path) / "config.json"
        assert (Path(m.output) / "config.json").read_text() == config.read_text()
    # With the residual stream: the pooler output is unchanged, the hidden states are permuted by it.
    res = align(paths, out=tmp_path / "out-res", spec="bert:residual=true", exclude=["*position_ids"])
    for model, m in zip(models, res.models, strict=True):
        aligned = transformers.BertModel.from_pretrained(m.output).eval()
        with torch.no_grad():
            want, got = model(ids), aligned(ids)
        torch.testing.assert_close(got.pooler_output, want.pooler_output, rtol=1e-5, atol=1e-5)
        perm = torch.tensor(m.permutations["residual"])
        torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state[..., perm], rtol=1e-5, atol=1e-5)


def test_same_seed_same_result_and_the_seed_is_used(tmp_path: Path) -> None:
    for i in range(5):
        save_safetensors(tmp_path / f"m{i}.safetensors", state(mlp(10 + i)))
    runs = [align([tmp_path], seed=s, to="mean") for s in (0, 0, 7)]
    assert [m.permutations for m in runs[0].models] == [m.permutations for m in runs[1].models]
    assert runs[0].to_dict()["models"] == runs[1].to_dict()["models"]
    assert runs[0].reference == runs[2].reference  # the medoid does not depend on the seed


def test_matching_to_a_target_missing_keys_scores_only_shared_ones() -> None:
    sd = {k: v.double() for k, v in state(mlp(0)).items()}
    spec = derive_sequential({k: tuple(v.shape) for k, v in sd.items()})
    g = torch.Generator().manual_seed(1)
    shuf = {k: v.double() for k, v in shuffled(sd, spec, g).items()}
    target = {k: v for k, v in sd.items() if k != "4.weight"}  # e.g. a per-model head
    perms, sweeps = match_permutations(target, shuf, spec, spec.sizes({k: tuple(v.shape) for k, v in sd.items()}))
    assert sweeps >= 1
    back = {k: v for k, v in shuf.items()}
    from weightspace.align import Transform, transform_state

    back = transform_state(shuf, spec, Transform(perms))
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_aligned_source_reads_row_chunks_like_the_whole_tensor(tmp_path: Path) -> None:
    sd = state(cnn1d(0))
    spec = derive_sequential({k: tuple(v.shape) for k, v in sd.items()})
    g = torch.Generator().manual_seed(2)
    perms = {
        gr.name: torch.randperm(n, generator=g)
        for gr, n in zip(spec.groups, spec.sizes({k: tuple(v.shape) for k, v in sd.items()}).values(), strict=True)
    }
    scales = {
        gr.name: torch.rand(len(perms[gr.name]), generator=g, dtype=torch.float64) + 0.5 for gr in spec.groups
    }
    save_safetensors(tmp_path / "c.safetensors", sd)
    from weightspace.align import Transform

    src = AlignedSource(open_source(tmp_path / "c.safetensors"), spec, Transform(perms, scales))
    for key, entry in src.entries.items():
        whole = src.read(key).reshape(entry.shape[0], -1)
        for r0, r1 in ((0, 1), (1, 4), (2, entry.shape[0])):
            if r1 <= entry.shape[0]:
                torch.testing.assert_close(src.read(key, (r0, r1)), whole[r0:r1], rtol=0, atol=1e-6)


def test_task_vectors_are_aligned_to_their_base(tmp_path: Path) -> None:
    base = state(mlp(0))
    spec = derive_sequential({k: tuple(v.shape) for k, v in base.items()})
    g = torch.Generator().manual_seed(5)
    save_safetensors(tmp_path / "base.safetensors", base)
    tuned = []
    for i in range(4):
        ft = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in base.items()}
        tuned.append(ft)
        save_safetensors(tmp_path / f"ft{i}.safetensors", shuffled(ft, spec, g))
    coll = Collection.from_paths(sorted(tmp_path.glob("ft*.safetensors")), base=tmp_path / "base.safetensors")
    aligned, res = align_collection(coll)
    assert res.reference == "<base>"
    for i, ft in enumerate(tuned):
        for k in ft:
            torch.testing.assert_close(aligned.sources[i].read(k), ft[k], rtol=0, atol=0)
    assert aligned.base is coll.base
    with pytest.raises(Exception, match="the base is the reference"):
        align_collection(coll, AlignOptions(to="mean"))


def test_spec_detection_for_the_sequential_default() -> None:
    spec = resolve_spec(None, {k: tuple(v.shape) for k, v in state(mlp(0)).items()})
    assert spec.origin == "derived: sequential chain"


def test_align_is_a_callable_subpackage_of_the_top_level(tmp_path: Path) -> None:
    import weightspace

    for i in range(3):
        save_safetensors(tmp_path / f"m{i}.safetensors", state(mlp(70 + i)))
    res = weightspace.align([tmp_path], reference="m0")
    assert res.reference == "m0"
    assert weightspace.align.align_collection is align_collection
    assert "align" in weightspace.__all__
