"""Write a whole in-memory model in a given layout, atomically (a convenience over :class:`LayoutWriter`).

Used by ``reconstruct``. Streaming writers (``merge``) use :class:`~weightspace.io.LayoutWriter` directly; both go
through the same code, so there is one safetensors/sharded writer in the package.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from weightspace.io._layout import Layout, LayoutWriter

__all__ = ["output_name", "write_model"]


def output_name(name: str, fmt: str) -> str:
    """File or directory name for model ``name`` written in format ``fmt``."""
    if fmt == "safetensors":
        return f"{name}.safetensors"
    if fmt == "torch":
        return f"{name}.bin"
    return name


def write_model(
    dest: str | os.PathLike[str],
    fmt: str,
    tensors: Mapping[str, torch.Tensor],
    *,
    metadata: Mapping[str, str] | None = None,
    configs: Mapping[str, str] | None = None,
    label: str | os.PathLike[str] | None = None,
) -> Path:
    """Write ``tensors`` to ``dest`` in layout ``fmt``, in their order and dtypes.

    Parameters
    ----------
    dest : path
        Output file (``safetensors``, ``torch`` file) or directory (``hf-dir``, ``hf-sharded``, ``peft``,
        ``torch-dir``).
    fmt : str
        ``safetensors``, ``hf-dir``, ``hf-sharded``, ``peft``, ``torch`` or ``torch-dir``.
    tensors : mapping of str to Tensor
        File keys → tensors (for ``peft``: the adapter's ``base_model.model.…lora_A.weight`` keys).
    metadata : mapping, optional
        Safetensors ``__metadata__``.
    configs : mapping of str to str, optional
        Small text files written next to the weights (``config.json``, ``adapter_config.json``); for
        ``hf-sharded``, the template's shard index, whose shard map the output follows.
    label : path, optional
        The path named in errors (when ``dest`` is inside a temporary folder).

    Returns
    -------
    Path
        ``dest``.

    Examples
    --------
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from weightspace.io import open_source
    >>> p = write_model(Path(tempfile.mkdtemp()) / "m.safetensors", "safetensors", {"w": torch.ones(2)})
    >>> open_source(p).read("w")
    tensor([1., 1.])
    """
    layout = Layout(fmt, dict(metadata or {}), dict(configs or {}))
    specs = {k: (v.dtype, tuple(v.shape)) for k, v in tensors.items()}
    with LayoutWriter(dest, layout, specs, label=label) as writer:
        for key, tensor in tensors.items():
            writer.write(key, tensor)
    return Path(dest)
