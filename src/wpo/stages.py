"""The pipeline's stages behind one interface, and `wpo run`: run the recipe's stages in order, skipping done ones."""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wpo.config import Recipe, config_hash
from wpo.data.io import write_json
from wpo.manifest import completed_with, read_manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """A stage by the import paths of its `run_config(recipe)` and `run(recipe)` (imported only when used)."""

    name: str
    module: str
    run_function: str

    def _function(self, name: str) -> Callable[[Recipe], dict[str, Any]]:
        return getattr(importlib.import_module(self.module), name)

    def run_config(self, recipe: Recipe) -> dict[str, Any]:
        return self._function("run_config")(recipe)

    def run(self, recipe: Recipe) -> dict[str, Any]:
        return self._function(self.run_function)(recipe)


STAGE_REGISTRY = {
    "sample": Stage("sample", "wpo.sampling.stage", "run_sample"),
    "score": Stage("score", "wpo.scoring.stage", "run_score"),
    "pair": Stage("pair", "wpo.pair_stage", "run_pair"),
    "train": Stage("train", "wpo.train.trainer", "run_train"),
    "eval": Stage("eval", "wpo.eval.stage", "run_eval"),
    "export": Stage("export", "wpo.export.stage", "run_export"),
}


def run_stage(recipe: Recipe, name: str) -> dict[str, Any]:
    stage = STAGE_REGISTRY[name]
    started = time.perf_counter()
    headline = stage.run(recipe)
    return {"wall_seconds": time.perf_counter() - started, "skipped": False, **headline}


def run_pipeline(recipe: Recipe) -> dict[str, Any]:
    """Run `recipe.stages` in order; a stage whose manifest matches its config is skipped. Writes summary.json."""
    stages = [STAGE_REGISTRY[name] for name in recipe.stages]
    summary: dict[str, Any] = {"stages": {}}
    for stage in stages:
        stage_dir = recipe.stage_dir(stage.name)
        if completed_with(stage_dir, config_hash(stage.run_config(recipe))):
            log.info("%s: already done under this config (%s); skipping", stage.name, stage_dir)
            manifest = read_manifest(stage_dir) or {}
            summary["stages"][stage.name] = {"wall_seconds": 0.0, "skipped": True, "counts": manifest.get("counts")}
            continue
        log.info("%s: running", stage.name)
        summary["stages"][stage.name] = run_stage(recipe, stage.name)
    summary["wall_seconds"] = {name: entry["wall_seconds"] for name, entry in summary["stages"].items()}
    write_json(Path(recipe.output_dir) / "summary.json", summary)
    return summary
