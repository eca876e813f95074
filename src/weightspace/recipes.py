"""YAML recipes for ``weightspace run``: merge (mergekit-shaped), compress and analyze, validated with pydantic.

A recipe is one YAML mapping. Merge recipes take mergekit's shape, so an existing mergekit file runs as is when it
uses what weightspace supports::

    merge_method: ties               # linear, slerp, task_arithmetic, ties, dare_ties, dare_linear, or any of ours
    base_model: org/base-model       # path or Hugging Face Hub id
    models:
      - model: org/finetune-a
        parameters: {weight: 0.7, density: 0.3}
      - model: ./finetune-b          # a plain string is a model without parameters
    parameters: {density: 0.2, lambda: 1.0}
    dtype: bfloat16
    out: merged/                     # weightspace's addition; `weightspace run -o` overrides it

mergekit names are mapped to weightspace's: ``lambda`` → ``lam``; ``dare_linear`` → ``dare``; for the DARE methods
``density`` → ``p = 1 − density``; ``normalize: true`` of ``ties`` and ``rescale: true`` of the DARE methods are
what weightspace always does (``false`` is refused); ``int8_mask`` is a mergekit memory option and is ignored.
For ``slerp`` (and ``linear``), raw weights are merged as in mergekit: ``base_model`` is slerp's first model
(t = 0) and is not subtracted. Per-model ``weight`` reaches the methods that take weights, per-model ``density``
(``p``) the TIES and DARE methods. ``slices`` and per-layer parameter gradients are not supported.

Compress and analyze recipes say ``job:``::

    job: compress                    # or: analyze
    models: [zoos/cnn/models]
    base_model: zoos/cnn/base.safetensors
    variance: 0.9                    # or rank: 8 (clip_rank: true to cap it at what the data allows)
    out: cnn.wsz

Paths in a recipe are relative to the current directory, as on the command line. A recipe that breaks a rule is
an :class:`~weightspace.errors.InputError` naming the file, the line and the field
(``recipe.yaml: line 7: models[1].parameters.weight: ...``).

Examples
--------
>>> r = parse_recipe("merge_method: linear\\nmodels: [a.safetensors, {model: b.safetensors, parameters: {weight: 3}}]")
>>> type(r).__name__, r.method_name(), r.weights()
('MergeRecipe', 'linear', [1.0, 3.0])
>>> try:
...     parse_recipe("merge_method: ties\\nmodels:\\n  - model: a\\n    parameters: {weight: heavy}\\n", "r.yaml")
... except InputError as err:
...     print(err)
r.yaml: line 4: models[0].parameters.weight: must be a number, got 'heavy'
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from weightspace.errors import InputError, ParameterError

__all__ = [
    "AnalyzeRecipe",
    "CompressRecipe",
    "MergeRecipe",
    "ModelEntry",
    "Recipe",
    "load_recipe",
    "parse_recipe",
    "run_recipe",
]

_MAX_RECIPE_BYTES = 1 << 20
_MAX_RECIPE_NODES = 100_000  # YAML nodes after alias expansion (a "billion laughs" recipe is refused)
_METHOD_ALIASES = {"dare_linear": "dare"}
_PARAM_ALIASES = {"lambda": "lam"}
#: mergekit options that change nothing here (memory layout) and are accepted and ignored.
_IGNORED = ("int8_mask",)
#: mergekit options that weightspace's method always applies (value True accepted, False refused).
_ALWAYS_ON = {"ties": ("normalize",), "dare": ("rescale",), "dare_ties": ("rescale",)}
_DARE = ("dare", "dare_ties")


class ModelEntry(BaseModel):
    """One model of a recipe: ``model`` (a path or Hub id) and its per-model ``parameters``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1)
    parameters: dict[str, Any] = Field(default_factory=dict)


class _Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    models: list[ModelEntry] = Field(min_length=1)
    base_model: str | None = None
    out: str | None = None
    allow_pickle: bool = False
    private: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _plain_models(cls, data: Any) -> Any:
        # A model given as a plain string is a model without parameters.
        if isinstance(data, Mapping) and isinstance(data.get("models"), list):
            data = dict(data)
            data["models"] = [{"model": m} if isinstance(m, str) else m for m in data["models"]]
        return data

    def model_specs(self) -> list[str]:
        return [m.model for m in self.models]


class MergeRecipe(_Recipe):
    """A mergekit-shaped merge recipe (see the module docstring)."""

    job: Literal["merge"] = "merge"
    merge_method: str = Field(min_length=1)
    parameters: dict[str, Any] = Field(default_factory=dict)
    dtype: Literal["float32", "float16", "bfloat16", "float64"] | None = None
    format: Literal["auto", "full", "peft"] = "auto"
    rank: int | None = Field(default=None, ge=1)

    @field_validator("dtype", mode="before")
    @classmethod
    def _dtype_names(cls, v: Any) -> Any:
        return {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16"}.get(v, v)

    def method_name(self) -> str:
        """The registered method: mergekit's name mapped to weightspace's."""
        return _METHOD_ALIASES.get(self.merge_method, self.merge_method)

    def is_raw(self) -> bool:
        """Whether full checkpoints are merged as raw weights (mergekit's linear and slerp)."""
        from weightspace.merge import MERGE_METHODS

        return MERGE_METHODS.get(self.method_name()).base_free

    def entries(self) -> list[ModelEntry]:
        """The models in merge order: for a raw merge (linear, slerp) ``base_model`` is the first model."""
        if not self.is_raw() or self.base_model is None:
            return list(self.models)
        first = [m for m in self.models if m.model == self.base_model] or [ModelEntry(model=self.base_model)]
        return [first[0], *(m for m in self.models if m.model != self.base_model)]

    def weights(self) -> list[float] | None:
        """Per-model ``weight`` values in merge order (1 where a model gives none); None when none is given."""
        given = [m.parameters.get("weight") for m in self.entries()]
        if all(w is None for w in given):
            return None
        return [1.0 if w is None else float(w) for w in given]

    def ordered_models(self) -> list[str]:
        """MODELS in merge order (see :meth:`entries`)."""
        return [m.model for m in self.entries()]

    def merge_base(self) -> str | None:
        """The base whose task vectors are merged (None for raw merges, where ``base_model`` is a model)."""
        return None if self.is_raw() else self.base_model


def _default_method() -> str:
    """The library's default decomposition (imported lazily: parsing a recipe needs no torch otherwise)."""
    from weightspace.decompose import PCAUnit

    return PCAUnit.method


def _default_compress_method() -> str:
    """``compress``'s default decomposition: LoRA units factored, other units model-axis PCA."""
    from weightspace.decompose import AutoUnit

    return AutoUnit.method


class CompressRecipe(_Recipe):
    """``job: compress``: the options of ``weightspace compress``."""

    job: Literal["compress"]
    method: str = Field(default_factory=_default_compress_method)
    rank: int | None = Field(default=None, ge=1)
    variance: float | None = Field(default=None, gt=0, lt=1)
    clip_rank: bool = False
    allow_larger: bool = False
    center: bool = True
    solver: Literal["auto", "gram", "tsqr"] = "auto"
    dtype: Literal["float32", "float16", "bfloat16", "float64"] = "float32"

    @model_validator(mode="after")
    def _one_rank(self) -> CompressRecipe:
        if self.rank is not None and self.variance is not None:
            raise ValueError("give rank or variance, not both")
        return self


class AnalyzeRecipe(_Recipe):
    """``job: analyze``: the options of ``weightspace analyze``."""

    job: Literal["analyze"]
    method: str = Field(default_factory=_default_method)
    seed: int = Field(default=0, ge=0)
    null_draws: int = Field(default=5, ge=1)
    folds: int | None = Field(default=None, ge=2)
    plots: bool = True


Recipe = MergeRecipe | CompressRecipe | AnalyzeRecipe
_JOBS: dict[str, type[_Recipe]] = {"merge": MergeRecipe, "compress": CompressRecipe, "analyze": AnalyzeRecipe}


# ------------------------------------------------------------------------------------------- line numbers
def _line_of(node: Any, loc: Sequence[Any]) -> int | None:
    """1-based line of the YAML node at ``loc`` (pydantic's error location), or of its deepest existing parent."""
    import yaml

    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            for key, value in node.value:
                if getattr(key, "value", None) == part:
                    line = key.start_mark.line + 1 if value is None else value.start_mark.line + 1
                    node = value
                    break
            else:
                continue  # a missing key (or a validator's tag): keep the parent's line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
    return line


def _loc_text(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(recipe)"


def _fail(source: str, line: int | None, field: str, message: str) -> InputError:
    where = f"line {line}: " if line is not None else ""
    return InputError(f"{where}{field}: {message}", path=source)


def _pydantic_message(err: Mapping[str, Any]) -> str:
    kind = err.get("type", "")
    got = err.get("input")
    if kind == "extra_forbidden":
        return "unknown field" + (
            " (mergekit's slices are not supported: list the models under models:)"
            if err["loc"][-1] == "slices"
            else ""
        )
    if kind == "missing":
        return "required field is missing"
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if kind not in ("value_error",) and got is not None and not isinstance(got, Mapping | list):
        msg += f" (got {got!r})"
    return msg


# ------------------------------------------------------------------------------------------------ parsing
def parse_recipe(text: str, source: str | os.PathLike[str] = "<recipe>") -> Recipe:
    """Parse and validate a recipe from YAML text.

    Parameters
    ----------
    text : str
        The YAML document.
    source : str or path
        Where it came from (named in errors).

    Returns
    -------
    MergeRecipe, CompressRecipe or AnalyzeRecipe

    Raises
    ------
    InputError
        A YAML syntax error, a field that breaks its schema, an unknown method or method parameter; the message
        names the line and the field.
    """
    import yaml

    src = os.fspath(source)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        from weightspace._json import yaml_nodes

        if yaml_nodes(root) > _MAX_RECIPE_NODES:
            raise _fail(src, None, "(yaml)", f"expands to more than {_MAX_RECIPE_NODES} values (aliases)")
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(err, "problem", None) or str(err)
        raise _fail(src, line, "(yaml)", f"not valid YAML: {problem}") from None
    except RecursionError:
        raise _fail(src, None, "(yaml)", "not valid YAML: nested too deeply") from None
    except ValueError as err:  # e.g. an integer longer than Python converts
        raise _fail(src, None, "(yaml)", f"not valid YAML: {str(err)[:120]}") from None
    if not isinstance(data, dict):
        raise _fail(src, 1, "(recipe)", "a recipe is a YAML mapping (merge_method:, models: ... or job: ...)")
    job = data.get("job", "merge" if "merge_method" in data else None)
    if job not in _JOBS:
        line = _line_of(root, ["job"])
        raise _fail(
            src,
            line,
            "job",
            f"say what to run: job: compress, job: analyze, or a merge recipe with merge_method: (got {job!r})",
        )
    try:
        recipe = _JOBS[job].model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        loc = tuple(p for p in first["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        raise _fail(src, _line_of(root, loc), _loc_text(loc), _pydantic_message(first)) from None
    if isinstance(recipe, MergeRecipe):
        _check_merge(recipe, root, src)
    if isinstance(recipe, CompressRecipe | AnalyzeRecipe):
        from weightspace.decompose import UNIT_FITS

        if recipe.method not in UNIT_FITS:
            raise _fail(
                src, _line_of(root, ["method"]), "method", f"must be one of {', '.join(UNIT_FITS.names())}"
            )
    return recipe  # type: ignore[return-value]


def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Read and validate the recipe file at ``path`` (see :func:`parse_recipe`); a regular file of at most 1 MiB."""
    from weightspace.io import read_regular

    p = Path(path)
    raw = read_regular(p, limit=_MAX_RECIPE_BYTES, what="recipe", missing=InputError, error=InputError)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"cannot read the recipe ({err})", path=p) from None
    return parse_recipe(text, p)


# ------------------------------------------------------------------------------ merge parameters (mergekit)
def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"must be a number, got {value!r}")
    return float(value)


def _translate(method: str, params: Mapping[str, Any], where: str) -> dict[str, Any]:
    """mergekit parameter names and conventions → weightspace's (raises ValueError naming the parameter)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if key in _IGNORED:
            continue
        if key in _ALWAYS_ON.get(method, ()):
            if value is not True:
                raise ValueError(f"weightspace's {method} always uses {key}: true")
            continue
        name = _PARAM_ALIASES.get(key, key)
        if method in _DARE and key == "density":
            if "p" in params:
                raise ValueError(f"{where}give density (mergekit) or p, not both")
            name, value = "p", 1.0 - _number(value)
        if isinstance(value, list | Mapping):
            raise ValueError("per-layer gradients and filters are not supported; give one value")
        out[name] = value
    return out


def _check_merge(recipe: MergeRecipe, root: Any, src: str) -> None:
    from weightspace.merge import MERGE_METHODS

    try:
        method = MERGE_METHODS.get(recipe.method_name())
    except ParameterError as err:
        raise _fail(src, _line_of(root, ["merge_method"]), "merge_method", str(err)) from None
    if "weight" in recipe.parameters:
        raise _fail(
            src,
            _line_of(root, ["parameters", "weight"]),
            "parameters.weight",
            "weight is per model: give it under models[i].parameters",
        )
    try:
        method.resolve_params(_translate(method.name, recipe.parameters, ""))
    except (ParameterError, ValueError) as err:
        key = _param_in(str(err), recipe.parameters)
        loc = ["parameters", key] if key else ["parameters"]
        raise _fail(src, _line_of(root, loc), _loc_text(loc), str(err)) from None
    for i, m in enumerate(recipe.models):
        for key, value in m.parameters.items():
            loc = ["models", i, "parameters", key]
            try:
                if key == "weight":
                    _number(value)
                    continue
                translated = _translate(method.name, {key: value}, "")
                for name, v in translated.items():
                    param = method.params.get(name)
                    if param is None or not param.per_model:
                        per = [n for n, p in method.params.items() if p.per_model]
                        raise ValueError(
                            f"merge method {method.name!r} takes no per-model {key!r} (per model: weight"
                            f"{', ' + ', '.join(per) if per else ''})"
                        )
                    param.validate(v, name=name, method=method.name)
            except (ParameterError, ValueError) as err:
                raise _fail(src, _line_of(root, loc), _loc_text(loc), str(err)) from None
    if recipe.weights() is not None and not method.weighted and any(w != 1.0 for w in recipe.weights() or []):
        takers = ", ".join(n for n in MERGE_METHODS.names() if MERGE_METHODS.get(n).weighted)
        raise _fail(
            src,
            _line_of(root, ["models"]),
            "models[].parameters.weight",
            f"merge method {method.name!r} takes no per-model weights (methods that do: {takers})",
        )
    if method.n_models is not None and len(recipe.ordered_models()) != method.n_models:
        raise _fail(
            src,
            _line_of(root, ["models"]),
            "models",
            f"merge method {method.name!r} merges exactly {method.n_models} models (with base_model counted as the "
            f"first); got {len(recipe.ordered_models())}",
        )


def _param_in(message: str, params: Mapping[str, Any]) -> str | None:
    for key in params:
        if f"'{key}'" in message or f"uses {key}:" in message or f"'{_PARAM_ALIASES.get(key, key)}'" in message:
            return key
    if "'p'" in message and "density" in params:
        return "density"
    return None


def merge_params(recipe: MergeRecipe) -> dict[str, Any]:
    """The method parameters of a merge recipe in weightspace's names, per-model values gathered into lists."""
    from weightspace.merge import MERGE_METHODS

    method = MERGE_METHODS.get(recipe.method_name())
    params = _translate(method.name, recipe.parameters, "")
    entries = recipe.entries()
    per_model: dict[str, list[Any]] = {}
    for i, m in enumerate(entries):
        own = _translate(method.name, {k: v for k, v in m.parameters.items() if k != "weight"}, "")
        for name, value in own.items():
            per_model.setdefault(name, [None] * len(entries))[i] = value
    for name, values in per_model.items():
        # A model that gives no value of its own takes the recipe-wide one (or the method's default).
        fallback = params.get(name, method.params[name].default)
        params[name] = [fallback if v is None else v for v in values]
    return params


# ---------------------------------------------------------------------------------------------- running
def run_recipe(
    recipe: Recipe | str | os.PathLike[str], *, out: str | os.PathLike[str] | None = None, progress: Any = None
) -> Any:
    """Run a recipe (or the recipe file at a path) with the library; the result of the job.

    Returns
    -------
    MergeResult, CompressResult or AnalysisReport
        What :func:`weightspace.merge.merge`, :func:`weightspace.compress.compress` or
        :func:`weightspace.analyze.analyze` returned (the report is also saved to ``out``).
    """
    r = recipe if isinstance(recipe, MergeRecipe | CompressRecipe | AnalyzeRecipe) else load_recipe(recipe)
    dest = out if out is not None else r.out
    if dest is None:
        raise InputError("the recipe names no output: add out: PATH to it, or pass -o/--out")
    common = {"allow_pickle": r.allow_pickle, "private": r.private, "exclude": r.exclude}
    if isinstance(r, MergeRecipe):
        from weightspace.merge import merge

        return merge(
            r.ordered_models(),
            base=r.merge_base(),
            method=r.method_name(),
            params=merge_params(r),
            weights=r.weights(),
            out=dest,
            format=r.format,
            dtype=r.dtype,
            rank=r.rank,
            progress=progress,
            **common,
        )
    if isinstance(r, CompressRecipe):
        from weightspace.compress import compress

        return compress(
            r.model_specs(),
            dest,
            base=r.base_model,
            method=r.method,
            n_components=r.rank if r.rank is not None else (r.variance if r.variance is not None else 16),
            center=r.center,
            svd_solver=r.solver,
            storage_dtype=r.dtype,
            progress=progress,
            **common,
        )
    from weightspace.analyze import analyze
    from weightspace.collection import Collection

    coll = Collection.from_paths(r.model_specs(), base=r.base_model, **common)
    rep = analyze(coll, method=r.method, seed=r.seed, n_null=r.null_draws, folds=r.folds, progress=progress)
    rep.save(dest, plots=r.plots)
    return rep
