"""`wpo score`: candidates → the same records with every candidate's `score` filled → `score/candidates.jsonl`.

Scored records are appended to a progress file as they finish, so a killed run resumes where it stopped; the final
file is written in input order once every record is scored. Non-finite scores are refused, naming the candidate.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from typing import Any

from tqdm.auto import tqdm

from wpo.config import Recipe, config_hash
from wpo.data.io import BadRecordPolicy, write_jsonl
from wpo.data.progress import ProgressFile
from wpo.data.schemas import parse_all, parse_candidates
from wpo.errors import DataError
from wpo.manifest import source_fingerprint, write_manifest
from wpo.scoring import ScoreRequest, make_scorer

log = logging.getLogger(__name__)
OUTPUT = "candidates.jsonl"
RECORDS_PER_APPEND = 8


def candidates_source(recipe: Recipe) -> str:
    return recipe.score.candidates or str(recipe.stage_dir("sample") / "candidates.jsonl")


def run_config(recipe: Recipe) -> dict[str, Any]:
    score = recipe.score.model_dump(mode="json", exclude={"candidates", "batch_size"})
    return {"score": score, "candidates_sha256": source_fingerprint(candidates_source(recipe))}


def run_score(recipe: Recipe) -> dict[str, Any]:
    started = time.perf_counter()
    stage_dir = recipe.stage_dir("score")
    source = candidates_source(recipe)
    policy = BadRecordPolicy(recipe.on_bad_record)
    records = [(item.where, item.raw) for item in parse_all(source, parse_candidates, policy, unique_ids=True)]
    if not records:
        raise DataError(f"{source}: no usable candidate records (skipped {dict(policy.skipped)})")

    config = run_config(recipe)
    run_hash = config_hash(config)
    progress = ProgressFile(stage_dir, "scores", run_hash)
    done = progress.load()
    pending = [(where, data) for where, data in records if str(data["id"]) not in done]
    scorer = make_scorer(recipe, stage_dir) if pending else None
    bar = tqdm(total=sum(len(d["candidates"]) for _, d in pending), desc="score", unit="candidate")
    for start in range(0, len(pending), RECORDS_PER_APPEND):
        chunk = pending[start : start + RECORDS_PER_APPEND]
        requests = [ScoreRequest(d["messages"], c["text"]) for _, d in chunk for c in d["candidates"]]
        scores = iter(scorer.score(requests))
        finished = []
        for where, data in chunk:
            scored = copy.deepcopy(data)
            for index, candidate in enumerate(scored["candidates"]):
                candidate["score"] = _checked(next(scores), where, data["id"], index)
            finished.append(scored)
        progress.append(finished)
        done.update((str(r["id"]), r) for r in finished)
        bar.update(len(requests))
    bar.close()

    written = write_jsonl(stage_dir / OUTPUT, [done[str(data["id"])] for _, data in records])
    progress.remove()
    counts = {
        "records_read": len(records) + sum(policy.skipped.values()),
        "records_written": written,
        "candidates_scored": sum(len(d["candidates"]) for _, d in pending),
        "records_done_before_this_run": len(records) - len(pending),
        "skipped": dict(policy.skipped),
        "truncated": getattr(scorer, "truncated", 0),
        "judge_calls": getattr(scorer, "calls", 0),
        "judge_cache_hits": getattr(scorer, "cache_hits", 0),
    }
    write_manifest(stage_dir, stage="score", config=config, config_hash=run_hash, seed=recipe.seed, counts=counts,
                   wall_seconds=time.perf_counter() - started, outputs=[OUTPUT])  # fmt: skip
    log.info("score: read %d records from %s, wrote %d to %s; skipped %s", counts["records_read"], source, written,
             stage_dir / OUTPUT, dict(policy.skipped) or "none")  # fmt: skip
    return {"output": str(stage_dir / OUTPUT), "counts": counts}


def _checked(score: Any, where: str, record_id: Any, index: int) -> float:
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
        raise DataError(
            f"{where}: candidate {index} of {record_id!r} got score {score!r}; scores must be finite numbers"
        )
    return float(score)
