"""A small tree of valid inputs and outputs that every hostile case starts from, and tools to corrupt it.

Layout of a sandbox ``S`` (built once per session, copied per case)::

    models/m0..m2.safetensors   full checkpoints (fc1, fc2 F32; head.weight BF16 with a per-model shape: private)
    base.safetensors            their base
    hf/h0..h2                   HF directories (model.safetensors, config.json, generation_config.json)
    sharded/s0..s2              sharded HF directories (two shards, index, config.json)
    ad/a0..a2                   PEFT LoRA adapters (r=2 on fc1 and fc2)
    pk/p0..p1.bin               pickled state dicts (torch zip format)
    unseen/u0.safetensors, unseen/h, unseen/s, unseen/a      models for ``project``
    arc/full.wsz, arc/hf.wsz, arc/sharded.wsz, arc/peft.wsz  archives of the collections above
    report/                     a weightspace report (analyze output)
    spare/hfmodel               a model folder nobody reads (an output target that must not be replaced)
    userdir/, notes.txt         a user's folder and file (must never be replaced)
    outside/                    files outside every model root (link targets, canaries)
    deep/a/b/c/d/               where outputs go, deep enough that ``../../..`` stays inside the sandbox
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

OUT_PARENT = "deep/a/b/c/d"


def _model(g: torch.Generator, i: int) -> dict[str, torch.Tensor]:
    return {
        "fc1.weight": torch.randn(4, 6, generator=g),
        "fc1.bias": torch.randn(4, generator=g),
        "fc2.weight": torch.randn(3, 4, generator=g),
        "head.weight": torch.randn(2 + i, 4, generator=g).to(torch.bfloat16),
    }


def _dense(g: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        "fc1.weight": torch.randn(4, 6, generator=g),
        "fc1.bias": torch.randn(4, generator=g),
        "fc2.weight": torch.randn(3, 4, generator=g),
    }


def _hf_dir(d: Path, sd: dict[str, torch.Tensor]) -> None:
    d.mkdir(parents=True)
    save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
    (d / "config.json").write_text(json.dumps({"model_type": "tiny", "hidden_size": 4}))
    (d / "generation_config.json").write_text(json.dumps({"max_length": 8}))


SHARD1, SHARD2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
INDEX = "model.safetensors.index.json"


def _sharded_dir(d: Path, sd: dict[str, torch.Tensor]) -> None:
    d.mkdir(parents=True)
    save_file({k: sd[k] for k in ("fc1.weight", "fc1.bias")}, d / SHARD1, metadata={"format": "pt"})
    save_file({"fc2.weight": sd["fc2.weight"]}, d / SHARD2, metadata={"format": "pt"})
    index = {
        "metadata": {"total_size": 4 * (24 + 4 + 12)},
        "weight_map": {"fc1.weight": SHARD1, "fc1.bias": SHARD1, "fc2.weight": SHARD2},
    }
    (d / INDEX).write_text(json.dumps(index))
    (d / "config.json").write_text(json.dumps({"model_type": "tiny"}))


def adapter_config(**over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "peft_type": "LORA",
        "r": 2,
        "lora_alpha": 4,
        "target_modules": ["fc1", "fc2"],
        "use_rslora": False,
        "fan_in_fan_out": False,
        "rank_pattern": {},
        "alpha_pattern": {},
        "bias": "none",
        "modules_to_save": None,
    }
    cfg.update(over)
    return cfg


def _adapter(d: Path, g: torch.Generator) -> None:
    d.mkdir(parents=True)
    p = "base_model.model."
    tensors = {
        f"{p}fc1.lora_A.weight": torch.randn(2, 6, generator=g),
        f"{p}fc1.lora_B.weight": torch.randn(4, 2, generator=g),
        f"{p}fc2.lora_A.weight": torch.randn(2, 4, generator=g),
        f"{p}fc2.lora_B.weight": torch.randn(3, 2, generator=g),
    }
    save_file(tensors, d / "adapter_model.safetensors")
    (d / "adapter_config.json").write_text(json.dumps(adapter_config()))


def build_sandbox(root: Path) -> Path:
    """Build the template sandbox under ``root`` (see the module docstring) and return it."""
    from weightspace.analyze import analyze
    from weightspace.compress import compress

    g = torch.Generator().manual_seed(0)
    (root / "models").mkdir(parents=True)
    for i in range(3):
        save_file(_model(g, i), root / "models" / f"m{i}.safetensors")
    save_file(_model(g, 0), root / "base.safetensors")
    (root / "unseen").mkdir()
    save_file(_model(g, 1), root / "unseen" / "u0.safetensors")
    for i in range(3):
        _hf_dir(root / "hf" / f"h{i}", _dense(g))
        _sharded_dir(root / "sharded" / f"s{i}", _dense(g))
        _adapter(root / "ad" / f"a{i}", g)
    _hf_dir(root / "unseen" / "h", _dense(g))
    _sharded_dir(root / "unseen" / "s", _dense(g))
    _adapter(root / "unseen" / "a", g)
    (root / "pk").mkdir()
    for i in range(2):
        torch.save(_dense(g), root / "pk" / f"p{i}.bin")
    _hf_dir(root / "spare" / "hfmodel", _dense(g))
    (root / "userdir" / "sub").mkdir(parents=True)
    (root / "userdir" / "thesis.txt").write_text("years of work\n")
    (root / "userdir" / "sub" / "data.csv").write_text("a,b\n1,2\n")
    (root / "notes.txt").write_text("my notes\n")
    (root / "outside").mkdir()
    save_file(_model(g, 0), root / "outside" / "secret.safetensors")
    save_file({"fc2.weight": torch.randn(3, 4, generator=g)}, root / "outside" / "secret-shard.safetensors")
    (root / "outside" / "secret.txt").write_text("secret\n")
    (root / "outside" / "adapter_config.json").write_text(json.dumps(adapter_config()))
    (root / OUT_PARENT).mkdir(parents=True)
    (root / "arc").mkdir()
    compress([root / "models"], root / "arc" / "full.wsz", n_components=2)
    compress([root / "hf"], root / "arc" / "hf.wsz", n_components=2)
    compress([root / "sharded"], root / "arc" / "sharded.wsz", n_components=2)
    compress([root / "ad"], root / "arc" / "peft.wsz", n_components=2)
    analyze([root / "models"], n_null=1).save(root / "report", plots=False)
    return root


# ------------------------------------------------------------------------------------------------ snapshots
def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``root`` (not following links): kind, size, mtime, link target, content hash."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = p.relative_to(root).as_posix()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                digest = hashlib.sha256(p.read_bytes()).hexdigest() if st.st_size < (1 << 20) else st.st_blocks
                out[rel] = ("file", st.st_size, st.st_mtime_ns, st.st_ino, digest)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", st.st_ino)
            else:
                out[rel] = ("special", stat.S_IFMT(st.st_mode))
    return out


def copy_sandbox(template: Path, dest: Path) -> Path:
    """A copy of the template whose files are hard links (fast); mutations must replace files, never edit them in
    place (use :func:`put`), and the template checks on teardown that none did."""
    shutil.copytree(template, dest, symlinks=True, copy_function=os.link)
    return dest


def put(path: Path, data: bytes | str) -> None:
    """Replace ``path`` with a new file holding ``data`` (a new inode: the template's hard link is untouched)."""
    if os.path.lexists(path) and not path.is_dir():
        path.unlink()
    with open(path, "wb") as fh:
        fh.write(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)


def grow(path: Path, size: int) -> None:
    """Replace ``path`` with a copy extended (sparsely) to ``size`` bytes."""
    put(path, path.read_bytes())
    with open(path, "r+b") as fh:
        fh.truncate(size)


# ------------------------------------------------------------------------------------------------ corrupting
def raw_safetensors(path: Path, header: Any = None, data: bytes = b"", *, text: str | None = None) -> None:
    """Write a safetensors file from a header object (or raw header text) and data bytes, unchecked."""
    raw = (text if text is not None else json.dumps(header)).encode("utf-8", "surrogatepass")
    put(path, struct.pack("<Q", len(raw)) + raw + data)


def header_of(path: Path) -> tuple[dict[str, Any], bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def edit_header(path: Path, fn: Callable[[dict[str, Any]], None]) -> None:
    header, data = header_of(path)
    fn(header)
    raw_safetensors(path, header, data)


def edit_json(path: Path, fn: Callable[[Any], Any]) -> None:
    """Change a JSON file in place (``fn`` mutates the parsed object; its return value is ignored)."""
    obj = json.loads(path.read_text())
    fn(obj)
    put(path, json.dumps(obj))


def edit_manifest(archive: Path, fn: Callable[[dict[str, Any]], Any]) -> None:
    edit_json(archive / "manifest.json", fn)


def rehash(archive: Path, member: str) -> None:
    """Make the manifest's record of ``member`` match its (tampered) bytes."""
    data = (archive / member).read_bytes()

    def fix(m: dict[str, Any]) -> None:
        m["members"][member] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}

    edit_manifest(archive, fix)


def rewrite_member(archive: Path, member: str, fn: Callable[[dict[str, torch.Tensor]], None]) -> None:
    """Load a safetensors member, change its tensors, save it and fix its hash in the manifest."""
    from safetensors.torch import load_file

    tensors = load_file(archive / member)
    fn(tensors)
    (archive / member).unlink()
    save_file(tensors, archive / member)
    rehash(archive, member)


def fifo(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    os.mkfifo(path)


def symlink(path: Path, target: str | Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    path.symlink_to(target)
