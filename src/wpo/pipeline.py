"""The pipeline runner: the stage registry (each stage's module and its output, declared once) and `wpo run`, which
runs the recipe's stages in order, round by round, skipping those already done."""

from __future__ import annotations

import importlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from wpo.checks import check_stages
from wpo.config import ROUND_STAGES, Recipe
from wpo.data.io import write_json
from wpo.distributed import MULTI_PROCESS_STAGES, process_state, refuse_a_launcher
from wpo.figures import paired_measures
from wpo.layout import STAGE_MODULES, stage_output
from wpo.manifest import completed_with, move_aside, read_manifest
from wpo.reporting import write_run_report
from wpo.run_lock import run_lock
from wpo.stage_run import StageRun, resolve, what_changed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """A stage by the import paths of its `run_config(recipe)` and `run(recipe)` (imported only when used); what it
    writes is `wpo.layout`'s."""

    name: str
    module: str
    run_function: str

    def _function(self, name: str) -> Callable[..., dict[str, Any]]:
        return getattr(importlib.import_module(self.module), name)

    def run_config(self, recipe: Recipe) -> dict[str, Any]:
        return self._function("run_config")(recipe)

    def resolve(self, recipe: Recipe, every_process: bool = False) -> StageRun:
        """Its config and the fingerprint of every input, once (with `every_process`, the main process's for all)."""
        return resolve(self.name, recipe, self._function("run_config"), every_process)

    def run(self, run: StageRun) -> dict[str, Any]:
        return self._function(self.run_function)(run)


STAGE_REGISTRY = {name: Stage(name, module, f"run_{name}") for name, module in STAGE_MODULES.items()}


def run_stage(recipe: Recipe, name: str, force: bool = False, wait: bool = False) -> dict[str, Any]:
    """`wpo <stage>`: what `wpo run` does for this one stage — checked first, run under the run directory's lock
    (`wait` for another launch to end instead of stopping), skipped when done under this config (unless `force`), an
    earlier result of another config moved aside."""
    if name not in MULTI_PROCESS_STAGES:
        refuse_a_launcher(f"wpo {name}")
    check_stages(recipe, [name])
    with run_lock(recipe.output_dir, wait):
        launch = process_state()
        return run_or_skip(recipe, name, launch if launch.num_processes > 1 else None, force=force)


def _timed_run(run: StageRun) -> dict[str, Any]:
    started = time.perf_counter()
    headline = STAGE_REGISTRY[run.stage].run(run)
    return {"wall_seconds": time.perf_counter() - started, "skipped": False, **headline}


def run_or_skip(recipe: Recipe, name: str, launch=None, force: bool = False) -> dict[str, Any]:
    """Run one stage, unless its manifest says it already finished under this exact config (and not `force`). A
    finished result of another config (an upstream change, another setting) or a forced redo's is moved aside first.

    With `launch` (every process of a launch calls this): each process looks at the manifest before any writes it;
    the stages that split run in every process, the others in the main process while the rest wait.
    """
    stage_dir = recipe.stage_dir(name)
    # every input fingerprinted, once (under a launch by the main process); the stage computes none of it again
    run = STAGE_REGISTRY[name].resolve(recipe, every_process=launch is not None)
    done = completed_with(stage_dir, run.config_hash) and not force
    earlier = read_manifest(stage_dir)
    if launch is not None:
        launch.wait_for_everyone()
    if done:
        log.info("%s: already done under this config (%s); skipping (--force redoes it)", name, stage_dir)
        return {
            "wall_seconds": 0.0,
            "skipped": True,
            "output": str(stage_output(recipe, name)),
            "counts": (earlier or {}).get("counts"),
        }
    if launch is None or launch.is_main_process:
        earlier_hash = str((earlier or {}).get("config_hash", "unfinished"))
        if force and stage_dir.is_dir() and any(stage_dir.iterdir()):  # finished or not: start over
            move_aside(stage_dir, earlier_hash, f"{name} is redone as asked (--force)")
        elif earlier and earlier.get("completed"):  # a finished result of another config; an unfinished one resumes
            move_aside(
                stage_dir, earlier_hash, f"{name} is redone: {what_changed(earlier.get('config', {}), run.config)}"
            )
    if launch is not None:
        launch.wait_for_everyone()
    if launch is None or name in MULTI_PROCESS_STAGES:
        log.info("%s: running (%s)", name, stage_dir)
        return _timed_run(run)
    result = {"wall_seconds": 0.0, "skipped": False, "main_process_only": True}
    if launch.is_main_process:
        log.info("%s: running on the main process (%s)", name, stage_dir)
        result = _timed_run(run)
    launch.wait_for_everyone()
    return result


def round_recipe(recipe: Recipe, round_number: int, launch) -> Recipe:
    """Round k ≥ 2 of iterative on-policy WPO samples from, and trains, round k-1's model (`Recipe.for_round`). A
    LoRA adapter is merged by the main process."""
    if round_number == 1:
        return recipe.for_round(1)
    from wpo.models import merged_model_dir

    previous_final = stage_output(recipe, "train", round_number - 1)
    trust = recipe.model.trust_remote_code
    merge = partial(merged_model_dir, previous_final, previous_final.parent, trust_remote_code=trust)
    policy = merge() if launch.is_main_process else None
    launch.wait_for_everyone()
    policy = policy or merge()  # the other processes find the main process's merge
    return recipe.for_round(round_number, str(policy))


HEADLINE_KEYS = (
    "win_rate",
    "standard_error",
    "length_controlled_winrate",
    "avg_length",
    "better",
    "verdict",
    "identical_to_base",
    "contaminated_instructions",
)
EXPORT_KEYS = ("type", "file", "size_bytes", "perplexity", "hf_perplexity", "kl_mean")


def run_pipeline(recipe: Recipe, force: bool = False, wait: bool = False) -> dict[str, Any] | None:
    """Run `recipe.stages` in order — sample → train once per round, then eval and export on the last round's model —
    skipping stages whose manifest matches their config. Writes `summary.json`: wall seconds per stage and the
    headline figures; then `report.html`, the run's page (`wpo report`).

    Under a launcher, sample, score and train split across the processes and pair runs on the main process between
    barriers; after the last round the other processes are done, and eval and export run on the main process alone
    (no process idles at a barrier through a long evaluation). The summary is the main process's: the others
    return None. With `force`, every stage is redone (earlier results moved aside). The whole run holds the run
    directory's lock (`wpo.run_lock`; `wait` for another launch to end instead of stopping).
    """
    check_stages(recipe, recipe.stages)
    with run_lock(recipe.output_dir, wait):
        return _run_pipeline(recipe, force)


def _run_pipeline(recipe: Recipe, force: bool) -> dict[str, Any] | None:
    started = time.perf_counter()
    launch = process_state()
    summary: dict[str, Any] = {"rounds": recipe.rounds, "stages": {}}
    round_stages = [name for name in recipe.stages if name in ROUND_STAGES]
    for round_number in range(1, recipe.rounds + 1):
        current = round_recipe(recipe, round_number, launch)
        for name in round_stages:
            label = name if round_number == 1 else f"round-{round_number}/{name}"
            summary["stages"][label] = run_or_skip(
                current, name, launch if launch.num_processes > 1 else None, force=force
            )
    if not launch.is_main_process:
        log.info(
            "run: process %d is done; the main process goes on with %s",
            launch.process_index,
            [name for name in recipe.stages if name not in ROUND_STAGES] or "the summary",
        )
        return None
    for name in (name for name in recipe.stages if name not in ROUND_STAGES):
        summary["stages"][name] = run_or_skip(recipe, name, force=force)
    summary["wall_seconds"] = {label: entry["wall_seconds"] for label, entry in summary["stages"].items()}
    summary["total_wall_seconds"] = time.perf_counter() - started
    if "train" in recipe.stages:  # the last round's, from its manifest: a skipped stage reports them too
        summary["weights"] = (read_manifest(current.stage_dir("train")) or {}).get("weights")
    if "eval" in recipe.stages:
        metrics = _read_json(stage_output(recipe, "eval"))
        summary.update({key: metrics[key] for key in HEADLINE_KEYS if key in metrics})
        measures = paired_measures(metrics)
        summary["measures"] = [measure.name for measure in measures]
        for measure in measures:
            summary.update(measure.flat())
    if "export" in recipe.stages:
        report = _read_json(stage_output(recipe, "export"))
        summary["exports"] = [{key: entry[key] for key in EXPORT_KEYS if key in entry} for entry in report["files"]]
    write_json(Path(recipe.output_dir) / "summary.json", summary)
    log.info("run: report at %s", write_run_report(Path(recipe.output_dir)))
    return summary


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))
