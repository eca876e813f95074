"""Run options: one validation, one message format, the CLI's --threads/--scheduler/--device."""

from __future__ import annotations

import pytest
import torch

from weightspace.backends import RunOptions, parse_scheduler, resolve_device
from weightspace.cli import main
from weightspace.errors import ParameterError


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return int(info.value.code or 0), capsys.readouterr().err


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threads": 0}, r"The 'threads' parameter of RunOptions must be None or an int >= 1\. Got 0 instead\."),
        ({"scheduler": "cluster"}, r"'local', 'local:N' .* or a scheduler address such as 'tcp://HOST:PORT'"),
        ({"scheduler": "local:0"}, r"local:N needs N >= 1"),
        ({"scheduler": "local:2", "client": object()}, r"pass either scheduler= or client="),
        ({"scheduler": "local:2", "threads": 2}, r"threads= sets local threads"),
        ({"device": "tpu"}, r"The 'device' parameter of RunOptions must be one of 'cpu', 'cuda', 'auto'"),
    ],
)
def test_run_options_are_validated(kwargs: dict, match: str) -> None:
    with pytest.raises(ParameterError, match=match):
        RunOptions(**kwargs)


def test_scheduler_strings() -> None:
    assert parse_scheduler("local:3") == ("local", 3)
    assert parse_scheduler("local")[0] == "local"
    assert parse_scheduler("tcp://127.0.0.1:8786") == ("remote", None)
    assert RunOptions(scheduler="local:2").dask
    assert not RunOptions(threads=2).dask
    assert RunOptions(threads=3).workers == 3


def test_keywords_override_options() -> None:
    opts = RunOptions.of(RunOptions(threads=2, device="auto"), device="cpu")
    assert (opts.threads, opts.device) == (2, "cpu")


def test_devices() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ParameterError, match=r"device 'cuda' was requested but torch sees no CUDA device"):
            resolve_device("cuda")


def test_cli_rejects_bad_run_options(models_dir, tmp_path, capsys) -> None:
    code, err = _cli(["compress", str(models_dir), "-o", str(tmp_path / "a.wsz"), "--scheduler", "nope"], capsys)
    assert code == 2
    assert "The 'scheduler' parameter must be 'local', 'local:N'" in err
    code, err = _cli(
        ["analyze", str(models_dir), "-o", str(tmp_path / "r"), "--threads", "2", "--scheduler", "local:2"], capsys
    )
    assert code == 2
    assert "threads= sets local threads" in err
    assert not (tmp_path / "a.wsz").exists()
    assert not (tmp_path / "r").exists()
