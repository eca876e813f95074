"""YAML recipes: validation errors that name the line and the field, mergekit names, and running them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import mlp_like
from weightspace.errors import InputError
from weightspace.merge import merge
from weightspace.recipes import CompressRecipe, MergeRecipe, load_recipe, merge_params, parse_recipe, run_recipe


@pytest.mark.parametrize(
    ("text", "line", "field", "message"),
    [
        ("merge_method: ties\nmodels: []\n", 2, "models", "at least 1 item"),
        (
            "merge_method: ties\nmodels:\n  - model: a\n    parametrs: {weight: 1}\n",
            4,
            "models[0].parametrs",
            "unknown",
        ),
        (
            "merge_method: ties\nmodels:\n  - a\n  - model: b\n    parameters:\n      weight: x\n",
            6,
            "models[1].parameters.weight",
            "must be a number, got 'x'",
        ),
        ("merge_method: avg\nmodels: [a]\n", 1, "merge_method", "Unknown merge method 'avg'"),
        (
            "merge_method: ties\nmodels: [a, b]\nparameters:\n  density: 1.5\n",
            4,
            "parameters.density",
            "must be a float in (0, 1]",
        ),
        (
            "merge_method: ties\nmodels: [a, b]\nparameters: {rho: 1}\n",
            3,
            "parameters.rho",
            "Unknown parameter 'rho'",
        ),
        (
            "merge_method: tsv\nmodels:\n  - model: a\n    parameters: {density: 0.5}\n",
            4,
            "models[0].parameters.density",
            "takes no per-model 'density'",
        ),
        ("merge_method: ties\nmodels: [a]\ndtype: int4\n", 3, "dtype", "Input should be"),
        ("merge_method: slerp\nmodels: [a, b, c]\n", 2, "models", "exactly 2 models"),
        ("merge_method: ties\nslices: []\nmodels: [a]\n", 2, "slices", "slices are not supported"),
        ("job: compress\nmodels: [a]\nrank: 4\nvariance: 0.5\n", 1, "(recipe)", "give rank or variance, not both"),
        ("job: analyze\nmodels: [a]\nmethod: svd\n", 3, "method", "must be one of"),
        ("job: fit\nmodels: [a]\n", 1, "job", "say what to run"),
        ("merge_method: [ties\n", 2, "(yaml)", "not valid YAML"),
    ],
)
def test_errors_name_the_line_and_the_field(text: str, line: int | None, field: str, message: str) -> None:
    with pytest.raises(InputError) as info:
        parse_recipe(text, "r.yaml")
    msg = str(info.value)
    where = f"line {line}: " if line is not None else ""
    assert msg.startswith(f"r.yaml: {where}{field}: "), msg
    assert message in msg, msg


def test_mergekit_names_are_mapped() -> None:
    r = parse_recipe(
        "merge_method: dare_linear\nbase_model: base\nmodels:\n"
        "  - model: a\n    parameters: {weight: 0.3, density: 0.5}\n"
        "  - model: b\n    parameters: {weight: 0.7}\n"
        "parameters: {density: 0.8, lambda: 0.5, int8_mask: true, rescale: true}\ndtype: bf16\n"
    )
    assert isinstance(r, MergeRecipe)
    assert r.method_name() == "dare"
    assert r.weights() == [0.3, 0.7]
    assert r.dtype == "bfloat16"
    params = merge_params(r)
    assert params["lam"] == 0.5
    assert params["p"] == pytest.approx([0.5, 0.2])  # per-model density 0.5; the recipe's 0.8 for b
    with pytest.raises(
        InputError, match=r"parameters\.rescale: weightspace's dare_ties always uses rescale: true"
    ):
        parse_recipe("merge_method: dare_ties\nmodels: [a]\nparameters: {rescale: false}\n")


def test_slerp_base_model_is_the_first_model_and_no_base_is_subtracted() -> None:
    r = parse_recipe("merge_method: slerp\nbase_model: b\nmodels: [a, b]\nparameters: {t: 0.3}\n")
    assert r.ordered_models() == ["b", "a"]
    assert r.merge_base() is None
    r = parse_recipe("merge_method: slerp\nbase_model: b\nmodels: [a]\n")
    assert r.ordered_models() == ["b", "a"]
    r = parse_recipe("merge_method: ties\nbase_model: b\nmodels: [a, c]\n")
    assert r.ordered_models() == ["a", "c"]
    assert r.merge_base() == "b"


@pytest.fixture
def models(tmp_path: Path) -> dict:
    g = torch.Generator().manual_seed(0)
    base = mlp_like(g)
    save_file(base, tmp_path / "base.safetensors")
    paths = []
    for i in range(3):
        p = tmp_path / f"ft{i}.safetensors"
        save_file({k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base.items()}, p)
        paths.append(p)
    return {"dir": tmp_path, "base": tmp_path / "base.safetensors", "paths": paths}


def test_a_mergekit_ties_recipe_runs_and_equals_the_python_call(models: dict, monkeypatch) -> None:
    monkeypatch.chdir(models["dir"])  # paths in a recipe are relative to the current directory
    recipe = models["dir"] / "ties.yaml"
    recipe.write_text(
        "merge_method: ties\nbase_model: base.safetensors\nmodels:\n"
        "  - model: ft0.safetensors\n    parameters: {weight: 0.7, density: 0.3}\n"
        "  - model: ft1.safetensors\n    parameters: {weight: 0.3}\n"
        "  - ft2.safetensors\n"
        "parameters: {density: 0.5, normalize: true}\ndtype: float16\nout: merged.safetensors\n"
    )
    result = run_recipe(recipe)
    assert result.weights == (0.7, 0.3, 1.0)
    assert result.params["density"] == (0.3, 0.5, 0.5)
    got = load_file(models["dir"] / "merged.safetensors")
    assert got["fc1.weight"].dtype == torch.float16
    direct = merge(
        models["paths"],
        base=models["base"],
        method="ties",
        params={"density": [0.3, 0.5, 0.5]},
        weights=[0.7, 0.3, 1.0],
        dtype="float16",
    ).tensors
    for key, t in direct.items():
        assert torch.equal(got[key], t), key


def test_compress_and_analyze_recipes_run_from_the_cli(models: dict, monkeypatch, capsys) -> None:
    from weightspace.cli import main

    monkeypatch.chdir(models["dir"])
    (models["dir"] / "c.yaml").write_text(
        "job: compress\nmodels: [ft0.safetensors, ft1.safetensors, ft2.safetensors]\n"
        "base_model: base.safetensors\nrank: 2\nout: a.wsz\n"
    )
    assert isinstance(load_recipe(models["dir"] / "c.yaml"), CompressRecipe)
    with pytest.raises(SystemExit) as info:
        main(["run", "c.yaml", "--json", "--quiet"])
    out, err = capsys.readouterr()
    assert info.value.code == 0, err
    summary = json.loads(out)
    assert summary["k"]["requested"] == 2
    assert summary["k"]["max"] == 2
    assert (models["dir"] / "a.wsz" / "manifest.json").is_file()
    (models["dir"] / "an.yaml").write_text(
        "job: analyze\nmodels: [ft0.safetensors, ft1.safetensors, ft2.safetensors]\nplots: false\n"
        "null_draws: 1\nout: rep\n"
    )
    with pytest.raises(SystemExit) as info:
        main(["run", "an.yaml", "-o", "rep2", "--quiet"])
    _, err = capsys.readouterr()
    assert info.value.code == 0, err
    assert (models["dir"] / "rep2" / "report.json").is_file()
    (models["dir"] / "bad.yaml").write_text("job: compress\nmodels: [ft0.safetensors]\nrank: zero\n")
    with pytest.raises(SystemExit) as info:
        main(["run", "bad.yaml", "--json"])
    out, err = capsys.readouterr()
    assert info.value.code == 2
    error = json.loads(out)
    assert error["path"] == "bad.yaml"
    assert error["error"].startswith("line 3: rank: ")
