"""What the chosen stages need, checked before any of them runs: `wpo config` fails exactly where `wpo run` would.

`load_recipe` checks each key alone and keys that combine. This only iterates: the model is here, each stage's
upstream output exists (or which stage to run first), then each stage's own `check`, which lives beside its run
(`wpo.<stage package>.stage.check`, made of `wpo.rules`), and each stage's own reader over the input file it will
read. Each failure is one line naming the key (or the file:line) and the fix. What this machine lacks to run them (a
package, GPUs, a file that is not here: `wpo.machine`) is not the recipe's mistake: it is reported after them, all at
once.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from wpo import machine
from wpo.config import Recipe
from wpo.data.io import BUILTIN_PREFIX, BadRecordPolicy
from wpo.errors import ConfigError, DataError
from wpo.layout import STAGE_MODULES, stage_output
from wpo.machine import Lack
from wpo.rules import exists

log = logging.getLogger(__name__)

# The stage whose output each stage reads by default, and the key that overrides it.
UPSTREAM = {
    "score": ("sample", "score.candidates"),
    "pair": ("score", "pair.candidates"),
    "train": ("pair", "train.pairs"),
}


def check_stages(recipe: Recipe, stages: Sequence[str]) -> None:
    """Raise a ConfigError naming the recipe, the key and the fix for the first thing `stages` would fail on, or the
    stage's own DataError for the first bad record of an input file; then `MachineLacks` with everything this machine
    lacks to run them."""
    lacks: list[Lack | None] = []
    try:
        _check(recipe, list(stages), lacks)
    except (ConfigError, DataError) as exc:
        raise ConfigError(f"{recipe.source}: {exc}") from None
    read_inputs(recipe, list(stages))
    machine.refuse(lacks)


def stage_module(stage: str) -> ModuleType:
    return importlib.import_module(STAGE_MODULES[stage])


def _check(recipe: Recipe, stages: list[str], lacks: list[Lack | None]) -> None:
    """The model, each stage's upstream output, then each stage's own `check` (beside its run)."""
    exists("model.name_or_path", recipe.model.name_or_path, lacks)
    for stage in stages:
        if stage in UPSTREAM:
            _upstream(recipe, stage, stages, lacks)
    for stage in stages:
        check = getattr(stage_module(stage), "check", None)
        if check is not None:
            check(recipe, stages, lacks)


def _upstream(recipe: Recipe, stage: str, stages: list[str], lacks: list[Lack | None]) -> None:
    producer, key = UPSTREAM[stage]
    given = _given_input(recipe, key)
    if given is not None:
        exists(key, given, lacks)
    elif producer not in stages and not stage_output(recipe, producer).exists():
        raise ConfigError(
            f"{stage} reads {stage_output(recipe, producer)}, which does not exist: run `wpo "
            f"{producer}` first (or include {producer} in stages), or set {key}"
        )


def _given_input(recipe: Recipe, key: str) -> str | None:
    section, name = key.split(".")
    return getattr(getattr(recipe, section), name)


def read_inputs(recipe: Recipe, stages: list[str]) -> None:
    """Read every record file the stages will read, as they will read it — each stage's own `read_input`, the
    recipe's on_bad_record and sample.offpolicy_missing — so a bad record fails now, with the file:line and the words
    the stage would use, and the records a stage would skip are counted in one line. Left out: a file a stage of this
    run writes first, a file that is not here (a lack), and a hub dataset (the hub's)."""
    for stage in stages:
        key, source = _input_file(recipe, stage, stages)
        if source is None:
            continue
        policy = BadRecordPolicy(recipe.on_bad_record, log_skips=False)
        stage_module(stage).read_input(recipe, source, policy)
        if policy.skipped:
            reasons = ", ".join(f"{reason} {count}" for reason, count in policy.skipped.items())
            log.warning("%s: %s: %d records will be skipped (%s)", key, source, sum(policy.skipped.values()), reasons)


def _input_file(recipe: Recipe, stage: str, stages: list[str]) -> tuple[str, str | None]:
    """The key naming `stage`'s record file, and the file when it is here to read now."""
    if stage in UPSTREAM:
        producer, key = UPSTREAM[stage]
        given = _given_input(recipe, key)
        source = given if given is not None or producer in stages else str(stage_output(recipe, producer))
    else:
        key = {"sample": "sample.prompts", "eval": "eval.prompts"}.get(stage, "")
        source = _given_input(recipe, key) if key else None
    if not source:
        return key, None
    here = source.startswith(BUILTIN_PREFIX) or Path(source).expanduser().exists()
    return key, source if here else None
