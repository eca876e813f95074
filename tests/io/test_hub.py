"""Hugging Face Hub ids as MODELS and --base, resolved offline from a cache laid out by hand (no network)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from helpers import mlp_like, write_adapter
from weightspace.collection import Collection
from weightspace.errors import InputError
from weightspace.io import expand_models, resolve_model_path


def cache_repo(
    cache: Path, repo: str, files: dict[str, bytes], *, commit: str | None = None, ref: str = "main"
) -> Path:
    """One repo in the Hub cache layout: blobs by hash, ``snapshots/<commit>/`` symlinks, ``refs/<ref>``."""
    root = cache / ("models--" + repo.replace("/", "--"))
    commit = commit or hashlib.sha1(repo.encode() + ref.encode()).hexdigest()
    snap = root / "snapshots" / commit
    for name, data in files.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snap / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / ref).write_text(commit)
    return snap


def st_bytes(tmp: Path, sd: dict[str, torch.Tensor]) -> bytes:
    p = tmp / "tmp.safetensors"
    save_file(sd, p)
    return p.read_bytes()


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A Hub cache under HF_HOME with three fine-tunes, a base and a subfolder repo; offline."""
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    g = torch.Generator().manual_seed(0)
    snaps = {}
    for name in ("myorg/tiny-ft0", "myorg/tiny-ft1", "other/tiny-ft0", "myorg/tiny-base"):
        files = {"model.safetensors": st_bytes(tmp_path, mlp_like(g)), "config.json": b"{}"}
        snaps[name] = cache_repo(cache, name, files)
    snaps["myorg/tiny-ft0@v1"] = cache_repo(
        cache, "myorg/tiny-ft0", {"model.safetensors": st_bytes(tmp_path, mlp_like(g))}, ref="v1", commit="1" * 40
    )
    snaps["myorg/multi"] = cache_repo(
        cache, "myorg/multi", {"ft-a/model.safetensors": st_bytes(tmp_path, mlp_like(g)), "README.md": b"x"}
    )
    return {"cache": cache, "snaps": snaps, "tmp": tmp_path}


def test_org_name_rev_and_hf_scheme_resolve_to_cached_snapshots(hub: dict) -> None:
    snaps = hub["snaps"]
    assert expand_models(["myorg/tiny-ft0"]) == [snaps["myorg/tiny-ft0"]]
    assert expand_models(["myorg/tiny-ft0@v1"]) == [snaps["myorg/tiny-ft0@v1"]]
    assert expand_models(["hf://myorg/tiny-ft1"]) == [snaps["myorg/tiny-ft1"]]
    assert expand_models(["hf://myorg/multi/ft-a"]) == [snaps["myorg/multi"] / "ft-a"]
    assert resolve_model_path("myorg/tiny-base") == snaps["myorg/tiny-base"]


def test_cache_root_and_hub_folder_are_models(hub: dict) -> None:
    root = hub["cache"] / "models--myorg--tiny-ft0"
    assert expand_models([str(root)]) == [hub["snaps"]["myorg/tiny-ft0"]]  # refs/main, not the v1 snapshot
    every = expand_models([str(hub["cache"])])  # the hub folder: one model per repo
    assert hub["snaps"]["myorg/tiny-base"] in every


def test_models_are_named_by_repo_not_commit_hash(hub: dict) -> None:
    coll = Collection.from_paths(["myorg/tiny-ft0", "myorg/tiny-ft1", "hf://other/tiny-ft0"])
    assert coll.names == ["myorg-tiny-ft0", "tiny-ft1", "other-tiny-ft0"]
    coll = Collection.from_paths([str(hub["snaps"]["myorg/tiny-ft1"]), "myorg/tiny-base"], base="myorg/tiny-ft0")
    assert coll.names == ["tiny-ft1", "tiny-base"]
    assert coll.base is not None
    assert coll.base.path == hub["snaps"]["myorg/tiny-ft0"]


def test_an_uncached_id_offline_names_the_id_and_how_to_get_it(hub: dict) -> None:
    with pytest.raises(
        InputError, match=r"Hub id 'myorg/absent' is not in the local cache .* HF_HUB_OFFLINE"
    ) as info:
        expand_models(["myorg/absent"])
    assert "HF_HUB_OFFLINE=0" in str(info.value)
    with pytest.raises(InputError, match="no subfolder 'nope'"):
        expand_models(["hf://myorg/multi/nope"])


def test_local_paths_win_over_hub_ids(hub: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    local = hub["tmp"] / "myorg" / "tiny-ft0"
    local.mkdir(parents=True)
    save_file(mlp_like(torch.Generator().manual_seed(5)), local / "model.safetensors")
    monkeypatch.chdir(hub["tmp"])
    assert expand_models(["myorg/tiny-ft0"]) == [local]


def test_cli_takes_hub_ids_for_models_and_base(hub: dict, capsys: pytest.CaptureFixture[str]) -> None:
    from weightspace.cli import main

    with pytest.raises(SystemExit) as info:
        main(["inspect", "myorg/tiny-ft0", "hf://myorg/tiny-ft1", "--base", "myorg/tiny-base", "--json"])
    out, err = capsys.readouterr()
    assert info.value.code == 0, err
    summary = json.loads(out)
    assert [m["name"] for m in summary["models"]] == ["tiny-ft0", "tiny-ft1"]
    assert summary["base"] == str(hub["snaps"]["myorg/tiny-base"])


def test_merge_takes_the_base_from_adapter_config_and_says_so(
    hub: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    from weightspace.cli import main

    g = torch.Generator().manual_seed(3)
    adapters = []
    for i in range(2):
        d = hub["tmp"] / f"adapter{i}"
        write_adapter(
            d,
            {"fc1": (torch.randn(2, 10, generator=g), torch.randn(12, 2, generator=g))},
            r=2,
            alpha=4,
            base_model_name_or_path="myorg/tiny-base",
        )
        adapters.append(str(d))
    out = hub["tmp"] / "merged"  # the base is an HF model directory, so is the merged model
    with pytest.raises(SystemExit) as info:
        main(["merge", *adapters, "--method", "mean", "--format", "full", "-o", str(out)])
    _, err = capsys.readouterr()
    assert info.value.code == 0, err
    assert "using --base myorg/tiny-base" in " ".join(err.split())
    assert "base_model_name_or_path" in err
    assert (out / "model.safetensors").is_file()
    # An adapter base that does not resolve is named in the error that asks for --base.
    for a in adapters:
        cfg = Path(a) / "adapter_config.json"
        cfg.write_text(cfg.read_text().replace("myorg/tiny-base", "myorg/not-cached"))
    with pytest.raises(SystemExit) as info:
        main(
            ["merge", *adapters, "--method", "mean", "--format", "full", "-o", str(hub["tmp"] / "m2.safetensors")]
        )
    _, err = capsys.readouterr()
    assert info.value.code == 2
    assert "pass --base BASE" in " ".join(err.split())
    assert "myorg/not-cached" in err


def test_reconstruct_writes_folders_named_by_repo(hub: dict, capsys: pytest.CaptureFixture[str]) -> None:
    from weightspace.cli import main

    archive = hub["tmp"] / "hub.wsz"
    with pytest.raises(SystemExit) as info:
        main(
            ["compress", "myorg/tiny-ft0", "myorg/tiny-ft1", "other/tiny-ft0", "-o", str(archive), "-q", "-k", "1"]
        )
    assert info.value.code == 0, capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["reconstruct", str(archive), "--all", "-o", str(hub["tmp"] / "rebuilt"), "-q"])
    assert info.value.code == 0, capsys.readouterr().err
    assert sorted(p.name for p in (hub["tmp"] / "rebuilt").iterdir() if not p.name.startswith(".")) == [
        "myorg-tiny-ft0",
        "other-tiny-ft0",
        "tiny-ft1",
    ]
