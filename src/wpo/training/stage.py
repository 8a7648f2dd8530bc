"""`wpo train`: the stage's config, its checks and its input, apart from the trainer (`wpo.training.trainer`), which
this imports only to run: `wpo config` checks a training without loading torch's training stack."""

from __future__ import annotations

from typing import Any

from wpo import machine
from wpo.config import Recipe, TrainConfig
from wpo.data.io import BadRecordPolicy
from wpo.layout import stage_output
from wpo.rules import exists
from wpo.stage_run import StageRun, input_fingerprint


def pairs_source(recipe: Recipe) -> str:
    return recipe.train.pairs or str(stage_output(recipe, "pair"))


def training_lacks(cfg: TrainConfig) -> list[machine.Lack | None]:
    """The optional packages the training settings need."""
    return [machine.bitsandbytes() if cfg.optimizer == "adamw_8bit" else None] + [
        machine.trackio() if "trackio" in cfg.report_to else None
    ]


def check(recipe: Recipe, stages: list[str], lacks: list[machine.Lack | None]) -> None:
    exists("train.reference_model", recipe.train.reference_model, lacks)
    lacks += training_lacks(recipe.train)


def read_input(recipe: Recipe, source: str, policy: BadRecordPolicy) -> None:
    from wpo.data.schemas import load_pairs

    load_pairs(source, policy)  # without tokenizing: training does it


def run_config(recipe: Recipe) -> dict[str, Any]:
    """Everything that determines the trained weights; its hash keys checkpoints and the stage manifest. It holds
    `train.mixed_precision: auto` resolved on this machine, so `auto` and the value it resolves to are one run."""
    from wpo.training.auto_precision import resolve_mixed_precision

    train = recipe.train.hashed_settings()
    train["mixed_precision"] = resolve_mixed_precision(recipe.train.mixed_precision)
    return {
        "seed": recipe.seed,
        "model": recipe.model.model_dump(mode="json"),
        "train": train,
        "inputs": {
            "model.name_or_path": input_fingerprint(recipe.model.name_or_path),
            "train.pairs": input_fingerprint(pairs_source(recipe)),
        },
    }


def run_train(target: StageRun | Recipe) -> dict[str, Any]:
    """The stage entry point: train, and report the headline figures."""
    from wpo.training.trainer import train

    result = train(target)
    return {
        "output": str(result.final_dir),
        "counts": result.counts,
        "final_dir": str(result.final_dir),
        "steps": result.steps,
        "final_metrics": result.last_metrics,
        "reference_from_cache": result.reference_from_cache,
        "weights": result.weights,
    }
