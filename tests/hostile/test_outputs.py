"""Outputs: never replace what the user owns, replace weightspace's own atomically, file-system faults are exit 2."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from helpers import mlp_like, write_models
from hostile.test_corpus import run_cli
from weightspace._atomic import MARKER, atomic_file, check_output, output_kind
from weightspace.errors import OutputError


def _models(tmp_path: Path, n: int = 3) -> Path:
    g = torch.Generator().manual_seed(0)
    write_models(tmp_path / "models", [mlp_like(g, hidden=4) for _ in range(n)])
    return tmp_path / "models"


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_user_folder_is_refused_then_replaced_with_overwrite(tmp_path: Path) -> None:
    models = _models(tmp_path)
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "sub" / "thesis.txt").write_text("years of work")
    before = _tree(mine)
    for argv in (
        ["compress", str(models), "-o", str(mine)],
        ["analyze", str(models), "-o", str(mine), "--no-plots", "--null-draws", "1"],
        ["reconstruct", str(tmp_path / "a.wsz"), "--all", "-o", str(mine)],
    ):
        if argv[0] == "reconstruct":
            assert run_cli(["compress", str(models), "-o", str(tmp_path / "a.wsz"), "--rank", "2"])[0] == 0
        code, _, err = run_cli(argv)
        assert code == 2, err
        assert "refusing to replace it" in err
        assert "--overwrite" in err
        assert _tree(mine) == before
    code, _, err = run_cli(["compress", str(models), "-o", str(mine), "--overwrite", "--rank", "2"])
    assert code == 0, err
    assert output_kind(mine) == "archive"


def test_own_outputs_are_replaced_without_overwrite(tmp_path: Path) -> None:
    models = _models(tmp_path)
    for argv in (
        ["compress", str(models), "-o", str(tmp_path / "a.wsz"), "--rank", "2"],
        ["analyze", str(models), "-o", str(tmp_path / "rep"), "--no-plots", "--null-draws", "1"],
        ["reconstruct", str(tmp_path / "a.wsz"), "--all", "-o", str(tmp_path / "rec")],
        [
            "merge",
            str(models),
            "--base",
            str(models / "m0.safetensors"),
            "-m",
            "mean",
            "-o",
            str(tmp_path / "mm.safetensors"),
        ],
    ):
        for _ in range(2):  # the second run replaces the first
            code, _, err = run_cli(argv)
            assert code == 0, err
    assert output_kind(tmp_path / "rep") == "report"
    assert output_kind(tmp_path / "rec") == "models"
    assert output_kind(tmp_path / "mm.safetensors") == "model"
    code, _, err = run_cli(["compress", str(models), "-o", str(tmp_path / "rep")])
    assert code == 2
    assert "did not write it as an archive (.wsz) (it is a weightspace analysis report)" in " ".join(err.split())


def test_inputs_are_refused_even_with_overwrite(tmp_path: Path) -> None:
    models = _models(tmp_path)
    for out in (models, tmp_path, models / "m0.safetensors"):
        code, _, err = run_cli(["compress", str(models), "-o", str(out), "--overwrite"])
        assert code == 2, err
        assert "input" in err
    assert len(list(models.iterdir())) == 3


def test_reconstruct_replaces_its_folder_as_a_whole(tmp_path: Path) -> None:
    models = _models(tmp_path)
    assert run_cli(["compress", str(models), "-o", str(tmp_path / "a.wsz"), "--rank", "2"])[0] == 0
    rec = tmp_path / "rec"
    assert run_cli(["reconstruct", str(tmp_path / "a.wsz"), "m0", "-o", str(rec)])[0] == 0
    assert sorted(p.name for p in rec.iterdir()) == [MARKER, "m0.safetensors"]
    assert run_cli(["reconstruct", str(tmp_path / "a.wsz"), "m1", "-o", str(rec)])[0] == 0
    assert sorted(p.name for p in rec.iterdir()) == [MARKER, "m0.safetensors", "m1.safetensors"]  # m0 carried over
    (models / "m2.safetensors").unlink()
    assert run_cli(["compress", str(models), "-o", str(tmp_path / "a.wsz"), "--rank", "1"])[0] == 0
    assert run_cli(["reconstruct", str(tmp_path / "a.wsz"), "--all", "-o", str(rec)])[0] == 0
    assert sorted(p.name for p in rec.iterdir()) == [MARKER, "m0.safetensors", "m1.safetensors"]
    assert not [p for p in tmp_path.iterdir() if ".wstmp-" in p.name or ".wsold-" in p.name]


def test_read_only_destination_fails_before_the_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    models = _models(tmp_path)

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("weightspace._atomic.tempfile.mkstemp", refuse)
    called = []
    monkeypatch.setattr("weightspace.decompose.SharedSubspace.fit", lambda *a, **k: called.append(1))
    code, _, err = run_cli(["compress", str(models), "-o", str(tmp_path / "a.wsz")])
    assert code == 2, err
    assert "a.wsz" in err
    assert "Read-only file system" in err
    assert not called  # refused before any fitting


def test_no_space_while_writing_is_exit_2_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "out.txt"
    dest.write_text("previous")

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    def write() -> None:
        with atomic_file(dest) as tmp:
            tmp.write_text("new")
            monkeypatch.setattr("weightspace._atomic.os.replace", full)

    with pytest.raises(OutputError, match="No space left on device") as info:
        write()
    assert info.value.errno == errno.ENOSPC
    assert str(dest) in str(info.value)
    assert dest.read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_too_little_space_is_refused_up_front(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match=r"needs at least .* GB but only"):
        check_output(tmp_path / "a.wsz", "archive", required_bytes=1 << 62)


def test_file_size_limit_mid_write_is_exit_2(tmp_path: Path) -> None:
    """A real write failure (RLIMIT_FSIZE: EFBIG) in a child process: exit 2, old archive kept, no temporaries."""
    models = _models(tmp_path)
    g = torch.Generator().manual_seed(1)
    write_models(tmp_path / "big", [{"w": torch.randn(256, 256, generator=g)} for _ in range(3)])
    assert run_cli(["compress", str(models), "-o", str(tmp_path / "a.wsz"), "--rank", "2"])[0] == 0
    before = _tree(tmp_path / "a.wsz")
    code = textwrap.dedent(
        f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
        from weightspace.cli import main
        main(["compress", {str(tmp_path / "big")!r}, "-o", {str(tmp_path / "a.wsz")!r}, "--rank", "2"])
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "a.wsz" in proc.stderr
    assert "File too large" in proc.stderr
    assert _tree(tmp_path / "a.wsz") == before
    assert not [p for p in tmp_path.iterdir() if ".wstmp-" in p.name]


def test_zoo_and_demo_refuse_a_user_folder_before_training(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    for argv in (
        ["zoo", "digits-mlp", "--quick", "-o", str(tmp_path / "mine")],
        ["demo", "--quick", "--zoo", "digits-mlp", "-o", str(tmp_path / "mine")],
    ):
        code, _, err = run_cli(argv)
        assert code == 2, err
        assert "refusing to replace it" in err
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
