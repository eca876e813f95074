"""The hostile-input corpus: every case of issue 14 (and the earlier bad-input list) × the commands that read it.

A case corrupts a fresh copy of the sandbox (see ``_sandbox.py``) and names the commands that read the corrupted
input. Every (case, command) pair must exit 2 with a message naming the file (and the tensor or field where there
is one), print no traceback and no raw escape character, finish within the per-case timeout, and leave the whole
sandbox byte-for-byte as it was (nothing written outside the output, nothing left at the output path).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from hostile._sandbox import (
    INDEX,
    OUT_PARENT,
    SHARD1,
    SHARD2,
    adapter_config,
    edit_header,
    edit_json,
    edit_manifest,
    fifo,
    grow,
    header_of,
    put,
    raw_safetensors,
    rehash,
    rewrite_member,
    symlink,
)

OUT = "{S}/" + OUT_PARENT + "/out"

COMMANDS: dict[str, list[str]] = {
    # a folder of full checkpoints; m0 is the corrupted one
    "inspect": ["inspect", "{S}/models"],
    "compress": ["compress", "{S}/models", "-o", OUT + ".wsz"],
    "analyze": ["analyze", "{S}/models", "-o", OUT, "--no-plots", "--null-draws", "1"],
    "merge": ["merge", "{S}/models", "--base", "{S}/base.safetensors", "-m", "mean", "-o", OUT + ".safetensors"],
    "project": ["project", "{S}/arc/full.wsz", "{S}/models/m0.safetensors"],
    # the base
    "compress-base": ["compress", "{S}/models", "--base", "{S}/base.safetensors", "-o", OUT + ".wsz"],
    # HF directories; h0 is the corrupted one
    "inspect-hf": ["inspect", "{S}/hf"],
    "compress-hf": ["compress", "{S}/hf", "-o", OUT + ".wsz"],
    "merge-hf": ["merge", "{S}/hf/h0", "{S}/hf/h1", "--base", "{S}/hf/h2", "-m", "mean", "-o", OUT],
    "project-hf": ["project", "{S}/arc/hf.wsz", "{S}/hf/h0"],
    # sharded directories; s0 is the corrupted one
    "inspect-sh": ["inspect", "{S}/sharded"],
    "compress-sh": ["compress", "{S}/sharded", "-o", OUT + ".wsz"],
    "analyze-sh": ["analyze", "{S}/sharded", "-o", OUT, "--no-plots", "--null-draws", "1"],
    "project-sh": ["project", "{S}/arc/sharded.wsz", "{S}/sharded/s0"],
    # PEFT adapters; a0 is the corrupted one
    "inspect-ad": ["inspect", "{S}/ad"],
    "compress-ad": ["compress", "{S}/ad", "-o", OUT + ".wsz"],
    "analyze-ad": ["analyze", "{S}/ad", "-o", OUT, "--no-plots", "--null-draws", "1"],
    "merge-ad": ["merge", "{S}/ad", "-m", "mean", "-o", OUT],
    "project-ad": ["project", "{S}/arc/peft.wsz", "{S}/ad/a0"],
    # pickles
    "inspect-pk": ["inspect", "{S}/pk", "--allow-pickle"],
    "compress-pk": ["compress", "{S}/pk", "--allow-pickle", "-o", OUT + ".wsz"],
    # archives
    "rec-full": ["reconstruct", "{S}/arc/full.wsz", "--all", "-o", OUT],
    "rec1-full": ["reconstruct", "{S}/arc/full.wsz", "m0", "-o", OUT],
    "proj-full": ["project", "{S}/arc/full.wsz", "{S}/unseen/u0.safetensors"],
    "rec-hf": ["reconstruct", "{S}/arc/hf.wsz", "--all", "-o", OUT],
    "proj-hf": ["project", "{S}/arc/hf.wsz", "{S}/unseen/h"],
    "rec-sh": ["reconstruct", "{S}/arc/sharded.wsz", "--all", "-o", OUT],
    "proj-sh": ["project", "{S}/arc/sharded.wsz", "{S}/unseen/s"],
    "rec-peft": ["reconstruct", "{S}/arc/peft.wsz", "--all", "-o", OUT],
    "proj-peft": ["project", "{S}/arc/peft.wsz", "{S}/unseen/a"],
    "merge-basis": [
        "merge",
        "{S}/models",
        "--base",
        "{S}/base.safetensors",
        "-m",
        "subspace",
        "--basis-archive",
        "{S}/arc/full.wsz",
        "-o",
        OUT + ".safetensors",
    ],
    # outputs: {X} is the output path under test
    "o-compress": ["compress", "{S}/models", "-o", "{X}"],
    "o-analyze": ["analyze", "{S}/models", "-o", "{X}", "--no-plots", "--null-draws", "1"],
    "o-merge-file": ["merge", "{S}/models", "--base", "{S}/base.safetensors", "-m", "mean", "-o", "{X}"],
    "o-merge-dir": ["merge", "{S}/hf/h0", "{S}/hf/h1", "--base", "{S}/hf/h2", "-m", "mean", "-o", "{X}"],
    "o-reconstruct": ["reconstruct", "{S}/arc/full.wsz", "--all", "-o", "{X}"],
    "o-zoo": ["zoo", "digits-mlp", "--quick", "-o", "{X}"],
    "o-demo": ["demo", "--quick", "--zoo", "digits-mlp", "--no-merge", "--no-adapt", "-o", "{X}"],
}

# analyze and merge read models as compress does (Collection.from_paths; merge adds the base): they run on the
# cases marked ALL_CMDS, which cover every kind of refusal, to keep the table fast.
MODEL_CMDS = ("inspect", "compress", "project")
ALL_CMDS = ("inspect", "compress", "analyze", "merge", "project")
READ_CMDS = ("compress", "analyze", "merge", "project")  # commands that read tensor data
INDEX_CMDS = ("inspect-sh", "compress-sh", "project-sh")
INDEX_ALL = (*INDEX_CMDS, "analyze-sh")
HF_CMDS = ("inspect-hf", "compress-hf", "project-hf")
HF_ALL = (*HF_CMDS, "merge-hf")
AD_CMDS = ("inspect-ad", "compress-ad", "merge-ad", "project-ad")
AD_CFG_CMDS = ("inspect-ad", "compress-ad", "merge-ad")  # project opens adapters the same way (open_source)
PK_CMDS = ("inspect-pk", "compress-pk")
ARC_FULL = ("rec-full", "rec1-full", "proj-full")
OUT_CMDS = ("o-compress", "o-analyze", "o-merge-file", "o-merge-dir", "o-reconstruct")


@dataclass(frozen=True)
class Case:
    """One hostile input: how to make it, which commands read it, what the message must name."""

    id: str
    mutate: Callable[[Path], object]
    commands: tuple[str, ...]
    expect: tuple[str, ...]
    out: str | None = None  # for output cases: the -o path, relative to the sandbox


CASES: list[Case] = []


def case(id: str, commands: tuple[str, ...], *expect: str, out: str | None = None):
    def deco(fn: Callable[[Path], object]) -> Callable[[Path], object]:
        CASES.append(Case(id, fn, commands, expect, out))
        return fn

    return deco


M0 = "models/m0.safetensors"
BIG_INT = "1" * 5000
DEEP = "[" * 100_000 + "]" * 100_000


def _entry(dtype: object = "F32", shape: object = (4, 6), offsets: object = (0, 96)) -> dict[str, object]:
    return {"dtype": dtype, "shape": list(shape) if isinstance(shape, tuple) else shape, "data_offsets": offsets}


def _set_fc1(S: Path, **kw: object) -> None:
    """Replace m0's fc1.weight header entry, keeping every other tensor valid."""

    def fn(h: dict) -> None:
        e = h["fc1.weight"]
        for k, v in kw.items():
            e[k] = v

    edit_header(S / M0, fn)


# ------------------------------------------------------------------------------ safetensors headers (models/m0)
def _fc1_end_as(S: Path, literal: str) -> None:
    """Write m0 with fc1.weight's end offset replaced by a raw JSON literal."""
    h, data = header_of(S / M0)
    h["fc1.weight"]["data_offsets"][1] = "@END@"
    raw_safetensors(S / M0, text=json.dumps(h).replace('"@END@"', literal), data=data)


@case("st-int-5000-digits", ALL_CMDS, "m0.safetensors")
def _(S: Path) -> None:
    _fc1_end_as(S, BIG_INT)


@case("st-deep-nesting", ALL_CMDS, "m0.safetensors")
def _(S: Path) -> None:
    raw_safetensors(S / M0, text='{"fc1.weight": ' + DEEP + "}")


@case("st-dtype-list", ALL_CMDS, "m0.safetensors", "fc1.weight")
def _(S: Path) -> None:
    _set_fc1(S, dtype=["F32"])


@case("st-dtype-unknown", MODEL_CMDS, "m0.safetensors", "fc1.weight")
def _(S: Path) -> None:
    _set_fc1(S, dtype="Q4")


@case("st-shape-bool-dims", MODEL_CMDS, "m0.safetensors", "fc1.weight")
def _(S: Path) -> None:
    _set_fc1(S, shape=[True, 24])


@case("st-shape-float-dims", MODEL_CMDS, "m0.safetensors", "fc1.weight")
def _(S: Path) -> None:
    _set_fc1(S, shape=[4.0, 6])


@case("st-shape-1e6x1e6", MODEL_CMDS, "m0.safetensors", "fc1.weight")
def _(S: Path) -> None:
    _set_fc1(S, shape=[1_000_000, 1_000_000])


@case("st-offsets-negative", MODEL_CMDS, "m0.safetensors", "fc1.weight")
def _(S: Path) -> None:
    h, _ = header_of(S / M0)
    b, e = h["fc1.weight"]["data_offsets"]
    _set_fc1(S, data_offsets=[b - 96, e - 96])


@case("st-offsets-overlap", MODEL_CMDS, "m0.safetensors")
def _(S: Path) -> None:
    def fn(h: dict) -> None:
        h["fc1.bias"]["data_offsets"] = list(h["fc1.weight"]["data_offsets"][:1]) * 2
        h["fc1.bias"]["data_offsets"][1] += 16

    edit_header(S / M0, fn)


@case("st-header-longer-than-file", MODEL_CMDS, "m0.safetensors")
def _(S: Path) -> None:
    raw = (S / M0).read_bytes()
    put(S / M0, struct.pack("<Q", len(raw) * 10) + raw[8:])


@case("st-header-not-utf8", MODEL_CMDS, "m0.safetensors")
def _(S: Path) -> None:
    raw = b'{"a\xff": 1}'
    put(S / M0, struct.pack("<Q", len(raw)) + raw)


@case("st-header-a-list", MODEL_CMDS, "m0.safetensors")
def _(S: Path) -> None:
    raw_safetensors(S / M0, text="[1, 2, 3]")


@case("st-duplicate-key", ALL_CMDS, "m0.safetensors", "fc1.bias")
def _(S: Path) -> None:
    entry = '{"dtype": "F32", "shape": [1], "data_offsets": [%d, %d]}'
    raw_safetensors(
        S / M0, text='{"fc1.bias": ' + entry % (0, 4) + ', "fc1.bias": ' + entry % (4, 8) + "}", data=b"\0" * 8
    )


@case("st-nan-literal", MODEL_CMDS, "m0.safetensors")
def _(S: Path) -> None:
    _fc1_end_as(S, "NaN")


@case("st-metadata-not-strings", MODEL_CMDS, "m0.safetensors", "__metadata__")
def _(S: Path) -> None:
    edit_header(S / M0, lambda h: h.__setitem__("__metadata__", {"a": 1}))


@case("st-control-chars-in-name", MODEL_CMDS, "m0.safetensors")
def _(S: Path) -> None:
    edit_header(S / M0, lambda h: h.__setitem__("evil\x1b[2J\x1b[31m.weight", h.pop("fc1.bias")))


@case("st-empty-name", MODEL_CMDS, "m0.safetensors")
def _(S: Path) -> None:
    edit_header(S / M0, lambda h: h.__setitem__("", h.pop("fc1.bias")))


@case("st-truncated", MODEL_CMDS, "m0.safetensors")
def _(S: Path) -> None:
    p = S / M0
    put(p, p.read_bytes()[:-40])


@case("st-fifo", ALL_CMDS, "m0.safetensors")
def _(S: Path) -> None:
    fifo(S / M0)


@case("st-symlink-dev-zero", ALL_CMDS, "m0.safetensors")
def _(S: Path) -> None:
    symlink(S / M0, "/dev/zero")


@case("st-symlink-outside-folder", ("inspect", "compress", "analyze", "merge"), "m0.safetensors")
def _(S: Path) -> None:
    symlink(S / M0, S / "outside" / "secret.safetensors")


@case("st-directory-named-like-a-file", MODEL_CMDS, "m0.safetensors")
def _(S: Path) -> None:
    (S / M0).unlink()
    (S / M0).mkdir()


def _save_model(S: Path, key: str, value: float, rel: str = M0) -> None:
    from safetensors.torch import load_file

    sd = load_file(S / rel)
    t = sd[key].float()
    t.view(-1)[1] = value
    sd[key] = t.to(sd[key].dtype)
    (S / rel).unlink()
    save_file(sd, S / rel)


@case("st-nan-in-unit", READ_CMDS, "m0.safetensors", "fc2.weight")
def _(S: Path) -> None:
    _save_model(S, "fc2.weight", float("nan"))


@case("st-inf-in-unit", READ_CMDS, "m0.safetensors", "fc1.weight")
def _(S: Path) -> None:
    _save_model(S, "fc1.weight", float("-inf"))


@case("st-nan-in-bf16-private", ("compress",), "m0.safetensors", "head.weight")
def _(S: Path) -> None:
    _save_model(S, "head.weight", float("nan"))


@case("st-nan-in-base", ("compress-base", "merge"), "base.safetensors", "fc1.weight")
def _(S: Path) -> None:
    _save_model(S, "fc1.weight", float("nan"), rel="base.safetensors")


@case("st-sparse-4tb-declared", ALL_CMDS, "m0.safetensors")
def _(S: Path) -> None:
    n = 1_000_000
    header = {
        "fc1.weight": _entry("F32", (n, n), [0, 4 * n * n]),
    }
    raw = json.dumps(header).encode()
    p = S / M0
    p.unlink()
    with open(p, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        fh.truncate(8 + len(raw) + 4 * n * n)


@case("st-268k-empty-tensors", MODEL_CMDS, "m0.safetensors")
def _(S: Path) -> None:
    parts = [f'"t{i}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}' for i in range(268_000)]
    raw_safetensors(S / M0, text="{" + ",".join(parts) + "}")


@case("st-oversized-header", MODEL_CMDS, "m0.safetensors")
def _(S: Path) -> None:
    put(S / M0, struct.pack("<Q", 17 * 1024 * 1024) + b"{" + b" " * 64)


# ------------------------------------------------------------------------------ shard index, shards (sharded/s0)
S0 = "sharded/s0"


def _edit_index(S: Path, fn: Callable[[dict], object]) -> None:
    edit_json(S / S0 / INDEX, fn)


@case("idx-fifo", INDEX_ALL, INDEX)
def _(S: Path) -> None:
    fifo(S / S0 / INDEX)


@case("idx-symlink-dev-zero", INDEX_CMDS, INDEX)
def _(S: Path) -> None:
    symlink(S / S0 / INDEX, "/dev/zero")


@case("idx-int-5000-digits", INDEX_CMDS, INDEX)
def _(S: Path) -> None:
    p = S / S0 / INDEX
    put(p, p.read_text().replace('"total_size": 160', f'"total_size": {BIG_INT}'))


@case("idx-deep-nesting", INDEX_CMDS, INDEX)
def _(S: Path) -> None:
    put(S / S0 / INDEX, '{"metadata": ' + DEEP + ', "weight_map": {}}')


@case("idx-duplicate-keys", INDEX_ALL, INDEX, "fc1.weight")
def _(S: Path) -> None:
    text = (
        f'{{"metadata": {{}}, "weight_map": {{"fc1.weight": "{SHARD1}", "fc1.bias": "{SHARD1}", '
        f'"fc2.weight": "{SHARD2}", "fc1.weight": "{SHARD2}"}}}}'
    )
    put(S / S0 / INDEX, text)


@case("idx-nan-literal", INDEX_CMDS, INDEX)
def _(S: Path) -> None:
    p = S / S0 / INDEX
    put(p, p.read_text().replace('"total_size": 160', '"total_size": NaN'))


@case("idx-not-json", INDEX_CMDS, INDEX)
def _(S: Path) -> None:
    put(S / S0 / INDEX, "{not json")


@case("idx-not-an-object", INDEX_CMDS, INDEX)
def _(S: Path) -> None:
    put(S / S0 / INDEX, "[]")


@case("idx-weight-map-not-object", INDEX_CMDS, INDEX, "weight_map")
def _(S: Path) -> None:
    _edit_index(S, lambda i: i.__setitem__("weight_map", ["fc1.weight"]))


@case("idx-shard-absolute", INDEX_ALL, INDEX, "fc2.weight")
def _(S: Path) -> None:
    _edit_index(
        S, lambda i: i["weight_map"].__setitem__("fc2.weight", str(S / "outside" / "secret-shard.safetensors"))
    )


@case("idx-shard-traversal", INDEX_CMDS, INDEX, "fc2.weight")
def _(S: Path) -> None:
    _edit_index(S, lambda i: i["weight_map"].__setitem__("fc2.weight", "../../outside/secret-shard.safetensors"))


@case("idx-shard-in-subfolder", INDEX_CMDS, INDEX, "fc2.weight")
def _(S: Path) -> None:
    _edit_index(S, lambda i: i["weight_map"].__setitem__("fc2.weight", "sub/x.safetensors"))


@case("idx-shard-not-a-string", INDEX_CMDS, INDEX, "fc2.weight")
def _(S: Path) -> None:
    _edit_index(S, lambda i: i["weight_map"].__setitem__("fc2.weight", 7))


@case("idx-shard-symlink-outside", INDEX_ALL, SHARD2)
def _(S: Path) -> None:
    symlink(S / S0 / SHARD2, S / "outside" / "secret-shard.safetensors")


@case("idx-shard-symlink-etc-passwd", INDEX_CMDS, SHARD2)
def _(S: Path) -> None:
    symlink(S / S0 / SHARD2, "/etc/passwd")


@case("idx-shard-fifo", INDEX_CMDS, SHARD2)
def _(S: Path) -> None:
    fifo(S / S0 / SHARD2)


@case("idx-shard-missing", INDEX_CMDS, SHARD2)
def _(S: Path) -> None:
    (S / S0 / SHARD2).unlink()


@case("idx-shard-lacks-tensor", INDEX_CMDS, SHARD1, "fc2.weight")
def _(S: Path) -> None:
    _edit_index(S, lambda i: i["weight_map"].__setitem__("fc2.weight", SHARD1))


@case("idx-oversized", INDEX_CMDS, INDEX)
def _(S: Path) -> None:
    grow(S / S0 / INDEX, 300 * 1024 * 1024)


# ------------------------------------------------------------------------------ config.json (hf/h0)
H0 = "hf/h0"


@case("cfg-fifo", HF_ALL, "config.json")
def _(S: Path) -> None:
    fifo(S / H0 / "config.json")


@case("cfg-symlink-dev-zero", HF_CMDS, "config.json")
def _(S: Path) -> None:
    symlink(S / H0 / "config.json", "/dev/zero")


@case("cfg-symlink-outside", HF_ALL, "config.json")
def _(S: Path) -> None:
    symlink(S / H0 / "config.json", S / "outside" / "secret.txt")


@case("cfg-not-json", HF_CMDS, "config.json")
def _(S: Path) -> None:
    put(S / H0 / "config.json", "{oops")


@case("cfg-int-5000-digits", HF_CMDS, "config.json")
def _(S: Path) -> None:
    put(S / H0 / "config.json", '{"hidden_size": ' + BIG_INT + "}")


@case("cfg-deep-nesting", HF_CMDS, "config.json")
def _(S: Path) -> None:
    put(S / H0 / "config.json", '{"x": ' + DEEP + "}")


@case("cfg-oversized", HF_CMDS, "config.json")
def _(S: Path) -> None:
    grow(S / H0 / "config.json", 300 * 1024 * 1024)


@case("cfg-weights-symlink-outside", HF_ALL, "model.safetensors")
def _(S: Path) -> None:
    symlink(S / H0 / "model.safetensors", S / "outside" / "secret.safetensors")


# ------------------------------------------------------------------------------ adapters (ad/a0)
A0 = "ad/a0"
ACFG = "adapter_config.json"


def _cfg(S: Path, **over: object) -> None:
    put(S / A0 / ACFG, json.dumps(adapter_config(**over)))


def _cfg_text(S: Path, text: str) -> None:
    put(S / A0 / ACFG, text)


for _id, _text in {
    "ac-int-5000-digits": '{"peft_type": "LORA", "r": ' + BIG_INT + ', "lora_alpha": 4}',
    "ac-deep-nesting": '{"peft_type": "LORA", "r": 2, "x": ' + DEEP + "}",
    "ac-duplicate-keys": '{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "r": 8}',
    "ac-nan-alpha-literal": '{"peft_type": "LORA", "r": 2, "lora_alpha": NaN, "target_modules": ["fc1", "fc2"]}',
    "ac-infinity-alpha-literal": '{"peft_type": "LORA", "r": 2, "lora_alpha": Infinity}',
    "ac-not-json": "{",
    "ac-not-an-object": "[]",
    "ac-r-1e400": '{"peft_type": "LORA", "r": 1e400, "lora_alpha": 4, "target_modules": ["fc1", "fc2"]}',
}.items():
    case(_id, AD_CMDS, ACFG)(lambda S, _t=_text: _cfg_text(S, _t))

for _id, _over, _field in [
    ("ac-r-string", {"r": "2"}, "'r'"),
    ("ac-r-fractional", {"r": 4.9}, "'r'"),
    ("ac-r-float-integral", {"r": 2.0}, "'r'"),
    ("ac-r-zero", {"r": 0}, "'r'"),
    ("ac-r-negative", {"r": -2}, "'r'"),
    ("ac-r-bool", {"r": True}, "'r'"),
    ("ac-r-missing", {"r": None}, "'r'"),
    ("ac-alpha-negative", {"lora_alpha": -4}, "lora_alpha"),
    ("ac-alpha-zero", {"lora_alpha": 0}, "lora_alpha"),
    ("ac-alpha-1e300", {"lora_alpha": 1e300}, "lora_alpha"),
    ("ac-alpha-string", {"lora_alpha": "4"}, "lora_alpha"),
    ("ac-alpha-bool", {"lora_alpha": True}, "lora_alpha"),
    ("ac-rank-pattern-zero", {"rank_pattern": {"fc1": 0}}, "rank_pattern"),
    ("ac-rank-pattern-string", {"rank_pattern": {"fc1": "2"}}, "rank_pattern"),
    ("ac-rank-pattern-catastrophic", {"rank_pattern": {"(a+)+b": 2}}, "rank_pattern"),
    ("ac-rank-pattern-invalid-regex", {"rank_pattern": {"(": 2}}, "rank_pattern"),
    ("ac-rank-pattern-not-object", {"rank_pattern": [2]}, "rank_pattern"),
    ("ac-alpha-pattern-negative", {"alpha_pattern": {"fc1": -1}}, "alpha_pattern"),
    ("ac-alpha-pattern-catastrophic", {"alpha_pattern": {"(x*)*y": 2}}, "alpha_pattern"),
    ("ac-target-modules-mismatch", {"target_modules": ["q_proj", "v_proj"]}, "target_modules"),
    ("ac-target-modules-regex-mismatch", {"target_modules": ".*q_proj"}, "target_modules"),
    ("ac-target-modules-catastrophic", {"target_modules": "(a|a)*(b+)+$"}, "target_modules"),
    ("ac-target-modules-wrong-type", {"target_modules": 5}, "target_modules"),
    ("ac-peft-type-missing", {"peft_type": None}, "peft_type"),
    ("ac-peft-type-other", {"peft_type": "IA3"}, "peft_type"),
    ("ac-use-dora", {"use_dora": True}, "DoRA"),
    ("ac-use-rslora-string", {"use_rslora": "yes"}, "use_rslora"),
    ("ac-fan-in-fan-out-int", {"fan_in_fan_out": 1}, "fan_in_fan_out"),
]:
    case(_id, AD_CFG_CMDS, ACFG, _field)(lambda S, _o=_over: _cfg(S, **_o))


@case("ac-fifo", AD_CMDS, ACFG)
def _(S: Path) -> None:
    fifo(S / A0 / ACFG)


@case("ac-symlink-outside", AD_CMDS, ACFG)
def _(S: Path) -> None:
    symlink(S / A0 / ACFG, S / "outside" / "adapter_config.json")


@case("ac-oversized", AD_CMDS, ACFG)
def _(S: Path) -> None:
    grow(S / A0 / ACFG, 300 * 1024 * 1024)


@case("ad-weights-fifo", AD_CMDS, "adapter_model.safetensors")
def _(S: Path) -> None:
    fifo(S / A0 / "adapter_model.safetensors")


@case("ad-weights-symlink-outside", AD_CMDS, "adapter_model.safetensors")
def _(S: Path) -> None:
    symlink(S / A0 / "adapter_model.safetensors", S / "outside" / "secret.safetensors")


@case("ad-rank-tampered", AD_CMDS, "adapter_model.safetensors", "lora_A")
def _(S: Path) -> None:
    from safetensors.torch import load_file

    p = S / A0 / "adapter_model.safetensors"
    sd = load_file(p)
    sd["base_model.model.fc1.lora_A.weight"] = torch.randn(3, 6)
    p.unlink()
    save_file(sd, p)


@case("ad-nan-factor", ("compress-ad", "merge-ad", "project-ad"), "adapter_model.safetensors", "lora_B")
def _(S: Path) -> None:
    _save_model(S, "base_model.model.fc2.lora_B.weight", float("nan"), rel=f"{A0}/adapter_model.safetensors")


@case("ad-declared-delta-1e6-squared", ("compress-ad",), "fc1.weight")
def _(S: Path) -> None:
    n = 1_000_000
    g = torch.Generator().manual_seed(5)
    for i in range(3):
        d = S / "ad" / f"a{i}"
        p = "base_model.model."
        tensors = {
            f"{p}fc1.lora_A.weight": torch.randn(1, n, generator=g).to(torch.bfloat16),
            f"{p}fc1.lora_B.weight": torch.randn(n, 1, generator=g).to(torch.bfloat16),
        }
        (d / "adapter_model.safetensors").unlink()
        save_file(tensors, d / "adapter_model.safetensors")
        put(d / ACFG, json.dumps(adapter_config(r=1, target_modules=["fc1"])))


# ------------------------------------------------------------------------------ pickles (pk/p0.bin)
P0 = "pk/p0.bin"


class _Exploit:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"echo pwned > {self.target}",))


@case("pk-global-os-system", PK_CMDS, "p0.bin", "global", "system")
def _(S: Path) -> None:
    (S / P0).unlink()
    torch.save({"fc1.weight": torch.zeros(4, 6), "x": _Exploit(S / "outside" / "pwned")}, S / P0)


@case("pk-plain-pickle-exploit", PK_CMDS, "p0.bin")
def _(S: Path) -> None:
    put(S / P0, pickle.dumps(_Exploit(S / "outside" / "pwned")))


@case("pk-crc-bit-flip", PK_CMDS, "p0.bin", "CRC")
def _(S: Path) -> None:
    raw = bytearray((S / P0).read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as zf:
        info = next(i for i in zf.infolist() if "/data/" in i.filename and i.file_size >= 16)
    # the member's data starts after its local header: 30 bytes + name + extra
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    pos = info.header_offset + 30 + name_len + extra_len + 5
    raw[pos] ^= 0x40
    put(S / P0, bytes(raw))


@case("pk-zip-bomb", PK_CMDS, "p0.bin")
def _(S: Path) -> None:
    src = S / P0
    with zipfile.ZipFile(src) as zf:
        items = [(i, zf.read(i)) for i in zf.infolist()]
    src.unlink()
    with zipfile.ZipFile(src, "w") as out:
        for info, data in items:
            if "/data/" in info.filename:
                with out.open(zipfile.ZipInfo(info.filename), "w", force_zip64=True) as fh:
                    pass
                continue
            out.writestr(info, data)
        zi = zipfile.ZipInfo("archive/data/bomb")
        zi.compress_type = zipfile.ZIP_DEFLATED
        with out.open(zi, "w", force_zip64=True) as fh:
            block = b"\0" * (1 << 20)
            for _ in range(64):
                fh.write(block)


@case("pk-not-a-state-dict", PK_CMDS, "p0.bin")
def _(S: Path) -> None:
    (S / P0).unlink()
    torch.save([torch.zeros(2)], S / P0)


@case("pk-fifo", PK_CMDS, "p0.bin")
def _(S: Path) -> None:
    fifo(S / P0)


@case("pk-refused-without-flag", ("inspect", "compress"), "p0.bin", "--allow-pickle")
def _(S: Path) -> None:
    (S / "models" / "m0.safetensors").unlink()
    (S / P0).rename(S / "models" / "p0.bin")


# ------------------------------------------------------------------------------ archives
FULL = "arc/full.wsz"
HF = "arc/hf.wsz"
SH = "arc/sharded.wsz"
PEFT = "arc/peft.wsz"


def _m(S: Path, arc: str, fn: Callable[[dict], object]) -> None:
    edit_manifest(S / arc, fn)


@case("ar-model-name-traversal", ARC_FULL, "manifest.json", "../../../../pwned")
def _(S: Path) -> None:
    _m(S, FULL, lambda m: m["models"][1].__setitem__("name", "../../../../pwned"))


@case("ar-model-name-absolute", ARC_FULL, "manifest.json", "pwned")
def _(S: Path) -> None:
    _m(S, FULL, lambda m: m["models"][1].__setitem__("name", str(S / "outside" / "pwned")))


@case("ar-model-name-hidden", ARC_FULL, "manifest.json", ".wstmp")
def _(S: Path) -> None:
    _m(S, FULL, lambda m: m["models"][1].__setitem__("name", ".wstmp-1"))


@case("ar-model-name-control-chars", ARC_FULL, "manifest.json")
def _(S: Path) -> None:
    _m(S, FULL, lambda m: m["models"][1].__setitem__("name", "m\x1b[31m"))


def _configs(S: Path, fn: Callable[[dict], object], arc: str = HF) -> None:
    _m(S, arc, lambda m: fn(m["models"][0]["configs"]))


@case("ar-config-name-traversal", ("rec-hf", "proj-hf"), "manifest.json", "../../x.txt")
def _(S: Path) -> None:
    _configs(S, lambda c: c.__setitem__("../../x.txt", "pwned"))


@case("ar-config-name-absolute", ("rec-hf", "proj-hf"), "manifest.json", "pwned.txt")
def _(S: Path) -> None:
    _configs(S, lambda c: c.__setitem__(str(S / "outside" / "pwned.txt"), "pwned"))


@case("ar-config-name-unknown", ("rec-hf", "proj-hf"), "manifest.json", "run.sh")
def _(S: Path) -> None:
    _configs(S, lambda c: c.__setitem__("run.sh", "rm -rf ~"))


def _stored_index(S: Path, fn: Callable[[dict], object]) -> None:
    def edit(c: dict) -> None:
        index = json.loads(c[INDEX])
        fn(index)
        c[INDEX] = json.dumps(index)

    _configs(S, edit, arc=SH)


@case("ar-index-shard-absolute", ("rec-sh", "proj-sh"), "manifest.json", "fc2.weight")
def _(S: Path) -> None:
    _stored_index(S, lambda i: i["weight_map"].__setitem__("fc2.weight", str(S / "outside" / "pwned.safetensors")))


@case("ar-index-shard-traversal", ("rec-sh", "proj-sh"), "manifest.json", "fc2.weight")
def _(S: Path) -> None:
    _stored_index(S, lambda i: i["weight_map"].__setitem__("fc2.weight", "../../../pwned.safetensors"))


@case("ar-index-shard-is-config", ("rec-sh", "proj-sh"), "manifest.json", "fc2.weight")
def _(S: Path) -> None:
    _stored_index(S, lambda i: i["weight_map"].__setitem__("fc2.weight", "config.json"))


@case("ar-index-int-5000-digits", ("rec-sh", "proj-sh"), "manifest.json")
def _(S: Path) -> None:
    _configs(
        S,
        lambda c: c.__setitem__(INDEX, '{"metadata": {"total_size": ' + BIG_INT + '}, "weight_map": {}}'),
        arc=SH,
    )


@case("ar-index-deep-nesting", ("rec-sh", "proj-sh"), "manifest.json")
def _(S: Path) -> None:
    _configs(S, lambda c: c.__setitem__(INDEX, '{"metadata": ' + DEEP + ', "weight_map": {}}'), arc=SH)


UNIT0 = "units/00000.safetensors"


@case("ar-member-symlink-outside", ARC_FULL, "00000.safetensors")
def _(S: Path) -> None:
    target = S / "outside" / "unit.safetensors"
    (S / FULL / UNIT0).rename(target)
    symlink(S / FULL / UNIT0, target)


@case("ar-member-symlink-inside", ARC_FULL, "coefficients.safetensors")
def _(S: Path) -> None:
    (S / FULL / "coefficients.safetensors").rename(S / FULL / "units" / "c.safetensors")
    symlink(S / FULL / "coefficients.safetensors", "units/c.safetensors")


@case("ar-member-fifo", ARC_FULL, "00000.safetensors")
def _(S: Path) -> None:
    fifo(S / FULL / UNIT0)


@case("ar-member-dev-zero-listed", ARC_FULL, "manifest.json", "/dev/zero")
def _(S: Path) -> None:
    _m(S, FULL, lambda m: m["members"].__setitem__("/dev/zero", {"sha256": "0" * 64, "bytes": 0}))


@case("ar-member-traversal-listed", ARC_FULL, "manifest.json", "../../etc/passwd")
def _(S: Path) -> None:
    _m(S, FULL, lambda m: m["members"].__setitem__("../../etc/passwd", {"sha256": "0" * 64, "bytes": 0}))


@case("ar-unit-member-traversal", ARC_FULL, "manifest.json")
def _(S: Path) -> None:
    _m(S, FULL, lambda m: m["units"][0].__setitem__("member", "../../etc/passwd"))


@case("ar-member-missing", ARC_FULL, "coefficients.safetensors")
def _(S: Path) -> None:
    (S / FULL / "coefficients.safetensors").unlink()


@case("ar-member-not-listed", ARC_FULL, "private.safetensors")
def _(S: Path) -> None:
    _m(S, FULL, lambda m: m["members"].pop("private.safetensors"))


@case("ar-member-tampered", ARC_FULL, "coefficients.safetensors")
def _(S: Path) -> None:
    p = S / FULL / "coefficients.safetensors"
    raw = bytearray(p.read_bytes())
    raw[-3] ^= 0xFF
    put(p, bytes(raw))


@case("ar-manifest-fifo", ARC_FULL, "manifest.json")
def _(S: Path) -> None:
    fifo(S / FULL / "manifest.json")


@case("ar-manifest-symlink-outside", ARC_FULL, "manifest.json")
def _(S: Path) -> None:
    target = S / "outside" / "manifest.json"
    (S / FULL / "manifest.json").rename(target)
    symlink(S / FULL / "manifest.json", target)


@case("ar-manifest-missing", ARC_FULL, "manifest.json")
def _(S: Path) -> None:
    (S / FULL / "manifest.json").unlink()


@case("ar-not-a-directory", ARC_FULL, "full.wsz")
def _(S: Path) -> None:
    import shutil

    shutil.rmtree(S / FULL)
    put(S / FULL, "not an archive")


def _manifest_text(S: Path, fn: Callable[[str], str]) -> None:
    p = S / FULL / "manifest.json"
    put(p, fn(p.read_text()))


@case("ar-manifest-int-5000-digits", ARC_FULL, "manifest.json")
def _(S: Path) -> None:
    _manifest_text(S, lambda t: t.replace('"version": 2', '"version": ' + BIG_INT, 1))


@case("ar-manifest-deep-nesting", ARC_FULL, "manifest.json")
def _(S: Path) -> None:
    _manifest_text(S, lambda t: t.replace('"extras": {}', '"extras": {"x": ' + DEEP + "}", 1))


@case("ar-manifest-duplicate-keys", ARC_FULL, "manifest.json", "kind")
def _(S: Path) -> None:
    _manifest_text(S, lambda t: t.replace('"kind": "full"', '"kind": "full", "kind": "peft"', 1))


@case("ar-manifest-nan-literal", ARC_FULL, "manifest.json")
def _(S: Path) -> None:
    _manifest_text(S, lambda t: t.replace('"version": 2', '"version": NaN', 1))


@case("ar-manifest-not-json", ARC_FULL, "manifest.json")
def _(S: Path) -> None:
    put(S / FULL / "manifest.json", "{")


for _id, _fn, _field in [
    ("ar-version-true", lambda m: m.__setitem__("version", True), "version"),
    ("ar-version-3", lambda m: m.__setitem__("version", 3), "version"),
    ("ar-version-string", lambda m: m.__setitem__("version", "2"), "version"),
    ("ar-unit-k-1000", lambda m: m["units"][0].__setitem__("k", 1000), "fc1.bias"),
    ("ar-unit-k-negative", lambda m: m["units"][0].__setitem__("k", -1), "fc1.bias"),
    ("ar-unit-k-float", lambda m: m["units"][0].__setitem__("k", 1.5), "units"),
    ("ar-unit-rows-inconsistent", lambda m: m["units"][0].__setitem__("rows", 5), "fc1.bias"),
    ("ar-unit-cols-inconsistent", lambda m: m["units"][0].__setitem__("cols", 99), "fc1.bias"),
    (
        "ar-unit-shape-1e6x1e6",
        lambda m: m["units"][0].update(shape=[10**6, 10**6], rows=10**6, cols=10**6),
        "fc1.bias",
    ),
    ("ar-unit-shape-bool", lambda m: m["units"][0].__setitem__("shape", [True, 6]), "units"),
    ("ar-unit-method-unknown", lambda m: m["units"][0].__setitem__("method", "evil"), "units"),
    ("ar-unit-name-duplicate", lambda m: m["units"][1].__setitem__("name", m["units"][0]["name"]), "unit names"),
    ("ar-kind-peft-without-lora", lambda m: m.__setitem__("kind", "peft"), "LoRA"),
    ("ar-kind-unknown", lambda m: m.__setitem__("kind", "evil"), "kind"),
    ("ar-private-key-missing", lambda m: m["models"][0]["private"].append("ghost.weight"), "ghost.weight"),
    ("ar-metadata-not-string", lambda m: m["models"][0].__setitem__("metadata", {"a": 1}), "metadata"),
    ("ar-dtype-unknown", lambda m: m["models"][0]["dtypes"].__setitem__("fc1.weight", "Q4"), "Q4"),
    ("ar-dtype-list", lambda m: m["models"][0]["dtypes"].__setitem__("fc1.weight", ["F32"]), "dtypes"),
    (
        "ar-source-format-unknown-2nd",
        lambda m: m["models"][1].__setitem__("source_format", "evil"),
        "source_format",
    ),
    ("ar-models-not-a-list", lambda m: m.__setitem__("models", {"a": 1}), "models"),
    (
        "ar-members-bytes-negative",
        lambda m: m["members"]["coefficients.safetensors"].__setitem__("bytes", -1),
        "bytes",
    ),
    ("ar-storage-dtype-unknown", lambda m: m.__setitem__("storage_dtype", "int8"), "storage_dtype"),
    ("ar-model-name-duplicate", lambda m: m["models"][1].__setitem__("name", m["models"][0]["name"]), "name"),
    ("ar-key-order-unknown-key", lambda m: m["models"][0]["key_order"].append("../x"), "../x"),
]:
    cmds = (
        ARC_FULL
        if _id in ("ar-source-format-unknown-2nd", "ar-private-key-missing")
        else ("rec-full", "proj-full")
    )
    case(_id, cmds, "full.wsz", _field)(lambda S, _f=_fn: _m(S, FULL, _f))


for _id, _fn, _field in [
    ("ar-lora-rank-tampered", lambda m: m["models"][0]["lora"]["fc1.weight"].__setitem__("rank", 5), "rank"),
    ("ar-lora-rank-zero", lambda m: m["models"][0]["lora"]["fc1.weight"].__setitem__("rank", 0), "rank"),
    (
        "ar-lora-a-shape-tampered",
        lambda m: m["models"][0]["lora"]["fc1.weight"].__setitem__("a_shape", [2, 7]),
        "a_shape",
    ),
    (
        "ar-lora-scaling-nan",
        lambda m: m["models"][0]["lora"]["fc1.weight"].__setitem__("scaling", "NaN"),
        "scaling",
    ),
    (
        "ar-lora-scaling-negative",
        lambda m: m["models"][0]["lora"]["fc1.weight"].__setitem__("scaling", -1.0),
        "scaling",
    ),
    (
        "ar-lora-unit-unknown",
        lambda m: m["models"][0]["lora"].__setitem__("ghost.weight", m["models"][0]["lora"]["fc1.weight"]),
        "ghost.weight",
    ),
    ("ar-lora-a-key-traversal", lambda m: m["models"][0]["lora"]["fc1.weight"].__setitem__("a_key", ""), "a_key"),
]:
    case(_id, ("rec-peft", "proj-peft"), "manifest.json", _field)(lambda S, _f=_fn: _m(S, PEFT, _f))


@case("ar-nan-in-basis", ARC_FULL, "00000.safetensors")
def _(S: Path) -> None:
    rewrite_member(S / FULL, UNIT0, lambda t: t["basis"].view(-1).__setitem__(3, float("nan")))


@case("ar-inf-in-coefficients", ("rec-full", "rec1-full"), "coefficients.safetensors")
def _(S: Path) -> None:
    rewrite_member(
        S / FULL, "coefficients.safetensors", lambda t: t["coef/fc1.weight"].view(-1).__setitem__(0, float("inf"))
    )


@case("ar-nan-in-bf16-private", ("rec-full", "rec1-full"), "private.safetensors", "head.weight")
def _(S: Path) -> None:
    def fn(t: dict) -> None:
        x = t["m0/head.weight"].float()
        x.view(-1)[2] = float("nan")
        t["m0/head.weight"] = x.to(torch.bfloat16)

    rewrite_member(S / FULL, "private.safetensors", fn)


@case("ar-coefficients-wrong-shape", ARC_FULL, "full.wsz", "fc1.weight")
def _(S: Path) -> None:
    rewrite_member(
        S / FULL, "coefficients.safetensors", lambda t: t.__setitem__("coef/fc1.weight", torch.zeros(3, 5))
    )


@case("ar-basis-wrong-shape", ARC_FULL, "00000.safetensors", "fc1.bias")
def _(S: Path) -> None:
    rewrite_member(S / FULL, UNIT0, lambda t: t.__setitem__("basis", torch.zeros(2, 24)))


@case("ar-fp16-overflow-on-write", ("rec-full", "rec1-full"), "m0", "fc1.weight")
def _(S: Path) -> None:
    _m(S, FULL, lambda m: m["models"][0]["dtypes"].__setitem__("fc1.weight", "F16"))
    rewrite_member(S / FULL, "coefficients.safetensors", lambda t: t["coef/fc1.weight"].mul_(1e6))


@case("ar-private-member-extra-tensor-dtype", ("rec-full", "rec1-full"), "private.safetensors")
def _(S: Path) -> None:
    h_path = S / FULL / "private.safetensors"
    edit_header(h_path, lambda h: h["m0/head.weight"].__setitem__("dtype", "Q4"))
    rehash(S / FULL, "private.safetensors")


# ------------------------------------------------------------------------------ outputs that must not be replaced
for _target, _cmds, _what in [
    ("spare/hfmodel", OUT_CMDS, "a model folder nobody reads"),
    ("models", OUT_CMDS, "the input folder"),
    ("base.safetensors", OUT_CMDS, "the base file"),
    ("userdir", (*OUT_CMDS, "o-zoo", "o-demo"), "an unrelated folder"),
    ("notes.txt", (*OUT_CMDS, "o-zoo", "o-demo"), "an unrelated file"),
    (".", OUT_CMDS, "the folder holding every input"),
    ("arc/full.wsz", ("o-analyze", "o-merge-dir", "o-reconstruct"), "an archive (another kind, or the input)"),
    ("report", ("o-compress", "o-merge-dir", "o-reconstruct"), "a report (another kind)"),
    ("link-to-userdir", OUT_CMDS, "a symbolic link to the user's folder"),
    ("hf/h0/model.safetensors", ("o-merge-file",), "a weight file inside an input"),
]:

    def _mk(S: Path, _t: str = _target) -> None:
        if _t == "link-to-userdir":
            (S / _t).symlink_to(S / "userdir")

    case(f"out-{_target.replace('/', '-').strip('.') or 'sandbox-root'}", _cmds, "", out=_target)(_mk)


# ------------------------------------------------------------------------------ recipes (weightspace run)
RECIPE = "recipe.yaml"
COMMANDS["run"] = ["run", "{S}/" + RECIPE]


def _recipe(S: Path, text: str) -> None:
    put(S / RECIPE, text.replace("{S}", str(S)))


_BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(9)
)

for _id, _text, _expect in [
    ("rc-billion-laughs", _BILLION_LAUGHS, "aliases"),
    ("rc-int-5000-digits", "job: compress\nmodels: [{S}/models]\nrank: " + BIG_INT + "\nout: {S}/o.wsz\n", "yaml"),
    ("rc-deep-nesting", "job: " + "[" * 1500 + "]" * 1500 + "\n", "yaml"),
    ("rc-not-a-mapping", "- a\n- b\n", "mapping"),
    ("rc-out-user-folder", "job: compress\nmodels: [{S}/models]\nrank: 2\nout: {S}/userdir\n", "userdir"),
    ("rc-out-input-folder", "job: analyze\nmodels: [{S}/models]\nout: {S}/models\nplots: false\n", "models"),
    (
        "rc-merge-out-base",
        "merge_method: linear\nbase_model: {S}/base.safetensors\nmodels: [{S}/models]\n"
        "out: {S}/base.safetensors\n",
        "base.safetensors",
    ),
]:
    named = "" if "-out-" in _id else RECIPE
    case(_id, ("run",), named, _expect)(lambda S, _t=_text: _recipe(S, _t))


@case("rc-fifo", ("run",), RECIPE)
def _(S: Path) -> None:
    fifo(S / RECIPE)


@case("rc-oversized", ("run",), RECIPE)
def _(S: Path) -> None:
    put(S / RECIPE, "job: compress\n")
    grow(S / RECIPE, 300 * 1024 * 1024)
