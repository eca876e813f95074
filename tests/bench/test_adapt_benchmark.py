"""The adaptation benchmark and ``weightspace adapt``: held-out checks, exit codes, outputs, end to end."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

import weightspace.cli._adapt_cmd  # noqa: F401  (registers the command)
from weightspace.adapt import load
from weightspace.bench import adaptation_benchmark
from weightspace.cli import main
from weightspace.errors import InputError, ParameterError
from weightspace.zoo import get_zoo, load_zoo_info, read_checkpoint

FIXED_LRS = {"full": 3e-3, "lora": 1e-2, "head-only": 1e-2, "mean-only": 1e-2, "coef": 3e-2}


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def test_benchmark_end_to_end_on_a_fake_zoo(fake_cnn_zoo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = adaptation_benchmark(fake_cnn_zoo, task="reverse", ks=(1, 2), steps=3, seed=0, lrs=FIXED_LRS, out=out)
    names = [r["name"] for r in res["rows"]]
    assert names == [
        "full",
        "lora-r8",
        "head-only",
        "mean-only",
        "coef-mean-k1",
        "coef-zero-k1",
        "coef-mean-k2",
        "coef-zero-k2",
    ]
    rows = {r["name"]: r for r in res["rows"]}
    # 4 targeted layers (conv1..3, fc), weight + bias each: k coefficients per unit.
    assert rows["coef-mean-k1"]["trainable_adapter"] == 8
    assert rows["coef-zero-k2"]["trainable_adapter"] == 16
    assert rows["mean-only"]["trainable_adapter"] == 0
    assert rows["head-only"]["trainable_adapter"] == 0
    model = get_zoo("mnist1d-cnn").make_model("reverse")
    n_head = sum(p.numel() for n, p in model.named_parameters() if n.startswith("head."))
    assert all(r["trainable_head"] == n_head for r in res["rows"])
    assert rows["full"]["trainable_adapter"] == sum(p.numel() for p in model.parameters()) - n_head
    # LoRA r=8 on conv1 (1→32, k5), conv2/conv3 (32→32, k3) and fc (320→64): r·(in·k) + out·r per layer.
    assert rows["lora-r8"]["trainable_adapter"] == 8 * (5 + 32) + 2 * 8 * (96 + 32) + 8 * (320 + 64)
    assert res["archive"]["built_leave_task_out"]
    assert "003_reverse" not in " ".join(res["archive"]["models"])
    assert res["held_out_models"] == ["002_reverse"]
    for r in res["rows"]:
        assert 0.0 <= r["test_accuracy"] <= 1.0
        assert r["train_wall_s"] > 0
    saved = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in saved["rows"]] == names
    # The saved main adapter (mean-init, k = max(ks)) embeds its basis: the temporary archive is gone.
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert cfg["save_basis"] is True
    assert cfg["k"] == 2
    assert cfg["init"] == "mean"
    fresh = get_zoo("mnist1d-cnn").make_model("reverse")
    base, _ = read_checkpoint(fake_cnn_zoo / "base.safetensors")
    fresh.load_state_dict({k: v for k, v in base.items() if not k.startswith("head.")}, strict=False)
    acc = get_zoo("mnist1d-cnn").accuracy(load(fresh, out / "adapter"), "reverse")
    assert acc == pytest.approx(rows["coef-mean-k2"]["test_accuracy"])


def test_benchmark_is_deterministic(fake_cnn_zoo: Path, fake_cnn_zoo_archive: tuple[Path, Path]) -> None:
    kw = {"task": "reverse", "ks": (1,), "steps": 2, "seed": 3, "lrs": {**FIXED_LRS, "coef": (1e-2, 3e-2)}}
    a = adaptation_benchmark(fake_cnn_zoo, fake_cnn_zoo_archive[0], **kw)
    b = adaptation_benchmark(fake_cnn_zoo, fake_cnn_zoo_archive[0], **kw)
    for ra, rb in zip(a["rows"], b["rows"], strict=True):
        assert (ra["test_accuracy"], ra["final_loss"], ra["lr"]) == (
            rb["test_accuracy"],
            rb["final_loss"],
            rb["lr"],
        )
    coef = next(r for r in a["rows"] if r["name"] == "coef-mean-k1")
    assert [s["lr"] for s in coef["lr_search"]] == [1e-2, 3e-2]  # grid searched on the validation split


def test_benchmark_refuses_an_archive_holding_the_task_model(
    fake_cnn_zoo: Path, fake_cnn_zoo_archive: tuple[Path, Path]
) -> None:
    with pytest.raises(InputError, match="contains zoo model '002_reverse' of the held-out task 'reverse'"):
        adaptation_benchmark(fake_cnn_zoo, fake_cnn_zoo_archive[1], task="reverse", steps=1, lrs=FIXED_LRS)


def test_benchmark_parameter_errors(fake_cnn_zoo: Path, fake_cnn_zoo_archive: tuple[Path, Path]) -> None:
    with pytest.raises(ParameterError, match="Unknown task 'nope'"):
        adaptation_benchmark(fake_cnn_zoo, task="nope")
    with pytest.raises(ParameterError, match="what the base was pretrained on"):
        adaptation_benchmark(fake_cnn_zoo, task="pretrain")
    with pytest.raises(ParameterError, match="unknown learning-rate family 'adam'"):
        adaptation_benchmark(fake_cnn_zoo, task="reverse", lrs={"adam": 1e-3})
    with pytest.raises(ParameterError, match="variant 'hosvd' needs an archive compressed with --method hosvd"):
        adaptation_benchmark(fake_cnn_zoo, fake_cnn_zoo_archive[0], task="reverse", variant="hosvd", lrs=FIXED_LRS)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"ks": ()},
            "The 'ks' parameter of adaptation_benchmark must be a non-empty sequence of ints >= 0. Got []",
        ),
        ({"ks": (1, -1)}, "The 'ks' parameter of adaptation_benchmark must be a non-empty sequence of ints >= 0"),
        ({"k": -1}, "The 'k' parameter of adaptation_benchmark must be an int >= 0 or None. Got -1 instead."),
        (
            {"variant": "svd"},
            "The 'variant' parameter of adaptation_benchmark must be one of 'auto', 'hosvd', 'lora-hosvd', 'pca' or None",
        ),
        ({"steps": 0}, "The 'steps' parameter of adaptation_benchmark must be an int >= 1. Got 0 instead."),
        ({"steps": True}, "The 'steps' parameter of adaptation_benchmark must be an int >= 1. Got True instead."),
    ],
)
def test_benchmark_parameter_messages(fake_cnn_zoo: Path, kwargs: dict, message: str) -> None:
    """Declarative checks, one message format; a parsed ZooInfo is accepted in place of the directory."""
    with pytest.raises(ParameterError, match=re.escape(message)):
        adaptation_benchmark(load_zoo_info(fake_cnn_zoo), task="reverse", lrs=FIXED_LRS, **kwargs)


# ------------------------------------------------------------------------------------------------ CLI
def _assert_exit_2_nothing_written(
    argv: list[str], out: Path, capsys: pytest.CaptureFixture[str], match: str
) -> None:
    code, stdout, err = run(argv, capsys)
    assert code == 2, err
    assert match in " ".join(err.split())
    assert stdout == ""
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]  # no temporaries left


def test_cli_missing_archive_exits_2(
    fake_cnn_zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = ["adapt", str(tmp_path / "none.wsz"), "--zoo", str(fake_cnn_zoo), "--task", "reverse", "-o", str(out)]
    _assert_exit_2_nothing_written(argv, out, capsys, "archive does not exist")


def test_cli_unknown_task_exits_2(
    fake_cnn_zoo: Path, fake_cnn_zoo_archive: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = ["adapt", str(fake_cnn_zoo_archive[0]), "--zoo", str(fake_cnn_zoo), "--task", "nope", "-o", str(out)]
    _assert_exit_2_nothing_written(argv, out, capsys, "Unknown task 'nope'")


def test_cli_task_model_inside_archive_exits_2(
    fake_cnn_zoo: Path, fake_cnn_zoo_archive: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = ["adapt", str(fake_cnn_zoo_archive[1]), "--zoo", str(fake_cnn_zoo), "--task", "reverse", "-o", str(out)]
    _assert_exit_2_nothing_written(argv, out, capsys, "of the held-out task 'reverse'")


def test_cli_copied_task_model_is_caught_by_hash(
    fake_cnn_zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A copy of the task's checkpoint under another name is still the task's model."""
    from weightspace.collection import Collection
    from weightspace.compress import compress

    copies = tmp_path / "copies"
    copies.mkdir()
    for p in sorted((fake_cnn_zoo / "models").glob("*.safetensors")):
        shutil.copy(p, copies / f"x{p.name}")
    compress(
        Collection.from_paths([copies], base=fake_cnn_zoo / "base.safetensors", private=["head.*"]),
        tmp_path / "c.wsz",
        n_components=2,
    )
    out = tmp_path / "out"
    argv = ["adapt", str(tmp_path / "c.wsz"), "--zoo", str(fake_cnn_zoo), "--task", "reverse", "-o", str(out)]
    _assert_exit_2_nothing_written(argv, out, capsys, "contains zoo model '002_reverse'")


def test_cli_bad_zoo_and_variant_exit_2(
    fake_cnn_zoo_archive: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = ["adapt", str(fake_cnn_zoo_archive[0]), "--zoo", str(tmp_path), "--task", "reverse", "-o", str(out)]
    _assert_exit_2_nothing_written(argv, out, capsys, "not a zoo directory")
    argv = [
        "adapt",
        str(fake_cnn_zoo_archive[0]),
        "--zoo",
        str(tmp_path),
        "--task",
        "reverse",
        "-o",
        str(out),
        "--variant",
        "svd",
    ]
    _assert_exit_2_nothing_written(argv, out, capsys, "--variant must be one of auto, hosvd, lora-hosvd, pca")


def test_cli_json_run(
    fake_cnn_zoo: Path, fake_cnn_zoo_archive: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = [
        "adapt",
        str(fake_cnn_zoo_archive[0]),
        "--zoo",
        str(fake_cnn_zoo),
        "--task",
        "reverse",
        "-o",
        str(out),
        "--ks",
        "1",
        "--steps",
        "1",
        "--seed",
        "1",
        "--json",
    ]
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["task"] == "reverse"
    assert doc["steps"] == 1
    assert doc["main_k"] == 1
    assert {r["name"] for r in doc["rows"]} >= {"full", "lora-r8", "coef-mean-k1", "coef-zero-k1"}
    assert (out / "results.json").is_file()
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    # An archive given on the command line is referenced, not copied.
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert cfg["save_basis"] is False
    assert Path(cfg["archive"]) == fake_cnn_zoo_archive[0].resolve()


@pytest.mark.slow
def test_benchmark_on_a_real_quick_zoo(tmp_path: Path) -> None:
    """Trains a real quick mnist1d-cnn zoo (~40 s) and runs the benchmark with its default grids."""
    from weightspace.zoo import build_zoo

    info = build_zoo("mnist1d-cnn", tmp_path / "zoo", quick=True)
    res = adaptation_benchmark(info.dir, task="reverse", ks=(1, 4), steps=60)
    rows = {r["name"]: r for r in res["rows"]}
    # Trained runs beat chance (10 classes) and the untouched base backbone with a fresh head.
    for r in rows.values():
        assert r["test_accuracy"] > max(0.2, r["init_accuracy"])
    assert (
        rows["coef-mean-k4"]["trainable_adapter"]
        < rows["lora-r8"]["trainable_adapter"]
        < rows["full"]["trainable_adapter"]
    )
    torch.testing.assert_close(
        torch.tensor(rows["full"]["test_accuracy"]), torch.tensor(rows["full"]["test_accuracy"])
    )
