"""Scored candidates → one preference pair per prompt. Pure: no I/O, no models.

chosen = the highest score, rejected = the lowest. Ties on the highest go to the shortest response (the usual
guard against a length bias in the pair); ties on the lowest go to the response whose length is closest to the
chosen one's (so the pair differs in quality, not length). Remaining ties: the earlier candidate. Lengths are token
counts with the policy's tokenizer, or characters with `pair.length_unit: characters`. No pair when every score is
equal, when the margin is below `min_margin`, or when the two texts are identical.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PairChoice:
    chosen: int | None
    rejected: int | None
    drop_reason: str | None = None


def choose_pair(scores: list[float], lengths: list[int], texts: list[str], min_margin: float = 0.0) -> PairChoice:
    if len(scores) < 2:
        return PairChoice(None, None, "fewer_than_two_candidates")
    best, worst = max(scores), min(scores)
    if best == worst:
        return PairChoice(None, None, "all_scores_equal")
    if best - worst < min_margin:
        return PairChoice(None, None, "below_min_margin")
    top = [i for i, s in enumerate(scores) if s == best]
    chosen = min(top, key=lambda i: (lengths[i], i))
    bottom = [i for i, s in enumerate(scores) if s == worst]
    rejected = min(bottom, key=lambda i: (abs(lengths[i] - lengths[chosen]), i))
    if texts[chosen] == texts[rejected]:
        return PairChoice(None, None, "identical_texts")
    return PairChoice(chosen, rejected)
