"""Rewards for any prompt that carries a reference answer (its record's `reference` field): how close an answer
comes to the reference, in [0, 1], by sacrebleu's sentence chrF or BLEU.

Use them as `score.function: wpo.tasks.reference:chrf` (with `score.scorer: python`) or as `eval.reward`. They take
the prompt's record as their third parameter, so the reference rides along in the prompts file and nothing is read
twice. Overlap with a reference measures content, not quality: the reference itself scores 1, and a right answer in
other words scores less — chrF (character n-grams) forgives rewording and morphology more than BLEU (word n-grams,
smoothed for single sentences). For prompts without a reference, score with an LLM judge (`score.scorer: judge`).
"""

from __future__ import annotations

from typing import Any

from sacrebleu.metrics import BLEU, CHRF

REFERENCE_FIELD = "reference"
_CHRF = CHRF()
_BLEU = BLEU(effective_order=True)  # sentence-level BLEU: orders with no matches do not zero the score


def reference_of(record: dict[str, Any]) -> str:
    value = record.get(REFERENCE_FIELD)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(
            f"the prompt {record.get('id')!r} has no {REFERENCE_FIELD!r} field (a non-empty string); "
            "these rewards need one in every prompt record"
        )
    return value


def chrf(messages: list[dict[str, str]], text: str, record: dict[str, Any]) -> float:
    """sacrebleu's chrF (character 6-grams, recall weighted β=2) of the answer against the reference, / 100."""
    return _CHRF.sentence_score(text, [reference_of(record)]).score / 100.0


def bleu(messages: list[dict[str, str]], text: str, record: dict[str, Any]) -> float:
    """sacrebleu's sentence BLEU (4-grams, brevity penalty, effective order) against the reference, / 100."""
    return _BLEU.sentence_score(text, [reference_of(record)]).score / 100.0


def chrf_preference(
    messages: list[dict[str, str]], baseline_output: str, model_output: str, record: dict[str, Any]
) -> float:
    """An eval judge (`eval.judge: python`): P(model output better) = 0.5 + (chrF(model) − chrF(baseline)) / 2, each
    against the prompt's reference; 0.5 when both are as close to it."""
    return 0.5 + (chrf(messages, model_output, record) - chrf(messages, baseline_output, record)) / 2.0
