"""Scoring candidates behind one interface: a reward model, an OpenAI-compatible judge, or a Python callable."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from wpo.config import Recipe
from wpo.rules import Need, needed

# What each scorer cannot run without.
SCORER_NEEDS = {
    "reward_model": Need(
        "model",
        "set it to a sequence-classification reward model (an HF directory or hub id), or choose score.scorer: "
        "python (with score.function) or judge (with score.judge)",
    ),
    "judge": Need("judge", "an endpoint {base_url, model, api_key_env}"),
    "python": Need("function", "module:function(messages, text[, record]) -> float, e.g. wpo.tasks.reference:chrf"),
}


@dataclass(frozen=True)
class ScoreRequest:
    messages: list[dict[str, str]]
    response: str
    record: dict[str, Any] = field(default_factory=dict)  # the prompt's record, for a python scorer's `record`


class Scorer(Protocol):
    def score(self, requests: list[ScoreRequest]) -> list[float]:
        """One score per request, in request order; higher is better."""
        ...


def make_scorer(recipe: Recipe, cache_dir) -> Scorer:
    scorer = recipe.score.scorer
    if scorer == "python":
        from wpo.scoring.python_callable import PythonScorer

        return PythonScorer(needed("score", recipe.score, "scorer", SCORER_NEEDS))
    if scorer == "reward_model":
        from wpo.scoring.reward_model import RewardModelScorer

        cfg = recipe.score
        return RewardModelScorer(
            needed("score", cfg, "scorer", SCORER_NEEDS), recipe.model, cfg.batch_size, cfg.max_length
        )
    from wpo.scoring.judge import JudgeScorer

    return JudgeScorer(needed("score", recipe.score, "scorer", SCORER_NEEDS), cache_dir)
