"""Scoring candidates behind one interface: a reward model, an OpenAI-compatible judge, or a Python callable."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from wpo.config import Recipe


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

        return PythonScorer(recipe.score.required("function"))
    if scorer == "reward_model":
        from wpo.scoring.reward_model import RewardModelScorer

        return RewardModelScorer(recipe)
    from wpo.scoring.judge import JudgeScorer

    return JudgeScorer(recipe.score.required("judge"), cache_dir)
