"""One CLI vocabulary: fast --help, JSON errors, progress on a pipe, --quiet, --rank limits, 80-column tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from helpers import mlp_like, write_models
from weightspace.cli import main

SRC = Path(__file__).resolve().parents[2] / "src"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_help_is_fast_and_imports_no_torch() -> None:
    # Generous bound for a loaded 2-core machine (min of two runs); idle, `weightspace --help` takes ~0.5 s.
    walls = []
    for _ in range(2):
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "weightspace", "--help"],
            capture_output=True,
            text=True,
            env=_env(),
            check=False,
        )
        walls.append(time.perf_counter() - t0)
        assert proc.returncode == 0, proc.stderr
    assert "compress" in proc.stdout
    assert "run" in proc.stdout
    assert min(walls) < 2.5, f"weightspace --help took {min(walls):.2f} s"
    probe = (
        "import sys, weightspace.cli; print(sorted(m for m in ('torch', 'numpy', 'scipy') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=_env(), check=True)
    assert proc.stdout.strip() == "[]"


def test_json_errors_are_one_object_on_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["inspect", str(tmp_path / "nope.safetensors"), "--json"], capsys)
    assert code == 2
    error = json.loads(out)
    assert error == {
        "error": "no such file or directory",
        "path": str(tmp_path / "nope.safetensors"),
        "tensor": None,
        "exit_code": 2,
    }
    assert "no such file" in err  # the human message still goes to stderr
    code, out, _ = run(["compress", str(tmp_path), "--json"], capsys)  # usage error: -o/--out missing
    assert code == 2
    assert json.loads(out)["exit_code"] == 2
    assert "--out" in json.loads(out)["error"]
    code, out, _ = run(["inspect", str(tmp_path / "nope.safetensors")], capsys)
    assert code == 2
    assert out == ""


def test_json_errors_name_the_tensor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    g = torch.Generator().manual_seed(0)
    sd = [mlp_like(g), mlp_like(g)]
    sd[1]["fc2.weight"][0, 0] = float("nan")
    write_models(tmp_path / "m", sd)
    code, out, _ = run(["compress", str(tmp_path / "m"), "-o", str(tmp_path / "a.wsz"), "--json"], capsys)
    assert code == 2
    error = json.loads(out)
    assert error["tensor"] == "fc2.weight"
    assert error["path"].endswith("m1.safetensors")


@pytest.fixture
def models(tmp_path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    write_models(tmp_path / "m", [mlp_like(g) for _ in range(3)])
    return tmp_path / "m"


def test_progress_lines_on_a_pipe_and_quiet_silences_them(
    models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["compress", str(models), "-o", str(models.parent / "a.wsz"), "--rank", "2"], capsys)
    assert code == 0, err
    assert "compress: units 1/4 (25%), 0:00 elapsed" in err
    assert "compress: units 4/4 (100%)" in err
    assert ", done" in err
    code, _, err = run(["compress", str(models), "-o", str(models.parent / "b.wsz"), "--rank", "2", "-q"], capsys)
    assert code == 0
    assert "units" not in err.replace("4 units", "")  # no progress lines, only the summary
    assert "wrote" in err


def test_rank_above_what_the_data_allows_is_an_error_or_clipped(
    models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = models.parent / "a.wsz"
    code, _, err = run(["compress", str(models), "-o", str(out), "--rank", "50"], capsys)
    assert code == 2
    flat = " ".join(err.split())
    assert "--rank 50 is more than the data allows" in flat
    assert "at most 2 component(s)" in flat
    assert "--clip-rank" in flat
    assert not out.exists()
    code, stdout, err = run(
        ["compress", str(models), "-o", str(out), "--rank", "50", "--clip-rank", "--json"], capsys
    )
    assert code == 0, err
    k = json.loads(stdout)["k"]
    assert k["requested"] == 50
    assert k["max"] == 2
    assert len(k["capped_units"]) == 4
    assert "k per unit 2 (requested 50; 4 of 4 units kept fewer than asked" in " ".join(err.split())
    manifest = json.loads((out / "manifest.json").read_text())
    assert {u["k"] for u in manifest["units"]} == {2}


def test_compress_summary_says_smaller_or_larger(models: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, err = run(["compress", str(models), "-o", str(models.parent / "a.wsz"), "--json", "-q"], capsys)
    assert code == 0
    summary = json.loads(stdout)
    word = "larger" if summary["archive_bytes"] > summary["models_bytes"] else "smaller"
    assert summary["size"].endswith(f"× {word}")
    assert f"× {word}" in err
    assert "0." not in summary["size"].split("×")[0] or word == "smaller"


def test_every_output_option_is_dash_o_out(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("compress", "reconstruct", "analyze", "merge", "adapt", "zoo", "demo", "run"):
        code, stdout, _ = run([command, "--help"], capsys)
        assert code == 0
        text = " ".join(stdout.split())
        assert "--out" in text, command
        assert "-o" in text, command
        assert "--output" not in text, command


def _fake_progress_calls(cb, stage: str, n: int = 3) -> None:
    for i in range(n + 1):
        cb(stage, i, n)


def test_zoo_adapt_and_demo_print_progress_lines_when_piped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import weightspace.bench
    import weightspace.demo
    import weightspace.zoo

    def build_zoo(name, out, *, progress=None, **kw):
        for i in range(4):
            progress(i, 3, f"model {i}")
        return SimpleNamespace(zoo=name, dir=out, base_path=None, models=[])

    def adaptation_benchmark(zoo, archive, task, *, progress=None, **kw):
        _fake_progress_calls(progress, "train")
        raise SystemExit(0)  # the table needs real results; the progress lines are what is tested

    def run_demo(out, *, progress=None, say=None, **kw):
        say("[digits-mlp] build zoo")
        _fake_progress_calls(progress, "digits-mlp: train")
        return {"zoos": []}

    monkeypatch.setattr(weightspace.zoo, "build_zoo", build_zoo)
    monkeypatch.setattr(weightspace.bench, "adaptation_benchmark", adaptation_benchmark)
    monkeypatch.setattr(weightspace.demo, "run_demo", run_demo)
    code, _, err = run(["zoo", "digits-mlp", "-o", str(tmp_path / "z")], capsys)
    assert code == 0
    assert "zoo digits-mlp: train 0/3 (0%)" in err
    assert "zoo digits-mlp: train 3/3 (100%)" in err
    code, _, err = run(["adapt", "--zoo", str(tmp_path / "z"), "--task", "x", "-o", str(tmp_path / "a")], capsys)
    assert "adapt: train 0/3" in err
    assert "adapt: train 3/3 (100%)" in err
    code, _, err = run(["demo", "-o", str(tmp_path / "d")], capsys)
    assert code == 0
    assert "[digits-mlp] build zoo" in err
    assert "demo: digits-mlp: train 3/3 (100%)" in err
    code, _, err = run(["demo", "-o", str(tmp_path / "d"), "--quiet"], capsys)
    assert "build zoo" not in err
    assert "train" not in err


def test_wide_tables_fit_80_columns_and_keep_every_cell(capsys: pytest.CaptureFixture[str]) -> None:
    from rich.console import Console

    import weightspace.cli._common as common

    console = Console(file=sys.stderr, width=80, force_terminal=False, highlight=False, markup=False)
    old, common.err_console = common.err_console, console
    try:
        headers = ["method", *(f"task-number-{i}" for i in range(20)), "average"]
        rows = [
            [f"method {r} (tuned on validation)", *(f"0.{r}{i:02d}" for i in range(20)), "0.5"] for r in range(3)
        ]
        common.print_table("accuracy", headers, rows, legend=["a legend line " * 12])
    finally:
        common.err_console = old
    err = capsys.readouterr().err
    assert max(len(line) for line in err.splitlines()) <= 80
    assert "…" not in err
    for r in range(3):
        for i in range(20):
            assert f"0.{r}{i:02d}" in err
    assert err.count("method 2 (tuned on validation)") >= 2  # the label column repeats in every part


def test_adapt_on_an_archive_with_the_task_names_the_cli_command_that_builds_one_without(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench._cnn_zoo import write_fake_zoo

    zoo = write_fake_zoo(tmp_path / "zoo")
    archive = tmp_path / "all.wsz"
    code, _, err = run(
        ["compress", str(zoo / "models"), "--base", str(zoo / "base.safetensors"), "-o", str(archive), "-q"],
        capsys,
    )
    assert code == 0, err
    code, _, err = run(
        ["adapt", str(archive), "--zoo", str(zoo), "--task", "reverse", "-o", str(tmp_path / "a")], capsys
    )
    flat = " ".join(err.split())
    assert code == 2
    assert "contains zoo model '002_reverse' of the held-out task 'reverse'" in flat
    assert f"weightspace adapt --zoo {zoo} --task reverse -o {tmp_path / 'a'}" in flat
    assert "weightspace compress" in flat
    assert "adaptation_benchmark" not in flat  # no Python function names in a CLI message
    assert not (tmp_path / "a").exists()
