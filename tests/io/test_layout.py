"""The one streaming layout writer: single file, HF directory, sharded directory, adapter, pickles; atomicity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from weightspace.errors import (
    CorruptFileError,
    InputError,
    ShapeMismatchError,
    TensorKeyError,
    UnsupportedFormatError,
)
from weightspace.io import (
    SHARD_INDEX,
    Layout,
    LayoutWriter,
    SafetensorsFile,
    check_destination,
    open_source,
    write_model,
)


def state() -> dict[str, torch.Tensor]:
    """Keys deliberately not in sorted order, several dtypes, a 0-d tensor and an integer buffer."""
    g = torch.Generator().manual_seed(0)
    return {
        "z.weight": torch.randn(4, 3, generator=g),
        "a.weight": torch.randn(2, 3, 3, generator=g).to(torch.bfloat16),
        "m.bias": torch.randn(4, generator=g).half(),
        "scale": torch.randn((), generator=g, dtype=torch.float64),
        "position_ids": torch.arange(5),
    }


def specs(sd: dict[str, torch.Tensor]) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    return {k: (v.dtype, tuple(v.shape)) for k, v in sd.items()}


def sharded_template(d: Path, sd: dict[str, torch.Tensor]) -> Path:
    """A sharded base: keys split over two shards (not by sorted order), an index with extra metadata."""
    d.mkdir(parents=True)
    shards = {"w-1.safetensors": ["z.weight", "scale"], "w-2.safetensors": ["a.weight", "m.bias", "position_ids"]}
    weight_map = {}
    for shard, keys in shards.items():
        save_file({k: sd[k] for k in keys}, d / shard)
        weight_map.update(dict.fromkeys(keys, shard))
    index = {"metadata": {"total_size": 0, "origin": "test"}, "weight_map": weight_map}
    (d / SHARD_INDEX).write_text(json.dumps(index))
    (d / "config.json").write_text('{"model_type": "tiny"}')
    return d


def write_all(dest: Path, layout: Layout, sd: dict[str, torch.Tensor], order: list[str] | None = None) -> None:
    with LayoutWriter(dest, layout, specs(sd)) as w:
        for key in order or list(sd):
            w.write(key, sd[key])


def assert_same(src_tensors: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(src_tensors)  # key order kept
    for key, t in src_tensors.items():
        assert got[key].dtype == t.dtype, key
        assert got[key].shape == t.shape, key
        assert torch.equal(got[key], t), key


def read_back(path: Path) -> dict[str, torch.Tensor]:
    src = open_source(path, allow_pickle=True)
    return {k: src.read(k) for k in src.entries}


# -------------------------------------------------------------------------------------------------- layouts


def test_single_file_round_trip_in_any_write_order(tmp_path: Path) -> None:
    sd = state()
    dest = tmp_path / "m.safetensors"
    write_all(dest, Layout("safetensors", {"note": "x"}), sd, order=list(reversed(sd)))
    assert_same(sd, read_back(dest))
    assert SafetensorsFile(dest).keys() == list(sd)  # file order is declaration order, not write order
    assert SafetensorsFile(dest).metadata == {"note": "x", "format": "pt"}
    ref = load_file(dest)  # the reference reader agrees
    assert all(torch.equal(ref[k], sd[k]) for k in sd)


def test_hf_dir_writes_configs(tmp_path: Path) -> None:
    sd = state()
    dest = tmp_path / "model"
    write_all(dest, Layout("hf-dir", configs={"config.json": '{"a": 1}', "generation_config.json": "{}"}), sd)
    assert sorted(p.name for p in dest.iterdir()) == ["config.json", "generation_config.json", "model.safetensors"]
    assert (dest / "config.json").read_text() == '{"a": 1}'
    src = open_source(dest)
    assert src.format == "hf-dir"
    assert_same(sd, read_back(dest))


def test_sharded_follows_the_template_shard_map(tmp_path: Path) -> None:
    sd = state()
    template = open_source(sharded_template(tmp_path / "base", sd))
    layout = Layout.of(template)
    assert layout.format == "hf-sharded"
    dest = tmp_path / "out"
    out = {**sd, "new.weight": torch.ones(2, 2)}  # a key the template does not map goes to its last shard
    w = LayoutWriter(dest, layout, specs(out))
    assert w.files == {
        "w-1.safetensors": ["z.weight", "scale"],
        "w-2.safetensors": ["a.weight", "m.bias", "position_ids", "new.weight"],
    }
    with w:
        for key, t in out.items():
            w.write(key, t)
    assert sorted(p.name for p in dest.iterdir()) == [
        "config.json",
        SHARD_INDEX,
        "w-1.safetensors",
        "w-2.safetensors",
    ]
    index = json.loads((dest / SHARD_INDEX).read_text())
    assert index["metadata"] == {
        "total_size": sum(t.numel() * t.element_size() for t in out.values()),
        "origin": "test",
    }
    template_map = json.loads((tmp_path / "base" / SHARD_INDEX).read_text())["weight_map"]
    assert index["weight_map"] == {**template_map, "new.weight": "w-2.safetensors"}
    # Sorted by shard, then by key (as before the writers were merged into one).
    assert list(index["weight_map"]) == ["scale", "z.weight", "a.weight", "m.bias", "new.weight", "position_ids"]
    assert SafetensorsFile(dest / "w-1.safetensors").keys() == ["z.weight", "scale"]
    got = read_back(dest)
    assert open_source(dest).format == "hf-sharded"
    assert_same(out, {k: got[k] for k in out})


def test_sharded_without_a_template_index_is_one_shard(tmp_path: Path) -> None:
    sd = state()
    write_model(tmp_path / "m", "hf-sharded", sd)
    index = json.loads((tmp_path / "m" / SHARD_INDEX).read_text())
    assert set(index["weight_map"].values()) == {"model-00001-of-00001.safetensors"}
    got = read_back(tmp_path / "m")
    assert_same(sd, {k: got[k] for k in sd})  # a sharded source lists keys in index order; the shard keeps ours
    assert SafetensorsFile(tmp_path / "m" / "model-00001-of-00001.safetensors").keys() == list(sd)


def test_peft_and_pickle_layouts(tmp_path: Path) -> None:
    sd = state()
    write_all(tmp_path / "m.bin", Layout("torch"), sd)
    loaded = torch.load(tmp_path / "m.bin", weights_only=True)
    assert_same(sd, loaded)
    write_all(tmp_path / "d", Layout("torch-dir", configs={"config.json": "{}"}), sd)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["config.json", "pytorch_model.bin"]
    assert_same(sd, torch.load(tmp_path / "d" / "pytorch_model.bin", weights_only=True))
    lora = {
        "base_model.model.q.lora_A.weight": torch.ones(2, 3),
        "base_model.model.q.lora_B.weight": torch.ones(4, 2),
    }
    cfg = json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 2})
    write_all(tmp_path / "ad", Layout("peft", configs={"adapter_config.json": cfg}), lora)
    src = open_source(tmp_path / "ad")
    assert src.format == "peft"
    assert list(src.entries) == ["q.weight"]


def test_write_casts_to_the_declared_dtype(tmp_path: Path) -> None:
    dest = tmp_path / "m.safetensors"
    with LayoutWriter(dest, Layout("safetensors"), {"w": (torch.bfloat16, (2,))}) as w:
        w.write("w", torch.tensor([1.5, -2.0], dtype=torch.float64))
    assert load_file(dest)["w"].dtype == torch.bfloat16


def test_layout_of_each_source_format(tmp_path: Path) -> None:
    sd = state()
    save_file(sd, tmp_path / "m.safetensors", metadata={"k": "v"})
    assert Layout.of(open_source(tmp_path / "m.safetensors")) == Layout("safetensors", {"k": "v"}, {})
    torch.save(sd, tmp_path / "m.bin")
    assert Layout.of(open_source(tmp_path / "m.bin", allow_pickle=True)).format == "torch"
    (tmp_path / "td").mkdir()
    torch.save(sd, tmp_path / "td" / "pytorch_model.bin")
    assert Layout.of(open_source(tmp_path / "td", allow_pickle=True)).format == "torch-dir"


# ------------------------------------------------------------------------------------------------ atomicity


@pytest.mark.parametrize("fmt", ["safetensors", "hf-dir", "hf-sharded", "torch", "torch-dir"])
def test_an_error_half_way_leaves_the_destination_untouched(tmp_path: Path, fmt: str) -> None:
    sd = state()
    dest = tmp_path / ("m.safetensors" if fmt == "safetensors" else "m.bin" if fmt == "torch" else "m")
    layout = Layout(fmt, configs={} if fmt in ("safetensors", "torch") else {"config.json": "{}"})
    write_all(dest, layout, sd)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    changed = {k: (v + 1 if v.is_floating_point() else v) for k, v in sd.items()}

    class Boom(Exception):
        pass

    def fail_half_way() -> None:
        with LayoutWriter(dest, layout, specs(changed)) as w:
            w.write("z.weight", changed["z.weight"])
            raise Boom

    with pytest.raises(Boom):
        fail_half_way()
    after = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # same files, same bytes, no temporaries left
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("fmt", ["safetensors", "hf-sharded", "torch"])
def test_an_unwritten_tensor_fails_and_writes_nothing(tmp_path: Path, fmt: str) -> None:
    dest = tmp_path / "out"
    with (
        pytest.raises(RuntimeError, match="unwritten tensors"),
        LayoutWriter(dest, Layout(fmt), specs(state())) as w,
    ):
        w.write("z.weight", state()["z.weight"])
    assert list(tmp_path.iterdir()) == []


def test_bad_writes_are_errors_naming_the_key(tmp_path: Path) -> None:
    for fmt in ("safetensors", "torch"):
        dest = tmp_path / f"out-{fmt}"
        with (
            pytest.raises(ShapeMismatchError, match=r"tensor 'w': expected shape \(2,\), got \(3,\)"),
            LayoutWriter(dest, Layout(fmt), {"w": (torch.float32, (2,))}) as w,
        ):
            w.write("w", torch.zeros(3))
        with (
            pytest.raises(TensorKeyError, match=r"tensor 'x': not declared"),
            LayoutWriter(dest, Layout(fmt), {"w": (torch.float32, (2,))}) as w,
        ):
            w.write("x", torch.zeros(2))
        assert not dest.exists()
    with pytest.raises(RuntimeError, match="outside its with-block"):
        LayoutWriter(tmp_path / "x", Layout("safetensors"), {}).write("w", torch.zeros(1))


def test_existing_directory_is_replaced_whole(tmp_path: Path) -> None:
    dest = tmp_path / "m"
    write_model(
        dest, "hf-dir", {"w": torch.ones(2)}, configs={"config.json": "{}", "generation_config.json": "{}"}
    )
    write_model(dest, "hf-dir", {"w": torch.zeros(2)}, configs={"config.json": "{}"})
    assert sorted(p.name for p in dest.iterdir()) == ["config.json", "model.safetensors"]
    assert torch.equal(load_file(dest / "model.safetensors")["w"], torch.zeros(2))


# ---------------------------------------------------------------------------------------------- bad layouts


def test_unknown_layout_and_unsafe_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedFormatError, match="cannot write layout 'onnx'"):
        Layout("onnx")
    with pytest.raises(CorruptFileError, match="must be one plain file name"):
        Layout("hf-dir", configs={"../config.json": "{}"})
    index = json.dumps({"weight_map": {"w": "../../evil.safetensors"}})
    with pytest.raises(
        CorruptFileError, match=r"tensor 'w': shard name '../../evil.safetensors' must be one plain"
    ):
        LayoutWriter(
            tmp_path / "m", Layout("hf-sharded", configs={SHARD_INDEX: index}), {"w": (torch.float32, (1,))}
        )
    with pytest.raises(CorruptFileError, match="the template's shard index is not valid JSON"):
        Layout("hf-sharded", configs={SHARD_INDEX: "{"}).shard_index()


def test_check_destination(tmp_path: Path) -> None:
    model = tmp_path / "in.safetensors"
    save_file({"w": torch.ones(1)}, model)
    with pytest.raises(InputError, match="refusing to write the merged model over one of its inputs"):
        check_destination(model, "safetensors", inputs=[model], what="merged model")
    (tmp_path / "d").mkdir()
    with pytest.raises(InputError, match="output is an existing directory"):
        check_destination(tmp_path / "d", Layout("safetensors"))
    with pytest.raises(InputError, match="output exists and is a file"):
        check_destination(model, "hf-dir")
    (tmp_path / "d" / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match=r"did not write it as .*refusing to replace it"):
        check_destination(tmp_path / "d", "hf-dir")
    write_model(tmp_path / "m", "hf-dir", {"w": torch.ones(1)})
    with pytest.raises(InputError, match="did not write it as a merged model"):  # a user's model folder is kept
        check_destination(tmp_path / "m", "hf-dir", what="merged model")
    assert check_destination(tmp_path / "m", "hf-dir", overwrite=True) == tmp_path / "m"
    with LayoutWriter(tmp_path / "w", Layout("hf-dir"), {"w": (torch.float32, (1,))}, marker="model") as w:
        w.write("w", torch.ones(1))
    assert check_destination(tmp_path / "w", "hf-dir") == tmp_path / "w"  # weightspace's own output is replaced
    assert check_destination(str(tmp_path / "new"), "peft") == tmp_path / "new"
