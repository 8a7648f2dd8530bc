"""`wpo eval`: generate outputs for an eval set, judge them against reference outputs, report WR, LC and length.

Writes `eval/model_outputs.json` and `eval/annotations.json` in alpaca_eval's formats, `eval/metrics.json`,
`eval/report.png` + `eval/report.html`, and upserts the model's row in the leaderboard CSV.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wpo.config import Recipe, config_hash
from wpo.data.io import BadRecordPolicy, write_json
from wpo.data.schemas import PromptRecord, RecordInvalid, load_records, parse_annotation, parse_prompt
from wpo.errors import ConfigError, DataError
from wpo.eval.judges import Comparison, judge_all
from wpo.eval.metrics import summarize
from wpo.eval.report import update_leaderboard, write_report
from wpo.manifest import source_fingerprint, write_manifest

log = logging.getLogger(__name__)
OUTPUTS = ["model_outputs.json", "annotations.json", "metrics.json", "report.png", "report.html"]


def eval_model(recipe: Recipe) -> str:
    """`eval.model`, else the trained model of this run, else the recipe's base model."""
    if recipe.eval.model:
        return recipe.eval.model
    final = recipe.stage_dir("train") / "final"
    return str(final) if (final / "config.json").is_file() else recipe.model.name_or_path


def generator_name(model: str) -> str:
    """The model's name on the leaderboard: a trained run is `<base model>-wpo`, else the model's own name."""
    trained = Path(model) / "wpo_training.json"
    if trained.is_file():
        base = json.loads(trained.read_text(encoding="utf-8"))["base_model"]
        return f"{Path(base.removeprefix('embedded:')).name}-wpo"
    return Path(model.removeprefix("embedded:")).name


def run_config(recipe: Recipe) -> dict[str, Any]:
    model = eval_model(recipe)
    return {
        "seed": recipe.seed,
        "model": model,
        "model_files": source_fingerprint(model) if Path(model).exists() else model,
        "eval": recipe.eval.model_dump(mode="json", exclude={"batch_size", "leaderboard"}),
        "prompts_sha256": source_fingerprint(recipe.eval.prompts or ""),
    }


def from_alpaca_eval(raw: dict[str, Any], where: str, reference_field: str) -> dict[str, Any]:
    """alpaca_eval's eval-set / reference-outputs records (`instruction`, `output`, `generator`) as prompts records."""
    extra = {k: v for k, v in raw.items() if k not in ("instruction", "output", "generator")}
    return {
        "id": raw.get("id", where),
        "messages": [{"role": "user", "content": raw["instruction"]}],
        reference_field: raw.get("output"),
        "reference_generator": raw.get("generator"),
        **extra,
    }


def load_comparisons_inputs(recipe: Recipe, policy: BadRecordPolicy):
    """The eval prompts with their reference outputs: our prompts format, or alpaca_eval's reference outputs file."""
    cfg = recipe.eval
    if not cfg.prompts:
        raise ConfigError("eval.prompts is required: an eval set with a reference output per prompt")

    def parse(raw: dict[str, Any], where: str) -> PromptRecord:
        if "messages" not in raw and isinstance(raw.get("instruction"), str):
            raw = from_alpaca_eval(raw, where, cfg.reference_field)
        prompt = parse_prompt(raw, where)
        if not isinstance(prompt.extra.get(cfg.reference_field), str):
            raise RecordInvalid("missing_reference", f"reference output field {cfg.reference_field!r} is missing")
        return prompt

    prompts = load_records(cfg.prompts, parse, policy)
    if not prompts:
        raise DataError(f"{cfg.prompts}: no usable eval prompts (skipped {dict(policy.skipped)})")
    return prompts


def generate_outputs(recipe: Recipe, model: str, prompts) -> list[str]:
    from wpo.models import resolve_model_path
    from wpo.sampling import SampleRequest, make_sampler, sample_seed

    cfg = recipe.eval
    sampling = recipe.sample.model_copy(update={
        "backend": cfg.backend, "temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": 0,
        "max_new_tokens": cfg.max_new_tokens, "stop": [],
    })  # fmt: skip
    generation_recipe = recipe.model_copy(
        update={"sample": sampling, "model": recipe.model.model_copy(update={"name_or_path": model})}
    )
    sampler = make_sampler(generation_recipe, resolve_model_path(model))
    outputs = []
    for start in range(0, len(prompts), cfg.batch_size):
        batch = prompts[start : start + cfg.batch_size]
        outputs += sampler.generate([SampleRequest(p.messages, sample_seed(recipe.seed, p.id, 0)) for p in batch])
        log.info("eval: generated %d/%d outputs", len(outputs), len(prompts))
    return outputs


def _difficulty_inputs(recipe: Recipe, count: int):
    cfg = recipe.eval
    if cfg.instruction_difficulty is None:
        return None, None
    difficulty = pd.read_csv(cfg.instruction_difficulty)["instruction_difficulty"].to_numpy(dtype=float)
    if len(difficulty) != count:
        raise DataError(f"{cfg.instruction_difficulty}: {len(difficulty)} difficulties for {count} eval instructions")
    gamed = None
    if cfg.gamed_baselines is not None:
        frame = pd.read_csv(cfg.gamed_baselines)
        gamed = {k: frame[k].to_numpy() for k in ("preference", "std_delta_len", "instruction_difficulty",
                                                    "not_gamed_baseline")}  # fmt: skip
    return difficulty, gamed


def run_eval(recipe: Recipe) -> dict[str, Any]:
    started = time.perf_counter()
    cfg = recipe.eval
    stage_dir = recipe.stage_dir("eval")
    policy = BadRecordPolicy(recipe.on_bad_record)
    prompts = load_comparisons_inputs(recipe, policy)
    model = eval_model(recipe)
    generator = cfg.generator_name or generator_name(model)
    outputs = generate_outputs(recipe, model, prompts)
    model_outputs = [{"instruction": p.messages[-1]["content"], "output": o, "generator": generator}
                     for p, o in zip(prompts, outputs, strict=True)]  # fmt: skip
    write_json(stage_dir / "model_outputs.json", model_outputs)

    comparisons = [
        Comparison(p.messages, p.extra[cfg.reference_field], o) for p, o in zip(prompts, outputs, strict=True)
    ]
    preferences = judge_all(recipe, comparisons, stage_dir)
    annotations = [
        {"instruction": c.instruction, "output_1": c.reference, "output_2": c.output,
         "generator_1": p.extra.get("reference_generator") or cfg.reference_generator, "generator_2": generator,
         "preference": pref, "annotator": cfg.judge}
        for p, c, pref in zip(prompts, comparisons, preferences, strict=True)
    ]  # fmt: skip
    write_json(stage_dir / "annotations.json", annotations)
    metrics = metrics_from_annotations(annotations, *_difficulty_inputs(recipe, len(annotations)))
    metrics["judge"] = cfg.judge
    write_json(stage_dir / "metrics.json", metrics)
    board = update_leaderboard(Path(cfg.leaderboard) if cfg.leaderboard else stage_dir / "leaderboard.csv",
                               generator, metrics)  # fmt: skip
    write_report(stage_dir, board, metrics, annotations, generator)
    config = run_config(recipe)
    counts = {"prompts": len(prompts), "skipped": dict(policy.skipped), "draws_identical_outputs":
              sum(c.output == c.reference for c in comparisons)}  # fmt: skip
    write_manifest(stage_dir, stage="eval", config=config, config_hash=config_hash(config), seed=recipe.seed,
                   counts=counts, wall_seconds=time.perf_counter() - started, outputs=OUTPUTS)  # fmt: skip
    log.info("eval: %s vs %s on %d instructions: LC %.2f, WR %.2f, avg length %.0f", generator,
             cfg.reference_generator, len(prompts), metrics["length_controlled_winrate"], metrics["win_rate"],
             metrics["avg_length"])  # fmt: skip
    return {"generator": generator, "metrics": metrics}


def metrics_from_annotations(annotations: list[dict[str, Any]], difficulty=None, gamed=None) -> dict[str, Any]:
    return summarize(
        np.array([a["preference"] for a in annotations], dtype=float),
        [a["output_1"] for a in annotations],
        [a["output_2"] for a in annotations],
        difficulty,
        gamed,
    )


def metrics_from_file(path: str) -> dict[str, Any]:
    """`wpo eval --annotations FILE`: every metric recomputed from an alpaca_eval annotations file."""
    annotations = load_records(path, parse_annotation, BadRecordPolicy())
    if not annotations:
        raise DataError(f"{path}: no annotations")
    generators = {a.generator_2 for a in annotations}
    if len(generators) != 1:
        raise DataError(f"{path}: annotations of several models ({', '.join(sorted(generators))}); pass one model's")
    metrics = metrics_from_annotations([vars(a) for a in annotations])
    metrics["generator"] = generators.pop()
    return metrics
