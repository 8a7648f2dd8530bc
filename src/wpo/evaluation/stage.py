"""`wpo eval`: generate outputs for an eval set, judge them against reference outputs, report WR, LC and length.

Writes `eval/model_outputs.json` and `eval/annotations.json` in alpaca_eval's formats, `eval/metrics.json`,
`eval/report.png` + `eval/report.html`, and upserts the model's row in the leaderboard CSV.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from wpo import machine
from wpo.config import EvalConfig, ModelConfig, Recipe
from wpo.data.io import BadRecordPolicy, atomic_writer, write_json, write_jsonl
from wpo.data.schemas import PromptRecord, RecordInvalid, load_records, parse_annotation, parse_prompt
from wpo.errors import ConfigError, DataError
from wpo.evaluation.contamination import check_contamination, training_sources
from wpo.evaluation.judges import JUDGE_NEEDS, Comparison, judge_all
from wpo.evaluation.leaderboard import update_leaderboard, write_report
from wpo.evaluation.measures import compare, per_prompt_values, side_by_side, verdict
from wpo.evaluation.metrics import summarize
from wpo.figures import MeasureRow, paired_measures
from wpo.layout import final_model
from wpo.machine import Lack
from wpo.manifest import Counts, write_manifest
from wpo.models import generator_name, merged_model_dir
from wpo.rules import exists, needed_and_there, required, user_function
from wpo.sampling import Generation
from wpo.stage_run import StageRun, code_fingerprints, input_fingerprint, resolved
from wpo.user_functions import prompt_record, recipe_functions

log = logging.getLogger(__name__)


def compares_with_base(cfg: EvalConfig) -> bool:
    """The base model's outputs are needed as the pairwise baseline, or to measure what training did to the reward."""
    return cfg.compare_to == "base_model" or cfg.reward is not None or bool(cfg.measures)


def run_config(recipe: Recipe) -> dict[str, Any]:
    """`model` is the model evaluated: `eval.model`, else the trained model of this run (weights or LoRA adapter),
    else the recipe's base model."""
    model = recipe.eval.model or final_model(recipe)
    base = recipe.model.name_or_path if compares_with_base(recipe.eval) else None
    return {
        "seed": recipe.seed,
        "model": model,
        "base_model": base,
        "eval": recipe.eval.hashed_settings(),
        "inputs": {
            "eval.model": input_fingerprint(model),
            "model.name_or_path": input_fingerprint(base),
            "eval.prompts": input_fingerprint(recipe.eval.prompts),
        },
        "code": code_fingerprints(recipe_functions("eval", recipe.eval)),
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


def eval_prompts_source(cfg: EvalConfig) -> str:
    return required(
        "eval.prompts",
        cfg.prompts,
        "the eval stage",
        "an eval set with a reference answer per prompt (or eval.compare_to: base_model), e.g. "
        "builtin:ifeval-heldout.jsonl",
    )


def load_comparisons_inputs(cfg: EvalConfig, policy: BadRecordPolicy):
    """The eval prompts (with their reference outputs unless the baseline is the base model): our prompts format, or
    alpaca_eval's reference outputs file."""
    source = eval_prompts_source(cfg)
    needs_reference = cfg.compare_to == "reference"

    def parse(raw: dict[str, Any], where: str) -> PromptRecord:
        if "messages" not in raw and isinstance(raw.get("instruction"), str):
            raw = from_alpaca_eval(raw, where, cfg.reference_field)
        prompt = parse_prompt(raw, where)
        if needs_reference and not isinstance(prompt.extra.get(cfg.reference_field), str):
            raise RecordInvalid("missing_reference", f"reference output field {cfg.reference_field!r} is missing")
        return prompt

    prompts = load_records(source, parse, policy)
    if not prompts:
        raise DataError(f"{source}: no usable eval prompts (skipped {dict(policy.skipped)})")
    return prompts


def generate_outputs(model: str, settings: ModelConfig, generation: Generation, prompts) -> list[str]:
    """One answer per prompt from `model`, loaded with the policy's `settings` (dtype, remote code)."""
    from wpo.models import resolve_model_path
    from wpo.sampling import SampleRequest, make_sampler, sample_seed

    evaluated = ModelConfig(**{**settings.model_dump(), "name_or_path": model})  # validated like any section
    sampler = make_sampler(resolve_model_path(model), evaluated, generation)
    outputs = []
    size = generation.batch_size
    for start in tqdm(range(0, len(prompts), size), desc=f"eval: {generator_name(model)}", unit="batch"):
        batch = prompts[start : start + size]
        samples = sampler.generate([SampleRequest(p.messages, sample_seed(generation.seed, p.id, 0)) for p in batch])
        outputs += [sample.text for sample in samples]
    log.info("eval: generated %d outputs with %s", len(outputs), model)
    return outputs


def _difficulty_inputs(cfg: EvalConfig, instructions: list[str]):
    """AlpacaEval's per-instruction difficulties (a CSV with `instruction` and `instruction_difficulty` columns, as
    alpaca_eval ships it), matched to this eval set by instruction text — never by row position, which silently
    misaligns a reordered or filtered eval set — and its gamed-baseline rows when given."""
    if cfg.instruction_difficulty is None:
        return None, None
    frame = pd.read_csv(cfg.instruction_difficulty)
    missing_columns = {"instruction", "instruction_difficulty"} - set(frame.columns)
    if missing_columns:
        raise DataError(
            f"{cfg.instruction_difficulty}: no column {', '.join(sorted(missing_columns))} (expected "
            "instruction and instruction_difficulty)"
        )
    by_instruction = dict(zip(frame["instruction"], frame["instruction_difficulty"].astype(float), strict=True))
    unknown = [text for text in instructions if text not in by_instruction]
    if unknown:
        raise DataError(
            f"{cfg.instruction_difficulty}: no difficulty for {len(unknown)} of {len(instructions)} eval "
            f"instructions, e.g. {unknown[0][:80]!r}"
        )
    difficulty = np.array([by_instruction[text] for text in instructions])
    gamed = None
    if cfg.gamed_baselines is not None:
        frame = pd.read_csv(cfg.gamed_baselines)
        gamed = {
            k: frame[k].to_numpy()
            for k in ("preference", "std_delta_len", "instruction_difficulty", "not_gamed_baseline")
        }
    return difficulty, gamed


def outputs_file(prompts, outputs: list[str], generator: str) -> list[dict[str, str]]:
    """alpaca_eval's `model_outputs.json` records."""
    return [
        {"instruction": p.messages[-1]["content"], "output": o, "generator": generator}
        for p, o in zip(prompts, outputs, strict=True)
    ]


def heldout_measures(
    cfg: EvalConfig,
    seed: int,
    prompts,
    base_outputs: list[str],
    outputs: list[str],
    stage_dir: Path,
    generators: tuple[str, str],
) -> dict[str, Any]:
    """Every measure of the base's and the evaluated model's answers per prompt (`measures.jsonl`,
    `side_by_side.md`), their paired bootstrap CIs (drawn from `seed`), and the verdict on "better" (see
    `wpo.evaluation.measures`)."""
    from wpo.user_functions import load_function

    functions = {"reward": load_function(cfg.reward, "eval.reward")} if cfg.reward else {}
    functions |= {name: load_function(spec, f"eval.measures.{name}") for name, spec in cfg.measures.items()}
    with_reference = all(isinstance(p.extra.get(cfg.reference_field), str) for p in prompts)
    rows = []
    for prompt, base, trained in tqdm(
        list(zip(prompts, base_outputs, outputs, strict=True)), desc="eval: measures", unit="prompt"
    ):
        reference = prompt.extra[cfg.reference_field] if with_reference else None
        values = [per_prompt_values(functions, prompt, text, reference) for text in (base, trained)]
        rows.append(
            {
                "id": prompt.id,
                **({"constraint": prompt.extra["constraint"]} if "constraint" in prompt.extra else {}),
                **{MeasureRow.fields(name)[0]: value for name, value in values[0].items()},
                **{MeasureRow.fields(name)[1]: value for name, value in values[1].items()},
                "prompt": prompt.messages[-1]["content"],
                "reference": reference,
                "base_output": base,
                "output": trained,
            }
        )
    names = list(values[0])
    write_jsonl(stage_dir / "measures.jsonl", rows)
    highlight = "reward" if "reward" in names else names[0]
    with atomic_writer(stage_dir / "side_by_side.md") as handle:
        handle.write(side_by_side(rows, names, generators[0], generators[1], highlight))
    metrics = compare(rows, names, seed)
    gains = [name for name in names if name in functions]
    metrics.update(verdict(metrics, gains, cfg.content_margin, cfg.min_length_ratio, cfg.repetition_margin))
    return metrics


def run_eval(target: StageRun | Recipe) -> dict[str, Any]:
    """Answers of the model (and of the base when it is the baseline or measured), judged against the baseline,
    measured, checked for contamination, and written as alpaca_eval's files plus wpo's."""
    started = time.perf_counter()
    run = resolved(target, "eval", run_config)
    recipe = run.recipe
    cfg, base_model = recipe.eval, recipe.model.name_or_path
    stage_dir = recipe.stage_dir("eval")
    policy = BadRecordPolicy(recipe.on_bad_record)
    prompts = load_comparisons_inputs(cfg, policy)
    model = run.config["model"]
    if model == base_model:
        _warn_if_untrained(cfg, base_model, recipe.output_dir)
    generator = cfg.generator_name or generator_name(model)
    generation = Generation.for_eval(cfg, recipe.sample, recipe.seed, recipe.output_dir)
    outputs, base_outputs, written = _answers(cfg, recipe.model, generation, model, generator, prompts, stage_dir)
    if cfg.compare_to == "base_model":
        references, reference_generators = base_outputs, [generator_name(recipe.model.name_or_path)] * len(prompts)
    else:
        references = [p.extra[cfg.reference_field] for p in prompts]
        reference_generators = [p.extra.get("reference_generator") or cfg.reference_generator for p in prompts]
    comparisons = [
        Comparison(p.messages, r, o, prompt_record(p.id, p.messages, p.extra))
        for p, r, o in zip(prompts, references, outputs, strict=True)
    ]
    annotations, metrics, judge_usage = _judged(
        cfg, recipe.model, comparisons, reference_generators, generator, stage_dir
    )
    if base_outputs is not None:
        generators = (generator_name(base_model), generator)
        metrics.update(heldout_measures(cfg, recipe.seed, prompts, base_outputs, outputs, stage_dir, generators))
        written += ["measures.jsonl", "side_by_side.md"]
        metrics["identical_to_base"] = sum(o == b for o, b in zip(outputs, base_outputs, strict=True))
        if model != base_model and metrics["identical_to_base"] == len(prompts):
            log.warning(
                "eval: every one of the %d answers is identical to the base model's: the training changed "
                "nothing these prompts show (train.learning_rate %g over %s steps); train more, or with a "
                "larger learning rate",
                len(prompts),
                recipe.train.learning_rate,
                recipe.train.max_steps or "its",
            )
    metrics.update(contamination_summary(training_sources(recipe), prompts))
    write_json(stage_dir / "metrics.json", metrics)
    board = update_leaderboard(
        Path(cfg.leaderboard) if cfg.leaderboard else stage_dir / "leaderboard.csv", generator, metrics
    )
    write_report(stage_dir, board, metrics, annotations, generator)
    counts = Counts(
        read=len(prompts) + sum(policy.skipped.values()),
        written=len(prompts),  # answers, one per prompt
        skipped=dict(policy.skipped),
        other={
            "draws_identical_outputs": sum(c.output == c.reference for c in comparisons),
            "judge_usage": judge_usage,
            "contaminated_instructions": metrics["contaminated_instructions"],
        },
    )
    written += ["annotations.json", "metrics.json", "report.png", "report.html"]
    write_manifest(
        stage_dir,
        stage="eval",
        config=run.config,
        config_hash=run.config_hash,
        seed=recipe.seed,
        counts=counts,
        wall_seconds=time.perf_counter() - started,
        outputs=written,
    )
    _log_figures(metrics, generator, reference_generators[0], len(prompts))
    return {"generator": generator, "metrics": metrics}


def refuse_the_base_against_itself(cfg: EvalConfig, base_model: str, output_dir: str, evaluated: str | None) -> None:
    """eval.compare_to: base_model needs something other than the base to evaluate (`evaluated`: the model eval
    will answer with, None when a train stage of the run under `output_dir` writes it)."""
    if cfg.compare_to != "base_model" or evaluated != base_model:
        return
    nothing = (
        "eval.model is the base model"
        if cfg.model
        else f"nothing is trained under {output_dir} and stages do not include train"
    )
    raise ConfigError(
        f"eval.compare_to: base_model, but {nothing}: the base would be compared with itself; "
        "train first, or set eval.model to the model to evaluate"
    )


def check(recipe: Recipe, stages: list[str], lacks: list[Lack | None]) -> None:
    """The eval set, the judge's setting, the user's functions, and something other than the base to evaluate."""
    cfg = recipe.eval
    exists("eval.prompts", eval_prompts_source(cfg), lacks)
    for key in ("model", "instruction_difficulty", "gamed_baselines"):
        exists(f"eval.{key}", getattr(cfg, key), lacks)
    lacks += machine.generation_backend(cfg.backend, "eval.backend", recipe.sample.tensor_parallel_size)
    needed_and_there("eval", cfg, "judge", JUDGE_NEEDS, lacks)
    if cfg.judge == "alpaca_eval":
        from wpo.evaluation.alpaca_eval_protocol import annotator_settings

        missing = machine.alpaca_eval()
        if missing:
            lacks.append(missing)
        else:
            annotator_settings(cfg.annotator)  # found, and one chat annotator
        required(
            "eval.api",
            cfg.api,
            "eval.judge: alpaca_eval",
            "the OpenAI-compatible server the annotator's prompts go to {base_url, model, api_key_env}",
        )
    for key, spec in recipe_functions("eval", cfg).items():
        user_function(spec, key)
    evaluated = cfg.model or (None if "train" in stages else final_model(recipe))
    refuse_the_base_against_itself(cfg, recipe.model.name_or_path, recipe.output_dir, evaluated)


def read_input(recipe: Recipe, source: str, policy: BadRecordPolicy) -> None:
    load_comparisons_inputs(recipe.eval, policy)


def _warn_if_untrained(cfg: EvalConfig, base_model: str, output_dir: str) -> None:
    """Eval answers with the base model: refused where the base is also the baseline, else said."""
    refuse_the_base_against_itself(cfg, base_model, output_dir, base_model)  # wpo.checks refuses it first
    log.warning(
        "eval: nothing trained under %s and eval.model is unset: evaluating the base model %s against the references",
        output_dir,
        base_model,
    )


def _answers(
    cfg: EvalConfig, base: ModelConfig, generation: Generation, model: str, generator: str, prompts, stage_dir: Path
):
    """The model's answers, and the base model's (`base`, whose settings load both) when the eval compares with it
    or measures both (else None); the files written."""
    trust = base.trust_remote_code
    outputs = generate_outputs(
        str(merged_model_dir(Path(model), stage_dir, trust_remote_code=trust)) if Path(model).is_dir() else model,
        base,
        generation,
        prompts,
    )
    write_json(stage_dir / "model_outputs.json", outputs_file(prompts, outputs, generator))
    written = ["model_outputs.json"]
    base_outputs: list[str] | None = None
    if compares_with_base(cfg):
        base_outputs = (
            outputs if base.name_or_path == model else generate_outputs(base.name_or_path, base, generation, prompts)
        )
        write_json(
            stage_dir / "base_outputs.json", outputs_file(prompts, base_outputs, generator_name(base.name_or_path))
        )
        written.append("base_outputs.json")
    return outputs, base_outputs, written


def _judged(
    cfg: EvalConfig, model: ModelConfig, comparisons, reference_generators: list[str], generator: str, stage_dir: Path
):
    """alpaca_eval's annotations (written), the win rates and LC from them, who judged, and the judge's usage."""
    preferences, judge_usage = judge_all(cfg, model, comparisons, stage_dir)
    annotations = [
        {
            "instruction": c.instruction,
            "output_1": c.reference,
            "output_2": c.output,
            "generator_1": g,
            "generator_2": generator,
            "preference": pref,
            "annotator": cfg.annotator if cfg.judge == "alpaca_eval" else cfg.judge,
        }
        for c, g, pref in zip(comparisons, reference_generators, preferences, strict=True)
    ]
    write_json(stage_dir / "annotations.json", annotations)
    metrics = metrics_from_annotations(annotations, *_difficulty_inputs(cfg, [a["instruction"] for a in annotations]))
    metrics["judge"] = cfg.judge
    metrics["reference_generator"] = reference_generators[0]
    if cfg.judge == "alpaca_eval":
        from wpo.evaluation.alpaca_eval_protocol import comparability

        metrics["alpaca_eval"] = comparability(cfg, len(comparisons), reference_generators[0])
        if not metrics["alpaca_eval"]["comparable_with_leaderboard"]:
            log.warning(
                "eval: AlpacaEval 2's protocol with %s, but not comparable with the public leaderboard: %s",
                cfg.annotator,
                "; ".join(metrics["alpaca_eval"]["not_comparable_because"]),
            )
    return annotations, metrics, judge_usage


def _log_figures(metrics: dict[str, Any], generator: str, baseline: str, count: int) -> None:
    log.info(
        "eval: %s vs %s on %d instructions: LC %.2f, WR %.2f, avg length %.0f",
        generator,
        baseline,
        count,
        metrics["length_controlled_winrate"],
        metrics["win_rate"],
        metrics["avg_length"],
    )
    for measure in paired_measures(metrics):
        log.info(
            "eval: %s %.3f (base) → %.3f (%s); delta %+.3f, 95%% CI [%.3f, %.3f]",
            measure.name,
            measure.base.mean,
            measure.trained.mean,
            generator,
            measure.delta.mean,
            *measure.delta.ci95,
        )
    if "better" in metrics:
        failed = [name for name, check in metrics["verdict"].items() if not check["passed"]]
        log.info(
            "eval: better than the base: %s%s", metrics["better"], f" (failed: {', '.join(failed)})" * bool(failed)
        )


def contamination_summary(sources: list[str], prompts) -> dict[str, Any]:
    """How many eval instructions share a long n-gram of their own with the run's training prompts and pairs
    (`sources`, from `training_sources`) or are a whole training text, and which."""
    overlap = check_contamination(sources, [p.messages[-1]["content"] for p in prompts])
    if overlap.found:
        log.warning(
            "eval: %d of %d eval instructions share a %d-word sequence with the training data (%s), e.g. %s: "
            "their figures measure memory, not skill",
            len(overlap.found),
            len(prompts),
            overlap.ngram,
            ", ".join(overlap.sources),
            prompts[next(iter(overlap.found))].id,
        )
    return {
        "contaminated_instructions": len(overlap.found),
        "contamination": {
            "ngram": overlap.ngram,
            "sources": overlap.sources,
            "training_texts_read": overlap.texts_read,
            "instructions_checked": len(prompts),
            "template_ngrams_set_aside": overlap.template_ngrams,
            "contaminated": len(overlap.found),
            "instructions": [{"id": prompts[i].id, "shared": shared} for i, shared in overlap.found.items()],
        },
    }


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
