"""Remove permutation and scaling symmetries before comparing weights.

Independently trained nets differ by symmetries that leave their function unchanged: hidden units (channels,
attention heads) can be permuted, and ReLU-like units rescaled (incoming row × c, outgoing column ÷ c). Two
copies of one net with shuffled units look like unrelated points in weight space, so a collection of
from-scratch nets must be aligned before a shared subspace can be looked for.

* **Specs** (:class:`PermutationSpec`): which ``(tensor, axis)`` pairs move together under one permutation —
  derived for sequential MLP/CNN chains (:func:`derive_sequential`), built in for ViT and BERT-style encoders
  (:func:`vit_spec`, :func:`bert_spec`), or read from a YAML/JSON file (:func:`load_spec`).
* **Weight matching** (:func:`match_permutations`): Git Re-Basin's coordinate descent over groups, each step a
  linear assignment, to a reference (the medoid by default) or iteratively to the mean.
* **Scale canonicalisation** (:func:`canonical_scales`, opt-in): unit-norm incoming weights per hidden unit,
  valid for ReLU-like nets only (the state dict cannot tell).
* :func:`align` writes every model aligned in its source format; :func:`align_collection` gives aligned views
  (:class:`AlignedCollection`) for ``analyze``/``compress``; :func:`aligned_null_grams` aligns a Gaussian null
  by the same procedure (an aligned collection is only ever compared with an aligned null).

``weightspace.align`` is callable: ``weightspace.align(models, out="aligned/")`` runs :func:`align`.

References
----------
Ainsworth, Hayase, Srinivasa, "Git Re-Basin", ICLR 2023, arXiv:2209.04836;
Zhao et al., "Parameter Space Symmetry in Deep Learning", arXiv:2506.13018.
"""

from weightspace._callable import make_callable
from weightspace.align._align import (
    SCALE_WARNING,
    SYMMETRIES,
    AlignOptions,
    align,
    align_collection,
    aligned_null_grams,
)
from weightspace.align._builtin import BUILTIN_SPECS, bert_spec, vit_spec
from weightspace.align._derive import derive_sequential
from weightspace.align._file import load_spec, resolve_spec, spec_from_dict
from weightspace.align._match import (
    Transform,
    canonical_scales,
    match_permutations,
    transform_state,
    transform_tensor,
)
from weightspace.align._result import (
    ALIGN_MEMBER,
    AlignmentRecord,
    AlignResult,
    ModelAlignment,
    read_alignment,
    unalign_tensors,
)
from weightspace.align._source import AlignedCollection, AlignedSource
from weightspace.align._spec import AxisRef, PermGroup, PermutationSpec, check_spec

__all__ = [
    "ALIGN_MEMBER",
    "BUILTIN_SPECS",
    "SCALE_WARNING",
    "SYMMETRIES",
    "AlignOptions",
    "AlignResult",
    "AlignedCollection",
    "AlignedSource",
    "AlignmentRecord",
    "AxisRef",
    "ModelAlignment",
    "PermGroup",
    "PermutationSpec",
    "Transform",
    "align",
    "align_collection",
    "aligned_null_grams",
    "bert_spec",
    "canonical_scales",
    "check_spec",
    "derive_sequential",
    "load_spec",
    "match_permutations",
    "read_alignment",
    "resolve_spec",
    "spec_from_dict",
    "transform_state",
    "transform_tensor",
    "unalign_tensors",
    "vit_spec",
]

make_callable(__name__)  # weightspace.align(...) calls align(...)
