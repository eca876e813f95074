"""CLI contract: exit codes, messages that name file and tensor, no output on failure, JSON on stdout, kill -9."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from helpers import mlp_like, write_models
from weightspace.cli import main


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def _good(tmp_path: Path, n: int = 3) -> Path:
    g = torch.Generator().manual_seed(0)
    write_models(tmp_path / "models", [mlp_like(g) for _ in range(n)])
    return tmp_path / "models"


def _truncated(d: Path) -> tuple[str, str | None]:
    p = d / "m1.safetensors"
    p.write_bytes(p.read_bytes()[:-40])
    return "m1.safetensors", None


def _header_too_long(d: Path) -> tuple[str, str | None]:
    p = d / "m2.safetensors"
    raw = p.read_bytes()
    p.write_bytes(struct.pack("<Q", len(raw) * 10) + raw[8:])
    return "m2.safetensors", None


def _duplicate_key(d: Path) -> tuple[str, str | None]:
    entry = b'{"dtype": "F32", "shape": [1], "data_offsets": [%d, %d]}'
    header = b'{"fc1.bias": ' + entry % (0, 4) + b', "fc1.bias": ' + entry % (4, 8) + b"}"
    (d / "m0.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    return "m0.safetensors", "fc1.bias"


def _shape_mismatch(d: Path) -> tuple[str, str | None]:
    save_file(mlp_like(torch.Generator().manual_seed(9), hidden=7), d / "m1.safetensors")
    return "m1.safetensors", "fc1.bias"


def _missing_tensor(d: Path) -> tuple[str, str | None]:
    sd = mlp_like(torch.Generator().manual_seed(9))
    del sd["fc2.weight"]
    save_file(sd, d / "m2.safetensors")
    return "m2.safetensors", "fc2.weight"


def _nan(d: Path) -> tuple[str, str | None]:
    sd = mlp_like(torch.Generator().manual_seed(9))
    sd["fc2.weight"][1, 1] = float("nan")
    save_file(sd, d / "m1.safetensors")
    return "m1.safetensors", "fc2.weight"


def _one_model(d: Path) -> tuple[str, str | None]:
    for p in ("m1.safetensors", "m2.safetensors"):
        (d / p).unlink()
    return "m0.safetensors", None


def _zero_models(d: Path) -> tuple[str, str | None]:
    for p in d.iterdir():
        p.unlink()
    return "holds no checkpoints", None


def _fifo(d: Path) -> tuple[str, str | None]:
    (d / "m2.safetensors").unlink()
    os.mkfifo(d / "x.safetensors")
    return "x.safetensors", None


BAD = {
    "truncated": _truncated,
    "header-longer-than-file": _header_too_long,
    "duplicate-header-key": _duplicate_key,
    "shape-mismatch": _shape_mismatch,
    "missing-tensor": _missing_tensor,
    "nan": _nan,
    "one-model": _one_model,
    "zero-models": _zero_models,
    "fifo": _fifo,
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_exits_2_names_file_and_tensor_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    models = _good(tmp_path)
    file_hint, tensor = BAD[case](models)
    for argv in (
        ["compress", str(models), "-o", str(tmp_path / "out.wsz"), "--rank", "2"],
        ["inspect", str(models), "--json"] if case not in ("nan", "one-model") else None,
    ):
        if argv is None:
            continue
        code, _out, err = run(argv, capsys)
        assert code == 2, err
        assert file_hint in err, err
        if tensor is not None:
            assert f"tensor '{tensor}'" in err, err
        assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]  # nothing written, no temp left behind


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = _good(tmp_path)
    code, _, err = run(["compress", "-o", str(tmp_path / "a.wsz")], capsys)
    assert code == 2
    code, _, err = run(
        ["compress", str(models), "-o", str(tmp_path / "a.wsz"), "--rank", "2", "--variance", "0.5"], capsys
    )
    assert code == 2
    assert "either --rank or --variance" in err
    code, _, err = run(["compress", str(models), "-o", str(tmp_path / "a.wsz"), "--method", "svd"], capsys)
    assert code == 2
    assert "'method'" in err
    assert not (tmp_path / "a.wsz").exists()


def test_json_is_one_object_on_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = _good(tmp_path, 4)
    code, out, err = run(
        ["compress", str(models), "-o", str(tmp_path / "a.wsz"), "--variance", "0.9", "--json"], capsys
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["n_models"] == 4
    assert summary["archive_bytes"] > 0
    code, out, _ = run(["inspect", str(models), "--json"], capsys)
    assert json.loads(out)["n_units"] == 4
    code, out, _ = run(["project", str(tmp_path / "a.wsz"), str(models / "m0.safetensors"), "--json"], capsys)
    row = json.loads(out)["models"][0]
    assert row["mean_plus_basis"] <= row["mean_only"]
    code, out, _ = run(
        ["reconstruct", str(tmp_path / "a.wsz"), "--all", "-o", str(tmp_path / "r"), "--json"], capsys
    )
    assert code == 0
    assert len(json.loads(out)["models"]) == 4


def test_reconstruct_of_corrupted_archive_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = _good(tmp_path)
    run(["compress", str(models), "-o", str(tmp_path / "a.wsz")], capsys)
    coef = tmp_path / "a.wsz" / "coefficients.safetensors"
    raw = bytearray(coef.read_bytes())
    raw[-1] ^= 1
    coef.write_bytes(bytes(raw))
    code, _, err = run(["reconstruct", str(tmp_path / "a.wsz"), "--all", "-o", str(tmp_path / "r")], capsys)
    assert code == 2
    assert "coefficients.safetensors: member is corrupted" in err
    assert not (tmp_path / "r").exists()


def _spawn_compress(models: Path, out: Path) -> subprocess.Popen[bytes]:
    code = (
        f"from weightspace.cli import main; main(['compress', {str(models)!r}, '-o', {str(out)!r}, '--rank', '8'])"
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_when(proc: subprocess.Popen[bytes], ready: Callable[[], bool], timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.002)
    proc.wait()
    return False


@pytest.mark.parametrize("previous", [False, True])
def test_kill_9_during_compress_leaves_previous_archive_or_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], previous: bool
) -> None:
    g = torch.Generator().manual_seed(0)
    models = tmp_path / "models"
    write_models(
        models, [{f"l{j}.weight": torch.randn(384, 384, generator=g) for j in range(6)} for _ in range(12)]
    )
    out = tmp_path / "a.wsz"
    if previous:
        code, _, err = run(["compress", str(models), "-o", str(out), "--rank", "3"], capsys)
        assert code == 0, err
        before = (out / "manifest.json").read_bytes()
    proc = _spawn_compress(models, out)
    killed = _kill_when(proc, lambda: any(".wstmp-" in p.name for p in tmp_path.iterdir()))
    assert killed, "compress finished before it could be killed mid-write"
    if previous:
        assert (out / "manifest.json").read_bytes() == before
        from weightspace.decompose import Archive

        Archive(out)  # verifies every member hash
    else:
        assert not out.exists()
    # the next run cleans the dead process's temporary directory and succeeds
    code, _, err = run(["compress", str(models), "-o", str(out), "--rank", "2"], capsys)
    assert code == 0, err
    assert not any(".wstmp-" in p.name for p in tmp_path.iterdir())


def test_messages_with_brackets_are_printed_verbatim(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = _good(tmp_path)
    entry = b'{"dtype": "F32", "shape": [2], "data_offsets": [%d, %d]}'
    header = b'{"a": ' + entry % (0, 8) + b', "x[red]": ' + entry % (4, 12) + b"}"  # a key that looks like markup
    (models / "m1.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 12)
    code, _, err = run(["inspect", str(models)], capsys)
    assert code == 2
    assert "m1.safetensors: tensor 'x[red]': byte range [4, 12] overlaps the previous tensor" in " ".join(
        err.split()
    )
