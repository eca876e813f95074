"""``weightspace analyze``: exit codes, files, --json, and nothing written on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import weightspace.cli._analyze_cmd  # noqa: F401  (registers the command until the lead wires it in)
from weightspace.cli import main


def _run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return int(exc.value.code or 0)


def test_analyze_writes_report(planted_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rep"
    code = _run(["analyze", str(planted_dir), "-o", str(out), "--seed", "3", "--null-draws", "2", "--json"])
    assert code == 0
    names = {p.name for p in out.iterdir()}
    assert {"report.json", "report.html", "scree.png", "loo.png", "verdicts.png"} <= names
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert data["seed"] == 3
    assert data["n_null"] == 2
    assert data == json.loads((out / "report.json").read_text())
    assert "shared-subspace" in captured.err  # the terminal summary goes to stderr


def test_analyze_folds_and_method(planted_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rep"
    args = [
        "analyze",
        str(planted_dir),
        "-o",
        str(out),
        "--folds",
        "4",
        "--method",
        "hosvd",
        "--no-plots",
        "--json",
    ]
    assert _run(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["folds"]["scheme"] == "4-fold"
    assert data["method"] == "hosvd"
    assert not list(out.glob("*.png"))


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda d, t: ["analyze", str(next(d.iterdir())), "-o", str(t)], "at least 2 models"),
        (lambda d, t: ["analyze", str(d / "missing.safetensors"), str(d), "-o", str(t)], "missing.safetensors"),
        (lambda d, t: ["analyze", str(d), "-o", str(t), "--method", "svd"], "'method' parameter"),
        (lambda d, t: ["analyze", str(d), "-o", str(t), "--folds", "1"], "'folds' parameter"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(
    planted_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], make_args, message: str
) -> None:
    out = tmp_path / "rep"
    assert _run(make_args(planted_dir, out)) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
    assert not list(tmp_path.iterdir())  # no temporaries either


def test_bad_tensor_names_file_and_tensor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch
    from safetensors.torch import save_file

    models = tmp_path / "models"
    models.mkdir()
    save_file({"w": torch.ones(3, 3)}, models / "a.safetensors")
    save_file({"w": torch.full((3, 3), float("nan"))}, models / "b.safetensors")
    out = tmp_path / "rep"
    assert _run(["analyze", str(models), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "b.safetensors" in err
    assert "'w'" in err
    assert not out.exists()
