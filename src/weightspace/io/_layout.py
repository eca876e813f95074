"""Write a model in the layout of a template checkpoint, one tensor at a time, atomically.

A :class:`Layout` is what a written model must look like besides its tensors: the format (a single
``.safetensors`` file, an HF directory with its ``config.json``, a sharded HF directory following a shard map, a
PEFT adapter directory, or a pickle), the safetensors ``__metadata__`` and the small config files.
:meth:`Layout.of` takes it from an opened :class:`~weightspace.io.ModelSource` (the base of a merge, the source of
an archived model). A :class:`LayoutWriter` then writes the tensors declared up front (``key → (dtype, shape)``)
straight into their files, in declaration order and in any write order, so that at most one tensor is in memory:

* safetensors files are laid out from the declarations and filled in place (:class:`SafetensorsWriter`);
* a sharded directory puts every key in the template's shard (keys the template does not map go to its last
  shard) and writes ``model.safetensors.index.json`` with the template's index metadata and the new
  ``total_size``;
* pickles cannot be streamed: they are collected and saved when the writer closes.

Everything is built in a temporary sibling of the destination, fsynced and renamed into place only when the block
completes; an error half-way (or a declared tensor never written) leaves the destination untouched. Every written
value is checked: NaN, infinity or an overflow of the declared dtype (70000 into float16) is a
:class:`~weightspace.errors.NonFiniteError` naming the destination and the tensor, and nothing is written. File
names come from the layout's metadata and are checked by the path policy: config names are the known config files,
shard names plain ``*.safetensors`` names.

Examples
--------
>>> import tempfile, torch
>>> from pathlib import Path
>>> from weightspace.io import open_source
>>> d = Path(tempfile.mkdtemp())
>>> layout = Layout("hf-dir", configs={"config.json": "{}"})
>>> with LayoutWriter(d / "model", layout, {"w": (torch.float16, (2, 2)), "b": (torch.float32, (2,))}) as w:
...     w.write("b", torch.zeros(2))
...     w.write("w", torch.eye(2))
>>> src = open_source(d / "model")
>>> src.format, list(src.entries), src.entries["w"].dtype
('hf-dir', ['w', 'b'], 'F16')
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import torch

from weightspace._atomic import META_KEY, atomic_dir, atomic_file, check_output, mark_dir
from weightspace._json import parse_json
from weightspace.errors import (
    CorruptFileError,
    OutputError,
    ShapeMismatchError,
    TensorKeyError,
    UnsupportedFormatError,
)
from weightspace.io._pathpolicy import check_name
from weightspace.io._safetensors import SafetensorsWriter, check_finite_write

if TYPE_CHECKING:
    from weightspace.io._sources import ModelSource

__all__ = ["FILE_LAYOUTS", "LAYOUTS", "SHARD_INDEX", "Layout", "LayoutWriter", "TensorSpec", "check_destination"]

TensorSpec = tuple[torch.dtype, tuple[int, ...]]
"""``(dtype, shape)`` of one tensor to be written."""

LAYOUTS = ("safetensors", "hf-dir", "hf-sharded", "peft", "torch", "torch-dir")
"""Every layout a :class:`LayoutWriter` writes (the formats of :func:`~weightspace.io.open_source`)."""
FILE_LAYOUTS = ("safetensors", "torch")
"""Layouts written as a single file; the others are directories."""
SHARD_INDEX = "model.safetensors.index.json"

_WEIGHTS = {"hf-dir": "model.safetensors", "peft": "adapter_model.safetensors", "torch-dir": "pytorch_model.bin"}
_LAST_RESORT_SHARD = "model-00001-of-00001.safetensors"
CONFIG_NAMES = frozenset({"config.json", "generation_config.json", "adapter_config.json", SHARD_INDEX})
"""The file names a layout may write next to the weights."""


@dataclass(frozen=True)
class Layout:
    """How a model is laid out on disk, apart from its tensors.

    Attributes
    ----------
    format : str
        One of :data:`LAYOUTS`: ``safetensors``, ``hf-dir``, ``hf-sharded``, ``peft``, ``torch`` (a pickle file)
        or ``torch-dir`` (a directory with ``pytorch_model.bin``).
    metadata : mapping of str to str
        Safetensors ``__metadata__`` (``format: pt`` is added when missing).
    configs : mapping of str to str
        Small text files written next to the weights of a directory layout, by plain file name
        (``config.json``, ``adapter_config.json``). For ``hf-sharded``, the template's
        ``model.safetensors.index.json`` gives the shard of every key and its ``metadata`` block; the written index
        is regenerated from the declared tensors.
    """

    format: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    configs: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.format not in LAYOUTS:
            raise UnsupportedFormatError(
                f"cannot write layout {self.format!r}; expected one of {', '.join(LAYOUTS)}"
            )
        for name in self.configs:
            check_name(name, what="config file name")
            if name not in CONFIG_NAMES:
                raise CorruptFileError(
                    f"config file name {name!r} is not one of {', '.join(sorted(CONFIG_NAMES))}", path=name
                )

    @classmethod
    def of(cls, source: ModelSource) -> Layout:
        """The layout of an opened checkpoint (format, ``__metadata__``, config files and shard index).

        Examples
        --------
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> from safetensors.torch import save_file
        >>> from weightspace.io import open_source
        >>> p = Path(tempfile.mkdtemp()) / "m.safetensors"
        >>> save_file({"w": torch.ones(1)}, p, metadata={"note": "x"})
        >>> Layout.of(open_source(p))
        Layout(format='safetensors', metadata={'note': 'x'}, configs={})
        """
        fmt = source.format
        if fmt == "torch" and Path(source.path).is_dir():
            fmt = "torch-dir"
        return cls(fmt, dict(source.metadata), dict(source.configs))

    @property
    def is_file(self) -> bool:
        """Whether the layout is a single file (else a directory)."""
        return self.format in FILE_LAYOUTS

    def shard_index(self) -> tuple[dict[str, str], dict[str, object]]:
        """The template's ``weight_map`` (key → shard file name) and index ``metadata`` (empty if none)."""
        text = self.configs.get(SHARD_INDEX)
        if not text:
            return {}, {}
        index = parse_json(text, path=SHARD_INDEX, what="the template's shard index")
        if not isinstance(index, dict):
            raise CorruptFileError("the template's shard index is not a JSON object", path=SHARD_INDEX)
        weight_map = index.get("weight_map") or {}
        meta = index.get("metadata") or {}
        if not isinstance(weight_map, dict) or not isinstance(meta, dict):
            raise CorruptFileError("'weight_map' and 'metadata' must be JSON objects", path=SHARD_INDEX)
        for key, shard in weight_map.items():
            name = check_name(shard, what="shard name", path=SHARD_INDEX, tensor=key)
            if not name.endswith(".safetensors") or name in CONFIG_NAMES:
                raise CorruptFileError(
                    f"shard name {name!r} must end in .safetensors", path=SHARD_INDEX, tensor=key
                )
        return dict(weight_map), dict(meta)


def _specs(specs: Mapping[str, tuple[torch.dtype, Sequence[int]]]) -> dict[str, TensorSpec]:
    return {key: (dtype, tuple(int(d) for d in shape)) for key, (dtype, shape) in specs.items()}


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


class LayoutWriter:
    """Stream declared tensors into a model written in a given layout; atomic as a context manager.

    Parameters
    ----------
    dest : path
        The model to write: a file for ``safetensors``/``torch``, else a directory (replaced as a whole).
    layout : Layout
        Format, metadata and config files, usually ``Layout.of(template_source)``.
    specs : mapping of str to (torch.dtype, shape)
        Every tensor the model will hold, in file order. Each must be written exactly once (cast to its dtype).
    marker : str, optional
        Mark the output as a weightspace output of this kind (see :func:`weightspace._atomic.check_output`): a
        marker file in a directory, the ``weightspace.output`` metadata key of a safetensors file.
    label : path, optional
        The path errors name (default ``dest``; set it when ``dest`` lies in a temporary folder).

    Attributes
    ----------
    files : dict of str to list of str
        File name (relative to a directory destination; the file itself for a file layout) → its keys, in order.

    Raises
    ------
    TensorKeyError
        Writing an undeclared key.
    ShapeMismatchError
        Writing a tensor of another shape than declared.
    RuntimeError
        Leaving the block without writing every declared tensor (nothing is written then).

    Examples
    --------
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> d = Path(tempfile.mkdtemp())
    >>> index = '{"metadata": {}, "weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}}'
    >>> layout = Layout("hf-sharded", configs={"model.safetensors.index.json": index})
    >>> with LayoutWriter(d / "m", layout, {"a": (torch.float32, (2,)), "b": (torch.float32, (3,))}) as w:
    ...     w.write("a", torch.ones(2))
    ...     w.write("b", torch.zeros(3))
    >>> sorted(p.name for p in (d / "m").iterdir())
    ['model.safetensors.index.json', 's1.safetensors', 's2.safetensors']
    """

    def __init__(
        self,
        dest: str | os.PathLike[str],
        layout: Layout,
        specs: Mapping[str, tuple[torch.dtype, Sequence[int]]],
        *,
        marker: str | None = None,
        label: str | os.PathLike[str] | None = None,
    ):
        self.dest = Path(dest)
        self.label = Path(label) if label is not None else self.dest
        self.layout = layout
        self.marker = marker
        self.specs = _specs(specs)
        self._configs = {n: t for n, t in layout.configs.items() if n != SHARD_INDEX}
        fmt = layout.format
        if fmt in FILE_LAYOUTS:
            self._configs = {}
            self.files = {self.dest.name: list(self.specs)}
        elif fmt == "hf-sharded":
            weight_map, index_meta = layout.shard_index()
            fallback = sorted(set(weight_map.values()))[-1] if weight_map else _LAST_RESORT_SHARD
            self.files = {}
            for key in self.specs:
                self.files.setdefault(weight_map.get(key, fallback), []).append(key)
            total = sum(math.prod(shape) * _itemsize(dtype) for dtype, shape in self.specs.values())
            index = {
                "metadata": {**index_meta, "total_size": total},
                "weight_map": {k: shard for shard, keys in sorted(self.files.items()) for k in sorted(keys)},
            }
            self._configs[SHARD_INDEX] = json.dumps(index, indent=2)
        else:
            self.files = {_WEIGHTS[fmt]: list(self.specs)}
        self._stack: ExitStack | None = None
        self._writers: dict[str, SafetensorsWriter] = {}
        self._pickled: dict[str, torch.Tensor] | None = None
        self._pickle_path: Path | None = None

    # -------------------------------------------------------------------------------------------- context
    def __enter__(self) -> LayoutWriter:
        stack = ExitStack()
        try:
            fmt = self.layout.format
            if fmt in FILE_LAYOUTS:
                root = stack.enter_context(atomic_file(self.dest))
                paths = {self.dest.name: root}
            else:
                root = stack.enter_context(atomic_dir(self.dest))
                paths = {name: root / name for name in self.files}
                for name, text in self._configs.items():
                    (root / name).write_text(text, encoding="utf-8")
                if self.marker is not None:
                    mark_dir(root, self.marker)
            if fmt in ("torch", "torch-dir"):
                # Pickles cannot be written in place; the tensors are collected and saved on a clean exit.
                self._pickled = {}
                (self._pickle_path,) = paths.values()
            else:
                meta = dict(self.layout.metadata)
                meta.setdefault("format", "pt")
                if self.marker is not None and fmt in FILE_LAYOUTS:
                    meta[META_KEY] = self.marker
                for name, keys in self.files.items():
                    label = self.label if fmt in FILE_LAYOUTS else self.label / name
                    w = stack.enter_context(
                        SafetensorsWriter(paths[name], {k: self.specs[k] for k in keys}, meta, label=label)
                    )
                    self._writers.update(dict.fromkeys(keys, w))
        except BaseException:
            stack.__exit__(*sys.exc_info())
            raise
        self._stack = stack
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is None:
            return
        if exc_type is None:
            try:
                self._save_pickle()
            except BaseException as err:
                stack.__exit__(type(err), err, err.__traceback__)
                raise
        # Closing the stack closes (and, on success, fsyncs) every shard, then renames the tree into place or, on
        # an exception, removes it.
        stack.__exit__(exc_type, exc, tb)

    def _save_pickle(self) -> None:
        if self._pickled is None:
            return
        missing = [k for k in self.specs if k not in self._pickled]
        if missing:
            raise RuntimeError(f"layout writer closed with unwritten tensors: {missing[:5]}")
        assert self._pickle_path is not None  # set with _pickled in __enter__
        torch.save({k: self._pickled[k] for k in self.specs}, self._pickle_path)

    # ---------------------------------------------------------------------------------------------- write
    def write(self, key: str, tensor: torch.Tensor) -> None:
        """Write the whole tensor ``key`` (cast to its declared dtype).

        Parameters
        ----------
        key : str
            A declared key.
        tensor : Tensor of the declared shape
        """
        if self._stack is None:
            raise RuntimeError("LayoutWriter.write outside its with-block")
        spec = self.specs.get(key)
        if spec is None:
            raise TensorKeyError("not declared when the writer was opened", path=self.dest, tensor=key)
        if self._pickled is not None:
            if tuple(tensor.shape) != spec[1]:
                raise ShapeMismatchError(
                    f"expected shape {spec[1]}, got {tuple(tensor.shape)}", path=self.dest, tensor=key
                )
            stored = tensor.detach().to(device="cpu", dtype=spec[0]).contiguous()
            check_finite_write(tensor, stored, path=self.label, tensor=key)
            self._pickled[key] = stored
            return
        self._writers[key].write(key, tensor)


def check_destination(
    dest: str | os.PathLike[str],
    layout: Layout | str,
    *,
    inputs: Iterable[str | os.PathLike[str]] = (),
    what: str = "output",
    overwrite: bool = False,
    required_bytes: int | None = None,
) -> Path:
    """Refuse a destination a :class:`LayoutWriter` must not replace; return it as a Path.

    The output policy of :func:`weightspace._atomic.check_output` for a written model (kind ``model``): refused
    are one of ``inputs`` (or a folder holding one, or a path inside one), and, unless ``overwrite``, an existing
    path weightspace did not write as a model; an existing directory for a file layout and an existing file for a
    directory layout are refused too (the output would change kind).

    Parameters
    ----------
    dest : path
    layout : Layout or str
        The layout (or its format) to be written.
    inputs : iterable of path
        Paths being read (models, base) that must not be overwritten.
    what : str
        Names the output in messages ("merged model").
    overwrite : bool, default False
        Replace an existing path weightspace did not write (``--overwrite``).
    required_bytes : int, optional
        Size of the output; refused when the file system has less room.

    Raises
    ------
    OutputError
        With the destination as path and the fix in the message.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> d = Path(tempfile.mkdtemp())
    >>> check_destination(d / "out.safetensors", "safetensors") == d / "out.safetensors"
    True
    >>> try:
    ...     check_destination(d, "safetensors")
    ... except OutputError as err:
    ...     print(err.message.split(";")[0])
    output is an existing directory, but the output is a single safetensors file like its template
    """
    fmt = layout.format if isinstance(layout, Layout) else layout
    path = Path(dest)
    if not overwrite:
        if fmt in FILE_LAYOUTS and path.is_dir() and not path.is_symlink():
            raise OutputError(
                f"output is an existing directory, but the {what} is a single {fmt} file like its template; "
                "name a file, e.g. -o merged.safetensors",
                path=path,
            )
        if fmt not in FILE_LAYOUTS and path.exists() and not path.is_dir():
            raise OutputError(f"output exists and is a file, but the {what} is a directory", path=path)
    return check_output(
        path,
        "model",
        overwrite=overwrite,
        inputs=inputs,
        required_bytes=required_bytes,
        what=None if what == "output" else what,
    )
