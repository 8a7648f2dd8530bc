"""What the chosen stages need, checked before any of them runs: `wpo config` fails exactly where `wpo run` would.

`load_recipe` checks each key alone and keys that combine. This checks what the stages to be run need from the
recipe and the disk: the settings each scorer, judge and backend requires, that local files exist, that the user's
functions import and take the documented parameters, that an upstream output exists (or which stage to run first),
and that eval compares something trained with its base. Each failure is one line naming the key and the fix.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from wpo.config import Recipe
from wpo.data.io import BUILTIN_PREFIX, looks_like_local_path, resolve_builtin
from wpo.errors import ConfigError, DataError
from wpo.layout import final_model, stage_output

# The stage whose output each stage reads by default, and the key that overrides it.
UPSTREAM = {
    "score": ("sample", "score.candidates"),
    "pair": ("score", "pair.candidates"),
    "train": ("pair", "train.pairs"),
}


def check_stages(recipe: Recipe, stages: Sequence[str]) -> None:
    """Raise a ConfigError naming the recipe, the key and the fix for the first thing `stages` would fail on."""
    try:
        _check(recipe, list(stages))
    except (ConfigError, DataError) as exc:
        raise ConfigError(f"{recipe.source}: {exc}") from None


def _check(recipe: Recipe, stages: list[str]) -> None:
    _exists("model.name_or_path", recipe.model.name_or_path)
    for stage in stages:
        if stage in UPSTREAM:
            _upstream(recipe, stage, stages)
    if "sample" in stages:
        _sample(recipe)
    if "score" in stages:
        _kind_needs(recipe, "score", "scorer")
    if "train" in stages:
        _exists("train.reference_model", recipe.train.reference_model)
        if recipe.train.optimizer == "adamw_8bit" and importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError(
                "train.optimizer: adamw_8bit needs bitsandbytes, which is not installed: "
                "pip install 'wpo[lowbit]', or set train.optimizer: adamw"
            )
    if "eval" in stages:
        _eval(recipe, trains="train" in stages)
    if "export" in stages:
        from wpo.exporting.convert import check_export_name, check_quantizations

        check_quantizations(recipe.export.quantizations)
        if recipe.export.name:
            check_export_name(recipe.export.name, recipe.stage_dir("export"))
        _exists("export.model", recipe.export.model)
        _exists("export.verify_text", recipe.export.verify_text)


def _exists(key: str, source: str | None) -> None:
    """A local path (or `builtin:` name) in `key` that does not exist; hub ids are left to the hub."""
    if not source:
        return
    if source.startswith(BUILTIN_PREFIX):
        resolve_builtin(source)
    elif looks_like_local_path(source) and not Path(source).expanduser().exists():
        raise ConfigError(f"{key}: no such file or directory: {source}")


def _required(key: str, value: object, why: str, fix: str) -> None:
    if value is None or value == "":
        raise ConfigError(f"{key} is required by {why}: {fix}")


def _upstream(recipe: Recipe, stage: str, stages: list[str]) -> None:
    producer, key = UPSTREAM[stage]
    section, name = key.split(".")
    given = getattr(getattr(recipe, section), name)
    if given is not None:
        _exists(key, given)
    elif producer not in stages and not stage_output(recipe, producer).exists():
        raise ConfigError(
            f"{stage} reads {stage_output(recipe, producer)}, which does not exist: run `wpo "
            f"{producer}` first (or include {producer} in stages), or set {key}"
        )


def _sample(recipe: Recipe) -> None:
    cfg = recipe.sample
    _required(
        "sample.prompts",
        cfg.prompts,
        "the sample stage",
        "a JSONL/Parquet file of {id, messages} records, a datasets directory, a hub id or builtin:NAME",
    )
    _exists("sample.prompts", cfg.prompts)
    _exists("sample.gguf", cfg.gguf)
    if cfg.backend == "vllm" and cfg.n > 0 and importlib.util.find_spec("vllm") is None:
        raise ConfigError(
            "sample.backend: vllm, but vllm is not installed: pip install vllm (on a GPU machine), "
            "or choose sample.backend: transformers | llamacpp"
        )


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


def _kind_needs(recipe: Recipe, section: str, kind_key: str) -> None:
    """The setting the section's scorer or judge needs is there, names a file that exists, or imports."""
    config = getattr(recipe, section)
    kind = getattr(config, kind_key)
    setting, fix = NEEDS[(section, kind)]
    key, value = f"{section}.{setting}", getattr(config, setting)
    _required(key, value, f"{section}.{kind_key}: {kind}", fix)
    if setting == "function":
        _function(value, key)
    elif isinstance(value, str):
        _exists(key, value)


def _eval(recipe: Recipe, trains: bool) -> None:
    cfg = recipe.eval
    _required(
        "eval.prompts",
        cfg.prompts,
        "the eval stage",
        "an eval set with a reference answer per prompt (or eval.compare_to: base_model), e.g. "
        "builtin:ifeval-heldout.jsonl",
    )
    _exists("eval.prompts", cfg.prompts)
    for key in ("model", "instruction_difficulty", "gamed_baselines"):
        _exists(f"eval.{key}", getattr(cfg, key))
    _kind_needs(recipe, "eval", "judge")
    if cfg.judge == "alpaca_eval":
        from wpo.evaluation.alpaca_eval_protocol import annotator_settings

        annotator_settings(cfg.annotator)  # installed, found, and one chat annotator
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
