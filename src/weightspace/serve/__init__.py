"""Serve many adapters from one archive: shared factors in frozen buffers, every adapter's core in one bank.

An archive of PEFT LoRA adapters stores, per adapted weight, ``U`` (d_out × k1), ``V`` (d_in × k2) and each
adapter's k1 × k2 core. :func:`serve` puts those into a base model as they are: a forward computes
``x Wᵀ + ((x V) C_iᵀ) Uᵀ`` for the selected adapter ``i``, switching adapters is one assignment
(:meth:`ServedModel.set_adapter`), and a mixed batch takes one adapter per row
(:meth:`ServedModel.set_adapter_rows`: ``x V`` → batched cores → ``Uᵀ``). Nothing is rebuilt and the adapters'
own files are never read.

Examples
--------
>>> from weightspace.serve import serve  # doctest: +SKIP
>>> served = serve(base_model, "adapters.wsz")  # doctest: +SKIP
>>> served.set_adapter("task-a"); logits_a = served(inputs)  # doctest: +SKIP
>>> with served.adapter_rows(["task-a", "task-b"]): mixed = served(two_row_inputs)  # doctest: +SKIP

References
----------
Gabrielsson et al., "Compress then Serve: Serving Thousands of LoRA Adapters with Little Overhead",
arXiv:2407.00066.
"""

from weightspace.serve._bank import AdapterBank, LoraBank, TensorBank
from weightspace.serve._layers import AdapterSelection, BankedLinear, BankedLoraLinear
from weightspace.serve._model import ServedModel, find_module, serve

__all__ = [
    "AdapterBank",
    "AdapterSelection",
    "BankedLinear",
    "BankedLoraLinear",
    "LoraBank",
    "ServedModel",
    "TensorBank",
    "find_module",
    "serve",
]
