"""``weightspace merge``: exit codes, messages naming file and tensor, nothing written on failure, JSON output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import weightspace.cli._merge_cmd  # noqa: F401  (registers the command until cli/__init__ imports it)
from helpers import write_adapter
from weightspace.cli import main
from weightspace.merge import MERGE_METHODS, merge


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


@pytest.fixture
def models(tmp_path: Path) -> dict[str, Path]:
    g = torch.Generator().manual_seed(0)
    base = {"fc.weight": torch.randn(4, 3, generator=g), "fc.bias": torch.randn(4, generator=g)}
    save_file(base, tmp_path / "base.safetensors")
    paths = []
    for i, classes in enumerate((2, 3)):
        sd = {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base.items()}
        sd["head.weight"] = torch.randn(classes, 4, generator=g)
        save_file(sd, tmp_path / f"m{i}.safetensors")
        paths.append(tmp_path / f"m{i}.safetensors")
    return {"dir": tmp_path, "base": tmp_path / "base.safetensors", "m0": paths[0], "m1": paths[1]}


def test_merge_writes_and_prints_json(models: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = models["dir"] / "merged.safetensors"
    argv = ["merge", str(models["m0"]), str(models["m1"]), "--base", str(models["base"]), "--method", "ties"]
    code, stdout, stderr = run(
        [*argv, "--param", "density=0.5", "-p", "lam=0.8", "-o", str(out), "--json"], capsys
    )
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["method"] == "ties"
    assert summary["params"] == {"density": 0.5, "lam": 0.8}
    assert summary["out"] == str(out)
    assert (summary["format"], summary["layout"]) == ("full", "safetensors")
    assert [p["key"] for p in summary["not_merged"]] == ["head.weight"]
    assert "not merged" in stderr
    assert "head.weight" in stderr
    expected = merge(
        [models["m0"], models["m1"]], base=models["base"], method="ties", params={"density": 0.5, "lam": 0.8}
    ).tensors
    got = load_file(out)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_merge_peft_adapters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    g = torch.Generator().manual_seed(1)
    paths = [
        write_adapter(
            tmp_path / f"a{i}",
            {"m.q": (torch.randn(2, 5, generator=g), torch.randn(6, 2, generator=g))},
            r=2,
            alpha=4,
        )
        for i in range(3)
    ]
    code, stdout, stderr = run(
        ["merge", *map(str, paths), "--method", "mean", "-o", str(tmp_path / "out"), "--rank", "3", "--json"],
        capsys,
    )
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["format"] == "peft"
    assert summary["rank"] == 3
    assert summary["max_truncation_error"] > 0
    assert "truncation error" in stderr
    assert json.loads((tmp_path / "out" / "adapter_config.json").read_text())["r"] == 3


def test_list_methods(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, stderr = run(["merge", "--list-methods"], capsys)
    assert code == 0
    for name in MERGE_METHODS.names():
        assert name in stderr
    assert "2512.05117" in stderr
    code, stdout, _ = run(["merge", "--list-methods", "--json"], capsys)
    assert code == 0
    listing = json.loads(stdout)["methods"]
    assert [m["name"] for m in listing] == MERGE_METHODS.names()


def test_help_lists_methods(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = run(["merge", "--help"], capsys)
    assert code == 0
    assert "--list-methods" in stdout
    # The help is static text (the CLI imports no torch to print it): it must name exactly the registry's methods.
    from weightspace.cli._merge_cmd import METHOD_NAMES

    assert sorted(METHOD_NAMES) == MERGE_METHODS.names()
    for name in METHOD_NAMES:
        assert name in " ".join(stdout.split())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "avg"], "Unknown merge method 'avg'. Valid choices: 'dare', 'dare_ties', 'knots', 'linear'"),
        (
            ["--method", "ties", "--param", "density=2"],
            "The 'density' parameter of merge method 'ties' must be a float",
        ),
        (["--method", "ties", "--param", "rho=0.1"], "Unknown parameter 'rho' for merge method 'ties'"),
        (["--method", "ties", "--param", "density"], "--param expects KEY=VALUE"),
        (["--method", "ties", "--rank", "2"], "does not apply to full output"),
        (["--method", "ties", "--format", "peft"], "--format peft needs PEFT LoRA adapters"),
        (
            ["--method", "ties", "--format", "lora"],
            "The 'format' parameter of merge must be one of 'auto', 'full'",
        ),
        ([], "--method is required. Valid choices: dare, dare_ties"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(
    models: dict[str, Path], capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    out = models["dir"] / "merged.safetensors"
    argv = ["merge", str(models["m0"]), str(models["m1"]), "--base", str(models["base"]), "-o", str(out), *extra]
    code, stdout, stderr = run(argv, capsys)
    assert code == 2
    assert message in " ".join(stderr.split())
    assert stdout == ""
    assert not out.exists()


def test_missing_or_mismatched_base(models: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = models["dir"] / "merged.safetensors"
    code, _, stderr = run(["merge", str(models["m0"]), str(models["m1"]), "-m", "mean", "-o", str(out)], capsys)
    assert code == 2
    assert "m0.safetensors" in stderr
    assert "pass --base BASE" in " ".join(stderr.split())
    save_file({"fc.weight": torch.zeros(4, 5), "fc.bias": torch.zeros(4)}, models["dir"] / "other.safetensors")
    other = str(models["dir"] / "other.safetensors")
    code, _, stderr = run(
        ["merge", str(models["m0"]), str(models["m1"]), "-b", other, "-m", "mean", "-o", str(out)], capsys
    )
    assert code == 2
    flat = " ".join(stderr.split())
    assert "other.safetensors: tensor 'fc.weight': " in flat
    assert "(4, 5)" in flat
    assert not out.exists()


def test_no_models_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, stderr = run(["merge"], capsys)
    assert code == 2
    assert "name the models to merge" in stderr


def test_format_is_the_output_format_and_out_the_path(
    models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, stdout, _ = run(["merge", "--help"], capsys)
    assert code == 0
    assert "--format" in stdout
    out = models["dir"] / "merged.safetensors"
    argv = ["merge", str(models["m0"]), str(models["m1"]), "-b", str(models["base"]), "-m", "mean"]
    code, stdout, stderr = run([*argv, "--format", "full", "--out", str(out), "--json"], capsys)
    assert code == 0, stderr
    assert json.loads(stdout)["format"] == "full"
    assert "(safetensors)" in stderr
    code, _, stderr = run([*argv, "--output", "full", "-o", str(out)], capsys)  # the old spelling is gone
    assert code == 2
    assert "--output" in stderr
