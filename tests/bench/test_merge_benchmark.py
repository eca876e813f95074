"""The merge benchmark on a tiny fake fine-tune zoo (and, marked slow, on a real quick zoo)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import weightspace.bench.merge as bench_merge
import weightspace.cli._merge_cmd  # noqa: F401  (registers the command)
from weightspace.bench import benchmark_table, evaluate_merged, merge_benchmark
from weightspace.cli import main
from weightspace.errors import InputError, ParameterError
from weightspace.merge import merge
from weightspace.zoo import load_zoo_info

SMALL_SWEEPS = {
    "task_arithmetic": {"lam": (0.3, 0.6, 1.0)},
    "ties": {"density": (0.2, 1.0)},
    "subspace": {"k": (1, 2, 8)},
}


@pytest.fixture(scope="module")
def result(fake_zoo_dir: Path, fake_zoo_class: type) -> tuple[dict, object]:
    zoo = fake_zoo_class()
    res = merge_benchmark(
        fake_zoo_dir, ["mean", "task_arithmetic", "ties", "subspace"], sweeps=SMALL_SWEEPS, zoo=zoo
    )
    return res, zoo


def test_benchmark_table_structure(result: tuple[dict, object], fake_zoo_dir: Path) -> None:
    res, zoo = result
    json.dumps(res)
    names = [c["model"] for c in res["columns"]]
    assert [c["task"] for c in res["columns"]] == ["swap", "pair", "shift"]
    kinds = [r["kind"] for r in res["rows"]]
    assert kinds == ["upper_bound", "lower_bound", *["untuned"] * 4, *["tuned"] * 3, "check"]
    for row in res["rows"]:
        assert set(row["accuracy"]) == set(names)
        assert row["average"] == pytest.approx(sum(row["accuracy"].values()) / len(names))
        assert all(0.0 <= a <= 1.0 for a in row["accuracy"].values())
    upper = res["rows"][0]
    for c in res["columns"]:
        assert upper["accuracy"][c["model"]] == zoo.accuracy(
            fake_zoo_dir / "models" / f"{c['model']}.safetensors", c["task"]
        )
    # The fine-tuned models are (much) better than their heads on the base backbone on these relabelled tasks.
    assert upper["average"] > res["rows"][1]["average"]
    table = benchmark_table(res)
    assert len(table.splitlines()) == 2 + len(res["rows"])
    assert "tuned on validation" in table


def test_tuned_rows_select_on_validation_only(result: tuple[dict, object]) -> None:
    res, zoo = result
    tuned = {r["method"]: r for r in res["rows"] if r["kind"] == "tuned"}
    assert set(tuned) == {"task_arithmetic", "ties", "subspace"}
    for method, row in tuned.items():
        ((param, grid),) = SMALL_SWEEPS[method].items()
        assert "tuned on validation" in row["label"]
        assert row["tuned_param"] == param
        values = [s["value"] for s in row["sweep"]]
        if method == "subspace":
            assert values == [1, 2, 3]  # k is capped at the number of models
        else:
            assert values == list(grid)
        best = max(row["sweep"], key=lambda s: s["validation_average"])
        assert row["selected"] == best["value"]
        assert row["params"][param] == best["value"]
    # The benchmark asked the zoo for training data only: validation is carved from it; test data is only
    # touched inside accuracy().
    assert {split for _, split in zoo.requested} == {"train"}
    assert res["validation"]["n_examples"] == {"swap": 80, "pair": 80, "shift": 80}


def test_centered_coefficients_equal_the_mean(result: tuple[dict, object]) -> None:
    res, _ = result
    check = res["centered_coefficients"]
    assert check["max_unit_rel_diff_from_mean"] < 1e-12
    assert check["accuracy_difference_from_mean"] == 0.0
    mean = next(r for r in res["rows"] if r["label"] == "mean")
    assert mean["rel_diff_from_mean"] == 0.0
    svm = res["subspace_vs_mean"]
    assert svm["rel_diff_from_mean"] > 1e-3  # subspace (sign election on coefficients) is not the mean
    assert svm["accuracy_difference"] == pytest.approx(svm["subspace_average"] - svm["mean_average"])
    assert res["best_untuned"] in {"mean", "task_arithmetic", "ties", "subspace"}
    assert {p["key"] for p in res["not_merged"]} == {"head.weight", "head.bias"}


def test_evaluate_merged_output(fake_zoo_dir: Path, fake_zoo, tmp_path: Path) -> None:
    models = sorted((fake_zoo_dir / "models").glob("*.safetensors"))
    out = tmp_path / "merged.safetensors"
    merge(models[:2], base=fake_zoo_dir / "base.safetensors", method="mean", out=out, private=["head.*"])
    res = evaluate_merged(fake_zoo_dir, out, models=models[:2], zoo=fake_zoo)
    assert [r["kind"] for r in res["rows"]] == ["upper_bound", "lower_bound", "merged"]
    assert [c["model"] for c in res["columns"]] == [p.stem for p in models[:2]]
    with pytest.raises(InputError, match=r"none of the merged models belongs to this zoo"):
        evaluate_merged(fake_zoo_dir, out, models=[tmp_path / "x.safetensors"], zoo=fake_zoo)


def test_benchmark_argument_errors(fake_zoo_dir: Path, fake_zoo, tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match=r"Unknown merge method 'avg'"):
        merge_benchmark(fake_zoo_dir, ["avg"], zoo=fake_zoo)
    with pytest.raises(ParameterError, match=r"The 'density' parameter of merge method 'ties' must be"):
        merge_benchmark(fake_zoo_dir, ["ties"], sweeps={"ties": {"density": (0.5, 2.0)}}, zoo=fake_zoo)
    with pytest.raises(InputError, match=r"zoo\.json is missing"):
        merge_benchmark(tmp_path, zoo=fake_zoo)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def test_benchmark_accepts_a_parsed_zoo(fake_zoo_dir: Path, fake_zoo) -> None:
    """A ZooInfo from build_zoo/load_zoo_info gives the same result as its directory."""
    info = load_zoo_info(fake_zoo_dir)
    kw = {"sweep": False, "zoo": fake_zoo}
    a, b = merge_benchmark(fake_zoo_dir, ["mean"], **kw), merge_benchmark(info, ["mean"], **kw)
    assert (a["zoo_dir"], a["columns"], a["rows"]) == (b["zoo_dir"], b["columns"], b["rows"])
    model = info.models[0].path
    assert (
        evaluate_merged(info, model, zoo=fake_zoo)["rows"]
        == evaluate_merged(fake_zoo_dir, model, zoo=fake_zoo)["rows"]
    )
    with pytest.raises(
        ParameterError, match=r"The 'val_fraction' parameter of merge_benchmark must be a float in \(0, 1\)"
    ):
        merge_benchmark(info, ["mean"], val_fraction=1.0, **kw)


# ------------------------------------------------------------------------------------------------ CLI
def test_eval_with_a_fake_zoo(
    fake_zoo_dir: Path,
    fake_zoo_class: type,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The zoo.json names "fake-finetune", which is not registered: the harness's zoo lookup returns the fake.
    monkeypatch.setattr(bench_merge, "get_zoo", lambda name: fake_zoo_class())
    models = sorted(str(p) for p in (fake_zoo_dir / "models").glob("*.safetensors"))
    out = tmp_path / "merged.safetensors"
    argv = [
        "merge",
        *models,
        "--base",
        str(fake_zoo_dir / "base.safetensors"),
        "-m",
        "mean",
        "--private",
        "head.*",
    ]
    code, stdout, stderr = run([*argv, "-o", str(out), "--eval", str(fake_zoo_dir), "--json"], capsys)
    assert code == 0, stderr
    result = json.loads(stdout)["eval"]
    assert [r["kind"] for r in result["rows"]] == ["upper_bound", "lower_bound", "merged"]
    assert "lower bound" in stderr

    code, stdout, stderr = run(
        ["merge", "--eval", str(fake_zoo_dir), "-m", "ties", "--no-sweep", "--json"], capsys
    )
    assert code == 0, stderr
    bench = json.loads(stdout)
    assert [r["label"] for r in bench["rows"]][2:] == ["ties", "centered coefficients, summed (= mean)"]

    code, _, stderr = run([*argv, "-o", str(tmp_path / "x.safetensors"), "--eval", str(tmp_path)], capsys)
    assert code == 2
    assert "zoo.json is missing" in stderr
    assert not (tmp_path / "x.safetensors").exists()


def _build_zoo():
    zoo_pkg = pytest.importorskip("weightspace.zoo")
    build = getattr(zoo_pkg, "build_zoo", None)
    if build is None or not hasattr(zoo_pkg, "get_zoo"):
        pytest.skip("weightspace.zoo does not provide build_zoo/get_zoo yet")
    return build


@pytest.mark.slow
def test_benchmark_on_a_real_quick_zoo(tmp_path: Path) -> None:
    build = _build_zoo()
    build("mnist1d-cnn", tmp_path / "zoo", n=3, quick=True)
    res = merge_benchmark(tmp_path / "zoo", ["mean", "ties", "subspace"], sweeps={"ties": {"density": (0.2, 1.0)}})
    assert len(res["columns"]) == 3
    assert [r["kind"] for r in res["rows"]] == [
        "upper_bound",
        "lower_bound",
        "untuned",
        "untuned",
        "untuned",
        "tuned",
        "check",
    ]
    assert res["centered_coefficients"]["max_unit_rel_diff_from_mean"] < 1e-10
