"""Demo scales: how many models each zoo gets, and how much of the accuracy evaluation is run.

A claim about k = 16 directions needs N ≥ 96 models (N ≥ 6 k), so the default scale builds 96 models of every small
zoo; ``minilm-lora`` (each adapter costs real MiniLM forward/backward passes on CPU) is kept at 24 there, which
tests k = 4 and marks its k = 16 rows "not testable", and reaches 96 at ``paper`` scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["SCALES", "Scale"]


@dataclass(frozen=True)
class Scale:
    """One demo size.

    Attributes
    ----------
    name : str
    quick : bool
        Zoo training settings (``quick`` builds train fewer steps).
    zoos : tuple of str
        Zoos run by default.
    n : dict
        Models per zoo.
    accuracy_models : dict
        Per zoo, how many models (a seeded sample) get the per-model accuracy evaluation (original, rebuilt,
        held out); absent: all of them. Spectra and archives always use every model.
    seeds : int
        Zoo seeds run (the second seed's verdicts appear beside the first's).
    merge_models : int
        Task models merged by the merge benchmark (the first ones of the zoo).
    adapt_steps : int or None
        Optimiser steps of every adaptation run (None: the zoo's fine-tuning steps).
    report_plots : bool
        Draw the PNGs of each zoo's analysis report (the demo page's own plots are always drawn).
    """

    name: str
    quick: bool
    zoos: tuple[str, ...]
    n: dict[str, int]
    accuracy_models: dict[str, int] = field(default_factory=dict)
    seeds: int = 1
    merge_models: int = 20
    adapt_steps: int | None = None
    report_plots: bool = True


_ALL = ("digits-mlp", "digits-mlp-init", "mnist1d-cnn", "digits-vit", "minilm-lora")

SCALES: dict[str, Scale] = {
    "quick": Scale(
        "quick",
        quick=True,
        zoos=("digits-mlp", "digits-mlp-init", "mnist1d-cnn"),
        n={"digits-mlp": 24, "digits-mlp-init": 96, "mnist1d-cnn": 24, "digits-vit": 24, "minilm-lora": 4},
        merge_models=8,
        adapt_steps=40,
        report_plots=False,
    ),
    "default": Scale(
        "default",
        quick=False,
        zoos=_ALL,
        n={"digits-mlp": 96, "digits-mlp-init": 96, "mnist1d-cnn": 96, "digits-vit": 96, "minilm-lora": 24},
        accuracy_models={"minilm-lora": 6},
        adapt_steps=100,
    ),
    "paper": Scale(
        "paper",
        quick=False,
        zoos=_ALL,
        n={"digits-mlp": 480, "digits-mlp-init": 480, "mnist1d-cnn": 480, "digits-vit": 480, "minilm-lora": 96},
        accuracy_models={"digits-mlp": 96, "mnist1d-cnn": 96, "digits-vit": 96, "minilm-lora": 16},
        seeds=2,
        adapt_steps=None,
    ),
}
