"""The pipeline's stages behind one interface, and `wpo run`: run the recipe's stages in order, skipping done ones."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wpo.config import Recipe, config_hash
from wpo.data.io import write_json
from wpo.errors import NotImplementedStage
from wpo.manifest import completed_with, read_manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    name: str
    run_config: Callable[[Recipe], dict[str, Any]]
    run: Callable[[Recipe], dict[str, Any]]


def _train_headline(recipe: Recipe) -> dict[str, Any]:
    from wpo.train.trainer import train

    result = train(recipe)
    return {
        "final_dir": str(result.final_dir),
        "steps": result.steps,
        "final_metrics": result.last_metrics,
        "reference_from_cache": result.reference_from_cache,
    }


def _train_config(recipe: Recipe) -> dict[str, Any]:
    from wpo.train.trainer import run_config

    return run_config(recipe)


PENDING = {"sample": 3, "score": 3, "pair": 3, "eval": 4, "export": 5}
IMPLEMENTED = {"train": Stage("train", _train_config, _train_headline)}


def get_stage(name: str) -> Stage:
    if name in IMPLEMENTED:
        return IMPLEMENTED[name]
    raise NotImplementedStage(f"wpo {name} is not implemented yet (tracked in issue {PENDING[name]})")


def run_stage(recipe: Recipe, name: str) -> dict[str, Any]:
    stage = get_stage(name)
    started = time.perf_counter()
    headline = stage.run(recipe)
    return {"wall_seconds": time.perf_counter() - started, "skipped": False, **headline}


def run_pipeline(recipe: Recipe) -> dict[str, Any]:
    """Run `recipe.stages` in order; a stage whose manifest matches its config is skipped. Writes summary.json."""
    stages = [get_stage(name) for name in recipe.stages]  # fail before any work if one is missing
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
    write_json(recipe.output_dir + "/summary.json", summary)
    return summary
