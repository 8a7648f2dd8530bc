"""wpo: Weighted Preference Optimization (arXiv 2406.11827) of chat LLMs, from prompts to a GGUF with its card.

The Python API mirrors the command line; a stage function takes a `Recipe` (or a path or mapping, loaded with
`load_recipe`) and returns what the CLI prints for that stage with `--json`; like the CLI, it skips a stage finished
under the same config unless called with `force=True`. Errors are `WpoError`s with the CLI's one-line
messages. Importing `wpo` is light (no torch): the stages import what they need when called.

    import wpo
    recipe = wpo.load_recipe("recipes/quickstart.yaml", ["train.beta=0.1", "output_dir=runs/beta01"])
    summary = wpo.run(recipe)                      # what summary.json holds
    wpo.train(recipe); wpo.evaluate(recipe)        # one stage each
    wpo.report("runs/beta01")                      # runs/beta01/report.html, the run's offline page
    from wpo import loss                           # the WPO loss as tensors-in, tensors-out building blocks
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from wpo.config import Recipe, load_recipe
from wpo.errors import ConfigError, DataError, NonFiniteError, WpoError

__version__ = "0.1.0"
__all__ = [
    "ConfigError",
    "DataError",
    "NonFiniteError",
    "Recipe",
    "WpoError",
    "chunked_loss",
    "evaluate",
    "export",
    "load_recipe",
    "loss",
    "pair",
    "report",
    "run",
    "sample",
    "score",
    "sweep",
    "train",
]

RecipeLike = Recipe | str | Path | dict[str, Any]


def _recipe(recipe: RecipeLike) -> Recipe:
    return recipe if isinstance(recipe, Recipe) else load_recipe(recipe)


def run(recipe: RecipeLike, stages: str | list[str] | None = None, force: bool = False) -> dict[str, Any]:
    """`wpo run`: the recipe's stages (or `stages`: a stage name or a list of them) in order, round by round,
    skipping finished ones (`force` redoes them); returns the summary (`summary.json`)."""
    from wpo.pipeline import run_pipeline

    loaded = _recipe(recipe)
    if stages is not None:
        chosen = [stages] if isinstance(stages, str) else list(stages)
        loaded = load_recipe({**loaded.model_dump(mode="json", exclude_unset=True), "stages": chosen})
    return run_pipeline(loaded, force=force)


def _stage(name: str, recipe: RecipeLike, force: bool) -> dict[str, Any]:
    from wpo.pipeline import run_stage

    return run_stage(_recipe(recipe), name, force=force)


def sample(recipe: RecipeLike, force: bool = False) -> dict[str, Any]:
    """On-policy samples and off-policy answers → `sample/candidates.jsonl`."""
    return _stage("sample", recipe, force)


def score(recipe: RecipeLike, force: bool = False) -> dict[str, Any]:
    """A reward model, a judge or a Python function scores every candidate → `score/candidates.jsonl`."""
    return _stage("score", recipe, force)


def pair(recipe: RecipeLike, force: bool = False) -> dict[str, Any]:
    """Best vs worst candidate per prompt → `pair/pairs.jsonl` (TRL's conversational preference format)."""
    return _stage("pair", recipe, force)


def train(recipe: RecipeLike, force: bool = False) -> dict[str, Any]:
    """WPO training → `train/final/`, `train/metrics.jsonl`."""
    return _stage("train", recipe, force)


def evaluate(recipe: RecipeLike, force: bool = False) -> dict[str, Any]:
    """Held-out answers, judged and measured against the reference or the base → `eval/metrics.json`."""
    return _stage("eval", recipe, force)


def export(recipe: RecipeLike, force: bool = False) -> dict[str, Any]:
    """GGUF files, verified, with a model card → `export/`."""
    return _stage("export", recipe, force)


def sweep(
    recipe: RecipeLike,
    grid: dict[str, list[str]],
    seeds: list[int],
    baseline: dict[str, str] | None = None,
    overrides: list[str] | None = None,
    variants: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """`wpo sweep`: every grid variant x seed with shared upstream stages; runs.csv, comparison.csv (paired by seed
    and prompt), comparison.png under output_dir/sweep/. `grid` maps dotted keys to lists of values (YAML text);
    `variants` lists cells a grid cannot express (each a mapping of the same keys), crossed with the grid."""
    from wpo.sweeps import run_sweep

    if isinstance(recipe, Recipe):
        recipe = recipe.to_dict()
    grid_text = {k: [str(v) for v in values] for k, values in grid.items()}
    explicit = [{k: str(v) for k, v in variant.items()} for variant in variants or []]
    return run_sweep(recipe, overrides or [], grid_text, seeds, baseline, explicit)


def report(directory: str | Path, max_items: int | None = None) -> list[Path]:
    """`wpo report`: `directory/report.html`, one offline page of a run (of a sweep: the comparison, and every run's
    page too); returns the paths written. `max_items` caps the pairs and held-out prompts inlined per browser."""
    from wpo.reporting import MAX_ITEMS, write_report

    return write_report(directory, MAX_ITEMS if max_items is None else max_items)


def __dir__() -> list[str]:
    """The public API only, not the modules and typing names this file imports."""
    return sorted([*__all__, "__version__"])


def __getattr__(name: str) -> Any:
    """`wpo.loss` and `wpo.chunked_loss`, imported (with torch) on first use."""
    if name in ("loss", "chunked_loss"):
        return importlib.import_module(f"wpo.training.{name}")
    raise AttributeError(f"module 'wpo' has no attribute {name!r}")
