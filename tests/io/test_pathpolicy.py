"""The path policy: names from metadata, regular files only, no links out of a model or archive root."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from helpers import mlp_like, write_models
from weightspace.errors import CorruptFileError, InputError, UnsafeFileError
from weightspace.io import (
    check_name,
    check_relpath,
    expand_models,
    follow_symlinks,
    open_regular,
    open_source,
    read_regular,
)


@pytest.mark.parametrize(
    "name",
    ["", ".", "..", "../x", "/etc/passwd", "a/b", "a\\b", "x\x00y", "x\x1by", ".hidden", "a" * 300, 7, None],
)
def test_check_name_refuses_anything_but_one_plain_component(name: object) -> None:
    with pytest.raises(CorruptFileError):
        check_name(name, what="shard name", path="index.json")


def test_check_name_and_relpath_accept_plain_names() -> None:
    assert check_name("model-00001-of-00002.safetensors", what="shard") == "model-00001-of-00002.safetensors"
    assert check_name("é-model", what="model name") == "é-model"
    assert check_relpath("models/m0.safetensors", what="path") == "models/m0.safetensors"
    for bad in ("../m0", "/abs/m0", "models/../../m0", "models//m0"):
        with pytest.raises(CorruptFileError):
            check_relpath(bad, what="path")


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "config.json")
    result: list[BaseException] = []

    def run() -> None:
        try:
            read_regular(tmp_path / "config.json", limit=100, what="config")
        except BaseException as err:
            result.append(err)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive(), "reading a FIFO blocked"
    assert isinstance(result[0], UnsafeFileError)
    assert "not a regular file (a FIFO)" in str(result[0])


def test_links_out_of_the_root_are_refused_unless_followed(tmp_path: Path) -> None:
    (tmp_path / "outside.txt").write_text("{}")
    root = tmp_path / "model"
    root.mkdir()
    (root / "inside.txt").write_text("{}")
    (root / "out").symlink_to(tmp_path / "outside.txt")
    (root / "in").symlink_to("inside.txt")
    assert read_regular(root / "in", limit=10, root=root) == b"{}"  # a link that stays inside is fine
    with pytest.raises(UnsafeFileError, match=r"outside .*--follow-symlinks"):
        read_regular(root / "out", limit=10, root=root)
    with follow_symlinks():
        assert read_regular(root / "out", limit=10, root=root) == b"{}"
    os.close(open_regular(root / "out"))  # without a root, a path the user names is taken as given


def test_read_regular_caps_the_size_before_reading(tmp_path: Path) -> None:
    p = tmp_path / "big.json"
    with open(p, "wb") as fh:
        fh.truncate(1 << 30)  # sparse: costs nothing, would cost 1 GiB of RAM to read
    with pytest.raises(CorruptFileError, match="more than the 1024-byte limit"):
        read_regular(p, limit=1024)


def test_model_directory_files_must_stay_inside(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    outside = tmp_path / "secret.safetensors"
    save_file(mlp_like(g), outside)
    model = tmp_path / "hf"
    model.mkdir()
    (model / "model.safetensors").symlink_to(outside)
    with pytest.raises(UnsafeFileError, match="outside"):
        open_source(model)
    with follow_symlinks():
        assert open_source(model).format == "hf-dir"


def test_folder_children_linking_out_are_refused_named_paths_are_not(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    write_models(tmp_path / "elsewhere", [mlp_like(g)])
    folder = tmp_path / "models"
    write_models(folder, [mlp_like(g), mlp_like(g)])
    (folder / "m9.safetensors").symlink_to(tmp_path / "elsewhere" / "m0.safetensors")
    with pytest.raises(UnsafeFileError, match="outside the folder"):
        expand_models([folder])
    with follow_symlinks():
        assert len(expand_models([folder])) == 3
    assert expand_models([folder / "m9.safetensors"]) == [folder / "m9.safetensors"]  # named directly: followed


def test_zoo_json_paths_stay_inside_the_zoo(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    write_models(tmp_path / "zoo" / "models", [mlp_like(g), mlp_like(g)])
    write_models(tmp_path, [mlp_like(g)], prefix="secret")
    for bad in ("../secret0.safetensors", str(tmp_path / "secret0.safetensors")):
        doc = {"zoo": "x", "models": [{"path": "models/m0.safetensors"}, {"path": bad}]}
        (tmp_path / "zoo" / "zoo.json").write_text(json.dumps(doc))
        with pytest.raises(InputError, match="zoo model path"):
            expand_models([tmp_path / "zoo"])
    doc = {"zoo": "x", "models": [{"path": "models/m0.safetensors"}, {"path": "models/m1.safetensors"}]}
    (tmp_path / "zoo" / "zoo.json").write_text(json.dumps(doc))
    assert [p.name for p in expand_models([tmp_path / "zoo"])] == ["m0.safetensors", "m1.safetensors"]
