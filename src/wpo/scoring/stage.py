"""`wpo score`: candidates → the same records with every candidate's `score` filled → `score/candidates.jsonl`.

Scored records are appended to a progress file as they finish, so a killed run resumes where it stopped; the final
file is written in input order once every record is scored. Under a launcher (`torchrun`, `accelerate launch`) the
records' chunks are dealt out to the processes, each on its own device, and the main process merges them.
Non-finite scores are refused, naming the candidate.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path
from typing import Any

from accelerate.utils import gather_object
from tqdm.auto import tqdm

from wpo.config import Recipe, ScoreConfig
from wpo.data.io import BadRecordPolicy, write_jsonl
from wpo.data.progress import ProgressFile
from wpo.data.schemas import parse_all, parse_candidates
from wpo.distributed import process_state
from wpo.errors import DataError
from wpo.layout import STAGE_OUTPUTS, output_in
from wpo.machine import Lack
from wpo.manifest import Counts, write_manifest
from wpo.rules import needed_and_there
from wpo.scoring import SCORER_NEEDS, ScoreRequest, make_scorer
from wpo.stage_run import StageRun, code_fingerprints, input_fingerprint, resolved
from wpo.user_functions import recipe_functions

log = logging.getLogger(__name__)
OUTPUT = STAGE_OUTPUTS["score"]
RECORDS_PER_APPEND = 8


def candidates_source(cfg: ScoreConfig, run_dir: str) -> str:
    """`score.candidates`, else what the sample stage of the run (or round) under `run_dir` wrote."""
    return cfg.candidates or str(output_in(Path(run_dir), "sample"))


def check(recipe: Recipe, stages: list[str], lacks: list[Lack | None]) -> None:
    """The chosen scorer's setting is set, and imports or is here."""
    needed_and_there("score", recipe.score, "scorer", SCORER_NEEDS, lacks)


def read_input(recipe: Recipe, source: str, policy: BadRecordPolicy) -> None:
    parse_all(source, parse_candidates, policy, unique_ids=True)


def run_config(recipe: Recipe) -> dict[str, Any]:
    return {
        "score": recipe.score.hashed_settings(),
        "inputs": {"score.candidates": input_fingerprint(candidates_source(recipe.score, recipe.output_dir))},
        "code": code_fingerprints(recipe_functions("score", recipe.score)),
    }


def run_score(target: StageRun | Recipe) -> dict[str, Any]:
    started = time.perf_counter()
    run = resolved(target, "score", run_config)
    recipe = run.recipe
    stage_dir = recipe.stage_dir("score")
    source = candidates_source(recipe.score, recipe.output_dir)
    policy = BadRecordPolicy(recipe.on_bad_record)
    records = [(item.where, item.raw) for item in parse_all(source, parse_candidates, policy, unique_ids=True)]
    if not records:
        raise DataError(f"{source}: no usable candidate records (skipped {dict(policy.skipped)})")

    state = process_state()
    progress = ProgressFile(stage_dir, "scores", run.config_hash, state.process_index, state.num_processes)
    done = progress.load()
    state.wait_for_everyone()  # every process has read (and repaired) the progress files before any appends
    already_done = sum(str(data["id"]) in done for _, data in records)
    if already_done:
        log.info("score: resuming, %d of %d records already scored in %s", already_done, len(records), stage_dir)
    # A plan fixed by the input: chunks are appended whole, so a chunk is done or not whatever the process count.
    chunks = [records[i : i + RECORDS_PER_APPEND] for i in range(0, len(records), RECORDS_PER_APPEND)]
    pending = [chunk for chunk in chunks if any(str(data["id"]) not in done for _, data in chunk)]
    mine = pending[state.process_index :: state.num_processes]
    scorer = make_scorer(recipe.score, recipe.model, stage_dir) if mine else None
    state.wait_for_everyone()  # every judge cache is loaded (and repaired) before any process appends to it
    my_candidates = sum(len(d["candidates"]) for chunk in mine for _, d in chunk)
    bar = tqdm(total=my_candidates, desc="score", unit="candidate", disable=not state.is_main_process)
    for chunk in mine:
        requests = [
            ScoreRequest(d["messages"], c["text"], _prompt_record(d)) for _, d in chunk for c in d["candidates"]
        ]
        scores = iter(scorer.score(requests))
        finished = []
        for where, data in chunk:
            scored = copy.deepcopy(data)
            for index, candidate in enumerate(scored["candidates"]):
                candidate["score"] = _checked(next(scores), where, data["id"], index)
            finished.append(scored)
        progress.append(finished)
        bar.update(len(requests))
    bar.close()

    work = {
        "candidates_scored": my_candidates,
        "truncated": getattr(scorer, "truncated", 0),
        **{f"judge_{name}": value for name, value in getattr(scorer, "usage", {}).items()},
    }
    if state.num_processes > 1:
        log.info("score: process %d scored %d of %d chunks", state.process_index, len(mine), len(pending))
    every_process = gather_object([work]) if state.num_processes > 1 else [work]
    state.wait_for_everyone()
    result = {}
    if state.is_main_process:
        totals = {key: sum(w[key] for w in every_process) for key in work}
        result = _write_scored(run, records, progress, policy, already_done, totals, started)
    state.wait_for_everyone()  # no process moves on before the merged file exists
    return result


def _write_scored(
    run: StageRun,
    records: list[tuple[str, dict[str, Any]]],
    progress: ProgressFile,
    policy: BadRecordPolicy,
    already_done: int,
    work: dict[str, int],
    started: float,
) -> dict[str, Any]:
    """Every process's scored records, in input order: the output file and the manifest."""
    recipe = run.recipe
    stage_dir, source = recipe.stage_dir("score"), candidates_source(recipe.score, recipe.output_dir)
    done = progress.load()
    written = write_jsonl(stage_dir / OUTPUT, [done[str(data["id"])] for _, data in records])
    progress.remove()
    counts = Counts(
        read=len(records) + sum(policy.skipped.values()),
        written=written,
        skipped=dict(policy.skipped),
        other={"records_done_before_this_run": already_done, **work},
    )
    write_manifest(
        stage_dir,
        stage="score",
        config=run.config,
        config_hash=run.config_hash,
        seed=recipe.seed,
        counts=counts,
        wall_seconds=time.perf_counter() - started,
        outputs=[OUTPUT],
    )
    log.info(
        "score: read %d records from %s, wrote %d to %s; skipped %s",
        counts.read,
        source,
        written,
        stage_dir / OUTPUT,
        dict(policy.skipped) or "none",
    )
    return {"output": str(stage_dir / OUTPUT), "counts": counts.to_json()}


def _prompt_record(candidates_record: dict[str, Any]) -> dict[str, Any]:
    """The prompt's record as the prompts file held it: a candidates record without its candidates."""
    return {key: value for key, value in candidates_record.items() if key != "candidates"}


def _checked(score: Any, where: str, record_id: Any, index: int) -> float:
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
        raise DataError(
            f"{where}: candidate {index} of {record_id!r} got score {score!r}; scores must be finite numbers"
        )
    return float(score)
