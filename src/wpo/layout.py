"""Where a run keeps what: each stage's directory and the output the next stage reads, the final model, rounds.

A low module (no torch, no stages): the stages, the checks and the runner import it; it imports none of them.
"""

from __future__ import annotations

import os
from pathlib import Path

from wpo.config import Recipe


def cache_root() -> Path:
    """What wpo keeps across runs (dequantized embedded models, F16 conversions, llama.cpp's probe verdicts)."""
    return Path(os.environ.get("WPO_CACHE_DIR", Path.home() / ".cache" / "wpo"))


# Each stage's module: its `run_config`, its run, its `check` and its input's reader (the runner and the checks
# import it by this name, only when the stage is used).
STAGE_MODULES = {
    "sample": "wpo.sampling.stage",
    "score": "wpo.scoring.stage",
    "pair": "wpo.pairing.stage",
    "train": "wpo.training.stage",
    "eval": "wpo.evaluation.stage",
    "export": "wpo.exporting.stage",
}

# What each stage writes under `<output_dir>/<stage>/` for the next stage to read.
STAGE_OUTPUTS = {
    "sample": "candidates.jsonl",
    "score": "candidates.jsonl",
    "pair": "pairs.jsonl",
    "train": "final",
    "eval": "metrics.json",
    "export": "quantization_report.json",
}


def stage_output(recipe: Recipe, name: str, round_number: int = 1) -> Path:
    """Where stage `name` of this recipe (of round `round_number`) writes what the next stage reads."""
    return output_in(recipe.round_output_dir(round_number), name)


def output_in(round_dir: Path, name: str) -> Path:
    """Stage `name`'s output under a run's (or a round's) directory, for readers that have a directory, not a recipe
    (the report, the card)."""
    return Path(round_dir) / name / STAGE_OUTPUTS[name]


def gguf_cache(output_dir: str | Path) -> Path:
    """Where a run keeps the F16 GGUFs of its policies that llama.cpp samples and evaluates with."""
    return Path(output_dir) / "gguf"


def converted_policy_path(whole_model_dir: Path, cache: Path) -> Path:
    """The F16 GGUF of these weights (a model without an adapter) under `cache`, named by the sha256 of its weights
    and config, so a rerun or the eval of the same weights finds it."""
    from wpo.config import config_hash
    from wpo.manifest import file_sha256

    weights = sorted(whole_model_dir.glob("*.safetensors")) + [whole_model_dir / "config.json"]
    digest = config_hash([(path.name, file_sha256(path)) for path in weights])[:16]
    return cache / digest / "policy.F16.gguf"


def final_model(recipe: Recipe) -> str:
    """The model a run ends with: the last round's trained weights or LoRA adapter when they exist, else the base
    model. Eval and export use it unless `eval.model` / `export.model` say otherwise."""
    final = stage_output(recipe, "train", recipe.rounds)
    trained = any((final / name).is_file() for name in ("config.json", "adapter_config.json"))
    return str(final) if trained else recipe.model.name_or_path
