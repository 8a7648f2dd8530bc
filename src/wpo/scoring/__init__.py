"""Scoring candidates behind one interface: a reward model, an OpenAI-compatible judge, or a Python callable."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from wpo.config import ModelConfig, ScoreConfig
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


def make_scorer(cfg: ScoreConfig, model: ModelConfig, cache_dir: Path) -> Scorer:
    """The scorer `cfg` names; a reward model loads with the policy's `model` settings (dtype, remote code), a judge
    caches its answers in `cache_dir`."""
    setting = needed("score", cfg, "scorer", SCORER_NEEDS)
    if cfg.scorer == "python":
        from wpo.scoring.python_callable import PythonScorer

        return PythonScorer(setting)
    if cfg.scorer == "reward_model":
        from wpo.scoring.reward_model import RewardModelScorer

        return RewardModelScorer(setting, model, cfg.batch_size, cfg.max_length)
    from wpo.scoring.judge import JudgeScorer

    return JudgeScorer(setting, cache_dir)
