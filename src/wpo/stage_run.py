"""One stage's run as the runner resolves it, once: the recipe, the stage's config with the fingerprint of every
input, and its hash.

A stage's config (`run_config(recipe)` in its module) holds its settings and, under `inputs`, each input file, model
directory or built-in data by the recipe key that names it (`{"source", "fingerprint"}`: a file's sha256, a
directory's files' names, sizes and times), and under `code` the sha256 of every file of the user's own code it
calls (`wpo.user_functions.code_fingerprint`). The runner resolves it once per stage (under a launch the main process
does, and every process uses that resolution), decides from its hash whether the stage is done, and hands it to the
stage, which keys its progress files and writes its manifest from it without fingerprinting anything again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wpo.config import Recipe, config_hash
from wpo.manifest import changed_keys, source_fingerprint


@dataclass(frozen=True)
class StageRun:
    stage: str
    recipe: Recipe
    config: dict[str, Any]
    config_hash: str

    @classmethod
    def of(cls, stage: str, recipe: Recipe, config: dict[str, Any]) -> StageRun:
        return cls(stage, recipe, config, config_hash(config))


def resolve(
    stage: str, recipe: Recipe, run_config: Callable[[Recipe], dict[str, Any]], every_process: bool
) -> StageRun:
    """The stage's run, resolved once. With `every_process` (every process of a launch calls this together) the main
    process resolves it and every process uses that resolution: files read by each process could differ, or change
    in between, and their runs must not."""
    if not every_process:
        return StageRun.of(stage, recipe, run_config(recipe))
    from accelerate.utils import broadcast_object_list

    from wpo.distributed import process_state

    main = process_state().is_main_process
    return StageRun.of(stage, recipe, broadcast_object_list([run_config(recipe) if main else None])[0])


def resolved(target: StageRun | Recipe, stage: str, run_config: Callable[[Recipe], dict[str, Any]]) -> StageRun:
    """The stage's run: as the runner resolved it, or — for a stage function called with a recipe (the Python API's
    building blocks, tests) — resolved here, once."""
    if isinstance(target, StageRun):
        return target
    from wpo.distributed import process_state

    return resolve(stage, target, run_config, every_process=process_state().num_processes > 1)


def input_fingerprint(source: str | None) -> dict[str, str | None]:
    return {"source": source, "fingerprint": source_fingerprint(source) if source else None}


def code_fingerprints(functions: dict[str, str]) -> dict[str, str]:
    """The user's code behind each named function (`{recipe key: module:function}`), by file."""
    from wpo.user_functions import code_fingerprint

    files: dict[str, str] = {}
    for spec in functions.values():
        files.update(code_fingerprint(spec))
    return dict(sorted(files.items()))


def what_changed(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Why an earlier result of this stage is stale, in the user's words: the code files that changed, the inputs
    whose contents changed, else the settings that differ."""
    old_code, new_code = old.get("code") or {}, new.get("code") or {}
    code = [path for path in sorted(set(old_code) | set(new_code)) if old_code.get(path) != new_code.get(path)]
    if code:
        return ", ".join(code) + (" changed" if len(code) > 1 or code[0] in old_code else " is new")
    old_inputs, new_inputs = old.get("inputs") or {}, new.get("inputs") or {}
    inputs = [key for key in sorted(new_inputs) if old_inputs.get(key) != new_inputs.get(key)]
    if inputs and changed_keys(_settings(old), _settings(new)) == []:
        return ", ".join(f"{key} ({new_inputs[key]['source']})" for key in inputs) + " changed"
    changed = changed_keys(old, new)
    return f"its config changed (differs in: {', '.join(changed) or 'unknown'})"


def _settings(config: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in config.items() if key not in ("inputs", "code")}
