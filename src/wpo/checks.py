"""What the chosen stages need, checked before any of them runs: `wpo config` fails exactly where `wpo run` would.

`load_recipe` checks each key alone and keys that combine. This checks what the stages to be run need from the
recipe and the disk: the settings each scorer, judge and backend requires, that the user's functions import and take
the documented parameters, that an upstream output exists (or which stage to run first), and that eval compares
something trained with its base; then it reads every input file the stages will read, with their own readers. Each
failure is one line naming the key (or the file:line) and the fix. What this machine lacks to run them (a package,
GPUs, a file that is not here: `wpo.machine`) is not the recipe's mistake: it is reported after them, all at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from wpo import machine
from wpo.config import Recipe
from wpo.data.io import BUILTIN_PREFIX, BadRecordPolicy, resolve_builtin
from wpo.errors import ConfigError, DataError
from wpo.layout import final_model, stage_output
from wpo.machine import Lack

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


def _check(recipe: Recipe, stages: list[str], lacks: list[Lack | None]) -> None:
    _exists("model.name_or_path", recipe.model.name_or_path, lacks)
    for stage in stages:
        if stage in UPSTREAM:
            _upstream(recipe, stage, stages, lacks)
    if "sample" in stages:
        _sample(recipe, lacks)
    if "score" in stages:
        _kind_needs(recipe, "score", "scorer", lacks)
    if "train" in stages:
        _exists("train.reference_model", recipe.train.reference_model, lacks)
        if recipe.train.optimizer == "adamw_8bit":
            lacks.append(machine.bitsandbytes())
        if "trackio" in recipe.train.report_to:
            lacks.append(machine.trackio())
    if "eval" in stages:
        _eval(recipe, "train" in stages, lacks)
    if "export" in stages:
        from wpo.exporting.convert import check_export_name, check_quantizations

        check_quantizations(recipe.export.quantizations)
        if recipe.export.name:
            check_export_name(recipe.export.name, recipe.stage_dir("export"))
        _exists("export.model", recipe.export.model, lacks)
        _exists("export.verify_text", recipe.export.verify_text, lacks)


def _exists(key: str, source: str | None, lacks: list[Lack | None]) -> None:
    """A `builtin:` name in `key` that the package does not ship (the recipe's mistake), or a local path that is not
    on this machine (a lack); hub ids are left to the hub."""
    if source and source.startswith(BUILTIN_PREFIX):
        resolve_builtin(source)
    else:
        lacks.append(machine.local_path(key, source))


def _required(key: str, value: object, why: str, fix: str) -> None:
    if value is None or value == "":
        raise ConfigError(f"{key} is required by {why}: {fix}")


def _upstream(recipe: Recipe, stage: str, stages: list[str], lacks: list[Lack | None]) -> None:
    producer, key = UPSTREAM[stage]
    given = _given_input(recipe, key)
    if given is not None:
        _exists(key, given, lacks)
    elif producer not in stages and not stage_output(recipe, producer).exists():
        raise ConfigError(
            f"{stage} reads {stage_output(recipe, producer)}, which does not exist: run `wpo "
            f"{producer}` first (or include {producer} in stages), or set {key}"
        )


def _given_input(recipe: Recipe, key: str) -> str | None:
    section, name = key.split(".")
    return getattr(getattr(recipe, section), name)


def _sample(recipe: Recipe, lacks: list[Lack | None]) -> None:
    cfg = recipe.sample
    _required(
        "sample.prompts",
        cfg.prompts,
        "the sample stage",
        "a JSONL/Parquet file of {id, messages} records, a datasets directory, a hub id or builtin:NAME",
    )
    _exists("sample.prompts", cfg.prompts, lacks)
    _exists("sample.gguf", cfg.gguf, lacks)
    if cfg.n > 0:
        lacks += machine.generation_backend(cfg.backend, "sample.backend", cfg.tensor_parallel_size)


# What each scorer and judge cannot run without: (section, kind) → (its setting, what to set it to).
NEEDS = {
    ("score", "reward_model"): (
        "model",
        "set it to a sequence-classification reward model (an HF directory or hub "
        "id), or choose score.scorer: python (with score.function) or judge (with "
        "score.judge)",
    ),
    ("score", "judge"): ("judge", "an endpoint {base_url, model, api_key_env}"),
    ("score", "python"): (
        "function",
        "module:function(messages, text[, record]) -> float, e.g. wpo.tasks.reference:chrf",
    ),
    ("eval", "api"): ("api", "an endpoint {base_url, model, api_key_env} that judges pairs"),
    ("eval", "alpaca_eval"): (
        "annotator",
        "an annotator shipped with alpaca_eval, e.g. weighted_alpaca_eval_gpt4_turbo "
        "(AlpacaEval 2's), or the path of its configs.yaml",
    ),
    ("eval", "reward_model"): ("reward_model", "a sequence-classification reward model"),
    ("eval", "python"): (
        "function",
        "module:function(messages, reference_output, model_output[, record]) -> P(model better)",
    ),
}


def _kind_needs(recipe: Recipe, section: str, kind_key: str, lacks: list[Lack | None]) -> None:
    """The setting the section's scorer or judge needs is there, names a file that exists, or imports."""
    config = getattr(recipe, section)
    kind = getattr(config, kind_key)
    setting, fix = NEEDS[(section, kind)]
    key, value = f"{section}.{setting}", getattr(config, setting)
    _required(key, value, f"{section}.{kind_key}: {kind}", fix)
    if setting == "function":
        _function(value, key)
    elif isinstance(value, str):
        _exists(key, value, lacks)


def _eval(recipe: Recipe, trains: bool, lacks: list[Lack | None]) -> None:
    cfg = recipe.eval
    _required(
        "eval.prompts",
        cfg.prompts,
        "the eval stage",
        "an eval set with a reference answer per prompt (or eval.compare_to: base_model), e.g. "
        "builtin:ifeval-heldout.jsonl",
    )
    _exists("eval.prompts", cfg.prompts, lacks)
    for key in ("model", "instruction_difficulty", "gamed_baselines"):
        _exists(f"eval.{key}", getattr(cfg, key), lacks)
    lacks += machine.generation_backend(cfg.backend, "eval.backend", recipe.sample.tensor_parallel_size)
    _kind_needs(recipe, "eval", "judge", lacks)
    if cfg.judge == "alpaca_eval":
        from wpo.evaluation.alpaca_eval_protocol import annotator_settings

        missing = machine.alpaca_eval()
        if missing:
            lacks.append(missing)
        else:
            annotator_settings(cfg.annotator)  # found, and one chat annotator
        _required(
            "eval.api",
            cfg.api,
            "eval.judge: alpaca_eval",
            "the OpenAI-compatible server the annotator's prompts go to {base_url, model, api_key_env}",
        )
    if cfg.reward:
        _function(cfg.reward, "eval.reward")
    for name, spec in cfg.measures.items():
        _function(spec, f"eval.measures.{name}")
    evaluated = cfg.model or (None if trains else final_model(recipe))
    if cfg.compare_to == "base_model" and evaluated == recipe.model.name_or_path:
        nothing = (
            "eval.model is the base model"
            if cfg.model
            else (f"nothing is trained under {recipe.output_dir} and stages do not include train")
        )
        raise ConfigError(
            f"eval.compare_to: base_model, but {nothing}: the base would be compared with itself; "
            "train first, or set eval.model to the model to evaluate"
        )


def _function(spec: str, key: str) -> None:
    from wpo.user_functions import load_function

    load_function(spec, key)


def read_inputs(recipe: Recipe, stages: list[str]) -> None:
    """Read every record file the stages will read, as they will read it — their own readers, the recipe's
    on_bad_record and sample.offpolicy_missing — so a bad record fails now, with the file:line and the words the
    stage would use, and the records a stage would skip are counted in one line. Left out: a file a stage of this
    run writes first, a file that is not here (a lack), and a hub dataset (the hub's)."""
    for stage in stages:
        key, source = _input_file(recipe, stage, stages)
        if source is None:
            continue
        policy = BadRecordPolicy(recipe.on_bad_record, log_skips=False)
        INPUT_READERS[stage](recipe, source, policy)
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


def _read_prompts(recipe: Recipe, source: str, policy: BadRecordPolicy) -> None:
    from wpo.sampling.stage import load_prompts

    load_prompts(recipe, policy)  # without the context check: it loads the tokenizer, and sampling does it


def _read_candidates(recipe: Recipe, source: str, policy: BadRecordPolicy) -> None:
    from wpo.data.schemas import parse_all, parse_candidates

    parse_all(source, parse_candidates, policy, unique_ids=True)


def _read_scored_candidates(recipe: Recipe, source: str, policy: BadRecordPolicy) -> None:
    from wpo.data.schemas import parse_all
    from wpo.pairing.stage import parse_scored

    parse_all(source, parse_scored, policy, unique_ids=True)


def _read_pairs(recipe: Recipe, source: str, policy: BadRecordPolicy) -> None:
    from wpo.data.schemas import load_pairs

    load_pairs(source, policy)  # without tokenizing: training does it


def _read_eval_prompts(recipe: Recipe, source: str, policy: BadRecordPolicy) -> None:
    from wpo.evaluation.stage import load_comparisons_inputs

    load_comparisons_inputs(recipe, policy)


# Each stage's record file read by the stage's own reader.
INPUT_READERS: dict[str, Callable[[Recipe, str, BadRecordPolicy], None]] = {
    "sample": _read_prompts,
    "score": _read_candidates,
    "pair": _read_scored_candidates,
    "train": _read_pairs,
    "eval": _read_eval_prompts,
}
