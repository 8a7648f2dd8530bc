"""Where a run keeps what: each stage's directory and the output the next stage reads, the final model, rounds.

A low module (no torch, no stages): the stages, the checks and the runner import it; it imports none of them.
"""

from __future__ import annotations

from pathlib import Path

from wpo.config import Recipe

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
    return recipe.round_output_dir(round_number) / name / STAGE_OUTPUTS[name]


def final_model(recipe: Recipe) -> str:
    """The model a run ends with: the last round's trained weights or LoRA adapter when they exist, else the base
    model. Eval and export use it unless `eval.model` / `export.model` say otherwise."""
    final = stage_output(recipe, "train", recipe.rounds)
    trained = any((final / name).is_file() for name in ("config.json", "adapter_config.json"))
    return str(final) if trained else recipe.model.name_or_path
