"""The quickstart's eval judge (`eval.judge: python`, `eval.function: wpo.tasks.ifeval:content_preference`)."""

from __future__ import annotations

import math

from wpo.evaluation.measures import chrf
from wpo.tasks.ifeval.constraints import reference_answer
from wpo.tasks.ifeval.reward import constraint_accuracy, constraints_of
from wpo.tasks.ifeval.topics import topic_of

JUDGE_TEMPERATURE = 0.05  # a content-quality difference of 0.05 is a 73% preference


def content_quality(messages: list[dict[str, str]], response: str) -> float:
    """What the quickstart's judge sees in one answer: half IFEval's strict format check, half chrF against the answer
    built from the topic's facts (sacrebleu), so a format-only answer cannot win and neither can off-format prose."""
    prompt = messages[-1]["content"]
    kind = constraints_of(messages)[0][0].kind
    reference = reference_answer(kind, topic_of(prompt), prompt)
    return 0.5 * constraint_accuracy(messages, response) + 0.5 * chrf(response, reference) / 100


def content_preference(messages: list[dict[str, str]], baseline_output: str, model_output: str) -> float:
    """P(model output better) for `eval.judge: python`: a logistic of the difference in `content_quality`, so a
    near tie stays near 0.5 (soft preferences, as AlpacaEval's weighted judge gives)."""
    if model_output == baseline_output:
        return 0.5
    difference = content_quality(messages, model_output) - content_quality(messages, baseline_output)
    return 1.0 / (1.0 + math.exp(-difference / JUDGE_TEMPERATURE))
