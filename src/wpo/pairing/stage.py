"""`wpo pair`: scored candidates → `pair/pairs.jsonl` (TRL conversational preference format) + `pair/stats.json`."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wpo.config import ModelConfig, PairConfig, Recipe
from wpo.data.io import BadRecordPolicy, write_json, write_jsonl
from wpo.data.schemas import CandidatesRecord, Pair, RecordInvalid, parse_all, parse_candidates
from wpo.errors import DataError
from wpo.layout import STAGE_OUTPUTS, output_in
from wpo.manifest import Counts, write_manifest
from wpo.pairing import choose_pair
from wpo.stage_run import StageRun, input_fingerprint, resolved

log = logging.getLogger(__name__)
OUTPUT, STATS = STAGE_OUTPUTS["pair"], "stats.json"


def candidates_source(cfg: PairConfig, run_dir: str) -> str:
    """`pair.candidates`, else what the score stage of the run (or round) under `run_dir` wrote."""
    return cfg.candidates or str(output_in(Path(run_dir), "score"))


def run_config(recipe: Recipe) -> dict[str, Any]:
    config = {
        "pair": recipe.pair.hashed_settings(),
        "inputs": {"pair.candidates": input_fingerprint(candidates_source(recipe.pair, recipe.output_dir))},
    }
    if recipe.pair.length_unit == "tokens":
        config["tokenizer"] = recipe.model.name_or_path
    return config


def parse_scored(record: dict[str, Any], where: str) -> CandidatesRecord:
    parsed = parse_candidates(record, where)
    for index, candidate in enumerate(parsed.candidates):
        if candidate.score is None:
            raise RecordInvalid("unscored_candidate", f"candidates[{index}] has no score (run wpo score first)")
    return parsed


def read_input(recipe: Recipe, source: str, policy: BadRecordPolicy) -> None:
    parse_all(source, parse_scored, policy, unique_ids=True)


def histogram(values: list[float], edges: np.ndarray) -> dict[str, list[float]]:
    counts, _ = np.histogram(values, bins=edges)
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def run_pair(target: StageRun | Recipe) -> dict[str, Any]:
    started = time.perf_counter()
    run = resolved(target, "pair", run_config)
    recipe = run.recipe
    stage_dir = recipe.stage_dir("pair")
    source = candidates_source(recipe.pair, recipe.output_dir)
    policy = BadRecordPolicy(recipe.on_bad_record)
    records: list[CandidatesRecord] = [item.record for item in parse_all(source, parse_scored, policy, unique_ids=True)]
    if not records:
        raise DataError(f"{source}: no usable scored candidates (skipped {dict(policy.skipped)})")
    formed = form_pairs(records, recipe.pair, answer_length(recipe.pair, recipe.model))
    pairs = formed.pairs
    if not pairs:
        raise DataError(
            f"{source}: no preference pair could be formed from {len(records)} prompts "
            f"(dropped {dict(formed.dropped)}, skipped {dict(policy.skipped)})"
        )
    written = write_jsonl(stage_dir / OUTPUT, [p.to_record() for p in pairs])
    formed_stats = formed.stats()
    stats = {"pairs": written, "prompts": len(records), "dropped": formed_stats.pop("dropped")}
    stats |= {"skipped": dict(policy.skipped), "length_unit": recipe.pair.length_unit, **formed_stats}
    write_json(stage_dir / STATS, stats)
    counts = Counts(
        read=len(records) + sum(policy.skipped.values()),
        written=written,
        skipped=dict(policy.skipped + formed.dropped),
        other={key: stats[key] for key in ("empty_candidates_ignored", "cut_off_candidates")},
    )
    write_manifest(
        stage_dir,
        stage="pair",
        config=run.config,
        config_hash=run.config_hash,
        seed=recipe.seed,
        counts=counts,
        wall_seconds=time.perf_counter() - started,
        outputs=[OUTPUT, STATS],
    )
    log.info(
        "pair: read %d prompts from %s, wrote %d pairs to %s; dropped %s",
        len(records),
        source,
        written,
        stage_dir / OUTPUT,
        dict(formed.dropped) or "none",
    )
    return {"output": str(stage_dir / OUTPUT), "counts": counts.to_json(), "stats": stats}


def answer_length(cfg: PairConfig, model: ModelConfig) -> Callable[[str], int]:
    """How `pair.length_unit` measures an answer (the length tie-break): characters, or the policy's tokens."""
    if cfg.length_unit != "tokens":
        return len
    from wpo.models import load_tokenizer, resolve_model_path

    tokenizer = load_tokenizer(resolve_model_path(model.name_or_path), model.trust_remote_code)
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


@dataclass
class FormedPairs:
    """The pairs of every prompt that gives one, and the counts the stage reports."""

    cut_off_rule: str
    pairs: list[Pair] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)
    sources: dict[str, Counter] = field(default_factory=lambda: {"chosen": Counter(), "rejected": Counter()})
    empty_candidates: int = 0
    cut_off_candidates: int = 0
    all_scores: list[float] = field(default_factory=list)

    def stats(self) -> dict[str, Any]:
        chosen = [p.score_chosen for p in self.pairs]
        rejected = [p.score_rejected for p in self.pairs]
        edges = np.histogram_bin_edges(self.all_scores or [0.0], bins=10)
        return {
            "dropped": dict(self.dropped),
            "empty_candidates_ignored": self.empty_candidates,
            "cut_off_candidates": self.cut_off_candidates,
            "cut_off_rule": self.cut_off_rule,
            "sources": {side: dict(counter) for side, counter in self.sources.items()},
            "mean_margin": float(np.mean(np.subtract(chosen, rejected))) if self.pairs else None,
            "histograms": {
                "all": histogram(self.all_scores, edges),
                "chosen": histogram(chosen, edges),
                "rejected": histogram(rejected, edges),
            },
        }


def form_pairs(records: list[CandidatesRecord], cfg: PairConfig, length: Callable[[str], int]) -> FormedPairs:
    """Best vs worst non-empty candidate of each prompt (`choose_pair`), under `pair.cut_off` and `pair.min_margin`."""
    formed = FormedPairs(cfg.cut_off)
    for record in records:
        candidates = [c for c in record.candidates if c.text.strip()]
        formed.empty_candidates += len(record.candidates) - len(candidates)
        formed.cut_off_candidates += sum(c.finish_reason == "length" for c in candidates)
        if cfg.cut_off == "drop":
            candidates = [c for c in candidates if c.finish_reason != "length"]
        scores = [c.score for c in candidates]
        formed.all_scores += scores
        eligible = [c.finish_reason != "length" for c in candidates] if cfg.cut_off == "never_chosen" else None
        choice = choose_pair(
            scores, [length(c.text) for c in candidates], [c.text for c in candidates], cfg.min_margin, eligible
        )
        if choice.drop_reason:
            formed.dropped[choice.drop_reason] += 1
            continue
        chosen, rejected = candidates[choice.chosen], candidates[choice.rejected]
        formed.pairs.append(
            Pair(
                record.id,
                record.messages,
                chosen.text,
                rejected.text,
                chosen.score,
                rejected.score,
                chosen.source,
                rejected.source,
            )
        )
        formed.sources["chosen"][chosen.source] += 1
        formed.sources["rejected"][rejected.source] += 1
    return formed
