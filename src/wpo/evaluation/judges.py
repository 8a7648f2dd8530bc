"""Pairwise judges: is the model's output better than the reference's? Each returns an alpaca_eval preference in [1, 2].

- `api`: an OpenAI-compatible chat judge sees both outputs as (a) and (b) and answers one letter; the preference is
  the judge's probability of the model's letter among the two (weighted, as AlpacaEval 2 does), or its discrete
  answer when no logprobs come back. Which output is (a) is decided per instruction by a hash of its text, so the
  order is random across instructions yet the same on every rerun; the answer is un-swapped afterwards.
- `reward_model`: 1 + σ(r(model) − r(reference)), the Bradley–Terry probability under a sequence-classification RM.
- `python`: `module:function(messages, reference_output, model_output[, record]) -> P(model better)` in [0, 1].
- `alpaca_eval`: AlpacaEval 2's own annotator, run by the alpaca_eval package (`wpo.evaluation.alpaca_eval_protocol`).

Identical outputs are a draw (1.5) without asking anyone.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wpo.config import EvalConfig, ModelConfig, ScoreConfig
from wpo.endpoints import CACHE_FILE, AnswerCache, ChatRequest, Endpoint, first_token_distribution, message_text
from wpo.errors import WpoError
from wpo.rules import Need, needed

# What each judge cannot run without.
JUDGE_NEEDS = {
    "api": Need("api", "an endpoint {base_url, model, api_key_env} that judges pairs"),
    "alpaca_eval": Need(
        "annotator",
        "an annotator shipped with alpaca_eval, e.g. weighted_alpaca_eval_gpt4_turbo (AlpacaEval 2's), or the path "
        "of its configs.yaml",
    ),
    "reward_model": Need("reward_model", "a sequence-classification reward model"),
    "python": Need(
        "function", "module:function(messages, reference_output, model_output[, record]) -> P(model better)"
    ),
}

PAIRWISE_SYSTEM = "You are a careful, impartial judge of assistant responses."
PAIRWISE_TEMPLATE = (
    "Which output follows the instruction better: more helpful, correct and faithful to what was asked?\n\n"
    "[Instruction]\n{instruction}\n\n[Output (a)]\n{first}\n\n[Output (b)]\n{second}\n\n"
    "Answer with a single letter, a or b."
)


@dataclass(frozen=True)
class Comparison:
    messages: list[dict[str, str]]
    reference: str
    output: str
    record: dict[str, Any] = field(default_factory=dict)  # the prompt's record, for a python judge's `record`

    @property
    def instruction(self) -> str:
        return self.messages[-1]["content"]


def model_shown_first(instruction: str) -> bool:
    """The per-instruction order: deterministic from the instruction text, balanced across instructions."""
    return hashlib.sha256(instruction.encode("utf-8")).digest()[0] % 2 == 1


def second_better(choice: dict[str, Any]) -> float:
    """P(output (b) better): the judge's probability of "b" among "a" and "b", else its discrete answer."""
    letters = first_token_distribution(choice)
    p_a, p_b = letters.get("a", 0.0), letters.get("b", 0.0)
    if p_a + p_b > 0:
        return p_b / (p_a + p_b)
    answer = message_text(choice).strip().lower()[:1]
    if answer not in ("a", "b"):
        raise WpoError(f"pairwise judge answered {answer!r}; expected 'a' or 'b'")
    return 1.0 if answer == "b" else 0.0


class ApiPairwiseJudge:
    def __init__(self, cfg: EvalConfig, cache_dir: Path):
        self.config = needed("eval", cfg, "judge", JUDGE_NEEDS)
        self.endpoint = Endpoint(self.config, "eval.api", AnswerCache(cache_dir / CACHE_FILE))

    def _request(self, first: str, second: str, instruction: str) -> ChatRequest:
        prompt = PAIRWISE_TEMPLATE.format(instruction=instruction, first=first, second=second)
        return ChatRequest(
            key=AnswerCache.key(
                self.config.model, self.config.extra_body, PAIRWISE_TEMPLATE, instruction, first, second
            ),
            messages=[{"role": "system", "content": PAIRWISE_SYSTEM}, {"role": "user", "content": prompt}],
            params={"max_tokens": 1, "temperature": 0.0, "logprobs": True, "top_logprobs": 20},
            label=f"the instruction {instruction[:60]!r}",
        )

    def preferences(self, comparisons: list[Comparison]) -> list[float]:
        """Every comparison asked concurrently, the model's output shown first or second by `model_shown_first`."""
        firsts = [model_shown_first(item.instruction) for item in comparisons]
        requests = [
            self._request(item.output, item.reference, item.instruction)
            if first
            else self._request(item.reference, item.output, item.instruction)
            for item, first in zip(comparisons, firsts, strict=True)
        ]
        answers = self.endpoint.ask_all(requests, second_better, desc="eval: judge")
        return [1.0 + (1.0 - p if first else p) for p, first in zip(answers, firsts, strict=True)]


class RewardModelPairwiseJudge:
    def __init__(self, cfg: EvalConfig, model: ModelConfig):
        from wpo.scoring.reward_model import RewardModelScorer

        self.scorer = RewardModelScorer(
            needed("eval", cfg, "judge", JUDGE_NEEDS),
            model,
            batch_size=ScoreConfig.model_fields["batch_size"].default,  # score's defaults for a scorer, unset here
            max_length=ScoreConfig.model_fields["max_length"].default,
        )

    def preferences(self, comparisons: list[Comparison]) -> list[float]:
        from wpo.scoring import ScoreRequest

        requests = [ScoreRequest(c.messages, text) for c in comparisons for text in (c.reference, c.output)]
        scores = self.scorer.score(requests)
        return [1.0 + 1.0 / (1.0 + math.exp(scores[2 * i] - scores[2 * i + 1])) for i in range(len(comparisons))]


class PythonPairwiseJudge:
    def __init__(self, cfg: EvalConfig):
        from wpo.user_functions import load_function

        self.function = load_function(needed("eval", cfg, "judge", JUDGE_NEEDS), "eval.function")

    def preferences(self, comparisons: list[Comparison]) -> list[float]:
        preferences = []
        for item in comparisons:
            p_model = self.function(item.messages, item.reference, item.output, record=item.record)
            if isinstance(p_model, bool) or not isinstance(p_model, int | float) or not 0.0 <= p_model <= 1.0:
                raise WpoError(f"eval.function returned {p_model!r} for {item.instruction[:60]!r}; expected [0, 1]")
            preferences.append(1.0 + float(p_model))
        return preferences


def _alpaca_eval_judge(cfg: EvalConfig, cache_dir: Path):
    from wpo.evaluation.alpaca_eval_protocol import AlpacaEvalJudge

    return AlpacaEvalJudge(cfg, cache_dir)


# eval.judge → the judge it builds from (the eval section, the policy's model section, the stage's cache directory)
JUDGES = {
    "api": lambda cfg, model, cache_dir: ApiPairwiseJudge(cfg, cache_dir),
    "alpaca_eval": lambda cfg, model, cache_dir: _alpaca_eval_judge(cfg, cache_dir),
    "reward_model": lambda cfg, model, cache_dir: RewardModelPairwiseJudge(cfg, model),
    "python": lambda cfg, model, cache_dir: PythonPairwiseJudge(cfg),
}


def judge_all(
    cfg: EvalConfig, model: ModelConfig, comparisons: list[Comparison], cache_dir: Path
) -> tuple[list[float], dict[str, int]]:
    """Preferences for every comparison, with identical outputs settled as draws before any judge is built, and the
    API judge's usage (empty for the others). `model` is the policy's section: a reward-model judge loads its
    weights with the policy's settings (dtype, remote code)."""
    open_items = [c for c in comparisons if c.output != c.reference]
    judged: list[float] = []
    usage: dict[str, int] = {}
    if open_items:
        judge = JUDGES[cfg.judge](cfg, model, cache_dir)
        judged = judge.preferences(open_items)
        endpoint = getattr(judge, "endpoint", None)
        usage = endpoint.usage_report() if endpoint is not None else {}
    answers = iter(judged)
    return [1.5 if c.output == c.reference else next(answers) for c in comparisons], usage
