"""The align command, --align on analyze/compress, reconstruct --aligned: exit codes, messages, outputs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from align._nets import mlp, state
from helpers import write_adapter
from weightspace.cli import main
from weightspace.io import open_source, save_safetensors
from weightspace.zoo import read_checkpoint


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


@pytest.fixture
def models(tmp_path: Path) -> Path:
    d = tmp_path / "models"
    d.mkdir()
    for i in range(4):
        save_safetensors(d / f"m{i}.safetensors", state(mlp(40 + i)))
    return d


def test_align_writes_models_report_and_a_reusable_spec(
    tmp_path: Path, models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        ["align", models, "-o", tmp_path / "out", "--to", "mean", "--seed", "3", "--json"], capsys
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["to"] == "mean"
    assert data["seed"] == 3
    assert len(data["models"]) == 4
    assert data["mean_distance_after"] < data["mean_distance_before"]
    assert "permutation spec (derived: sequential chain)" in err
    assert "distance to the mean" in err
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == [
        "alignment.json",
        "m0.safetensors",
        "m1.safetensors",
        "m2.safetensors",
        "m3.safetensors",
        "spec.json",
    ]
    assert json.loads((tmp_path / "out" / "alignment.json").read_text())["models"] == data["models"]
    code, out2, err = run(
        [
            "align",
            models,
            "-o",
            tmp_path / "again",
            "--to",
            "mean",
            "--seed",
            "3",
            "--json",
            "--spec",
            tmp_path / "out" / "spec.json",
        ],
        capsys,
    )
    assert code == 0, err
    assert [m["permutations"] for m in json.loads(out2)["models"]] == [m["permutations"] for m in data["models"]]
    # Rerunning into our own output replaces it; a directory we did not write is refused.
    assert run(["align", models, "-o", tmp_path / "out"], capsys)[0] == 0
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("keep")
    code, _, err = run(["align", models, "-o", tmp_path / "theirs"], capsys)
    assert code == 2
    assert "did not write" in err
    assert (tmp_path / "theirs" / "notes.txt").read_text() == "keep"


def test_scale_needs_relu_and_the_cli_says_so(
    tmp_path: Path, models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["align", models, "-o", tmp_path / "out", "--symmetries", "permutation,scale"], capsys)
    assert code == 0, err
    assert "only for ReLU-like" in err
    assert "state dict cannot tell" in " ".join(err.split())


def test_pickles_keep_their_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(3):
        torch.save(state(mlp(50 + i)), tmp_path / f"p{i}.bin")
    code, _, err = run(
        ["align", *[tmp_path / f"p{i}.bin" for i in range(3)], "-o", tmp_path / "out", "--allow-pickle"], capsys
    )
    assert code == 0, err
    src = open_source(tmp_path / "out" / "p0.bin", allow_pickle=True)
    assert src.format == "torch"


SHAPES_BAD = {
    "unknown key": ({"h": [["0.weight", 0], ["9.weight", 1]]}, "9.weight", "does not have"),
    "wrong axis": ({"h": [["0.weight", 0], ["2.weight", 3]]}, "2.weight", "out of range"),
    "size disagreement": ({"h": [["0.weight", 0], ["2.weight", 0]]}, "2.weight", "permutes 32 units"),
}


@pytest.mark.parametrize("case", list(SHAPES_BAD))
def test_bad_specs_exit_2_naming_file_and_key(
    tmp_path: Path, models: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    groups, key, match = SHAPES_BAD[case]
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"groups": groups}))
    for argv in (
        ["align", models, "-o", tmp_path / "out"],
        ["analyze", models, "-o", tmp_path / "r", "--align", "--no-plots"],
    ):
        code, out, err = run([*argv, "--spec", spec], capsys)
        assert code == 2, err
        assert f"{spec}: tensor '{key}'" in err
        assert match in err
        assert out == ""
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "r").exists()


def test_an_underivable_chain_exits_2_naming_the_model_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(3):
        sd = state(mlp(60 + i))
        sd["2.weight"] = sd["2.weight"][:, :31].contiguous()  # no longer takes the first layer's 32 outputs
        save_safetensors(tmp_path / f"m{i}.safetensors", sd)
    code, _, err = run(["align", tmp_path, "-o", tmp_path / "out"], capsys)
    assert code == 2
    assert re.search(r"m[0-2]\.safetensors: tensor '2\.weight'", err)
    assert "do not chain" in err


def test_usage_errors(tmp_path: Path, models: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["align", models, "-o", tmp_path / "o", "--reference", "nobody"], capsys)
    assert (code, "not one of the models" in err) == (2, True)
    code, _, err = run(["align", models, "-o", tmp_path / "o", "--symmetries", "rotation"], capsys)
    assert (code, "'symmetries' parameter of align" in err) == (2, True)
    code, _, err = run(["analyze", models, "-o", tmp_path / "r", "--spec", "vit", "--no-plots"], capsys)
    assert (code, "only apply with --align" in err) == (2, True)
    code, _, err = run(["compress", models, "-o", tmp_path / "a.wsz", "--to", "mean"], capsys)
    assert (code, "only apply with --align" in err) == (2, True)
    code, _, err = run(
        ["analyze", models, "-o", tmp_path / "r", "--align", "--method", "hosvd", "--no-plots"], capsys
    )
    assert (code, "supports method 'pca' only" in err) == (2, True)


def test_lora_adapters_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    g = torch.Generator().manual_seed(0)
    for i in range(3):
        write_adapter(
            tmp_path / f"a{i}",
            {"layers.0.q_proj": (torch.randn(2, 8, generator=g), torch.randn(8, 2, generator=g))},
            r=2,
            alpha=4,
        )
    code, _, err = run(["align", *[tmp_path / f"a{i}" for i in range(3)], "-o", tmp_path / "out"], capsys)
    assert code == 2
    assert "need no alignment" in err


def test_compress_align_then_reconstruct_and_analyze_align(
    tmp_path: Path, models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["compress", models, "-o", tmp_path / "a.wsz", "--align", "-k", "3", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["alignment"]["reference"]
    assert run(["reconstruct", tmp_path / "a.wsz", "--all", "-o", tmp_path / "back"], capsys)[0] == 0
    assert run(["reconstruct", tmp_path / "a.wsz", "--all", "-o", tmp_path / "al", "--aligned"], capsys)[0] == 0
    for i in range(4):
        orig, _ = read_checkpoint(models / f"m{i}.safetensors")
        back, _ = read_checkpoint(tmp_path / "back" / f"m{i}.safetensors")
        kept, _ = read_checkpoint(tmp_path / "al" / f"m{i}.safetensors")
        for k in orig:
            torch.testing.assert_close(back[k], orig[k], rtol=0, atol=1e-5)
        assert sorted(kept["0.bias"].tolist()) == pytest.approx(sorted(back["0.bias"].tolist()), abs=1e-5)
    code, _, err = run(
        ["analyze", models, "-o", tmp_path / "rep", "--align", "--null-draws", "2", "--no-plots"], capsys
    )
    assert code == 0, err
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["alignment"]["groups"] == {"0": 32, "2": 24}
    assert any("aligned by the same procedure" in n for n in report["notes"])
