"""Scored candidates → one preference pair per prompt. Pure: no I/O, no models.

chosen = the highest score, rejected = the lowest. Ties on the highest go to the shortest response (the usual
guard against a length bias in the pair); ties on the lowest go to the response whose length is closest to the
chosen one's (so the pair differs in quality, not length). Remaining ties: the earlier candidate. Lengths are token
counts with the policy's tokenizer, or characters with `pair.length_unit: characters`. No pair when every score is
equal, when the margin is below `min_margin`, or when the two texts are identical. Only candidates in
`can_be_chosen` may be chosen (`pair.cut_off: never_chosen` leaves out answers cut off at the token limit, so a
cut-off answer is never preferred over a complete one).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PairChoice:
    chosen: int | None
    rejected: int | None
    drop_reason: str | None = None


def choose_pair(
    scores: list[float],
    lengths: list[int],
    texts: list[str],
    min_margin: float = 0.0,
    can_be_chosen: list[bool] | None = None,
) -> PairChoice:
    if len(scores) < 2:
        return PairChoice(None, None, "fewer_than_two_candidates")
    eligible = [i for i in range(len(scores)) if can_be_chosen is None or can_be_chosen[i]]
    if max(scores) == min(scores):
        return PairChoice(None, None, "all_scores_equal")
    best, worst = max((scores[i] for i in eligible), default=None), min(scores)
    if best is None or best == worst:
        return PairChoice(None, None, "best_answers_cut_off")
    if best - worst < min_margin:
        return PairChoice(None, None, "below_min_margin")
    top = [i for i in eligible if scores[i] == best]
    chosen = min(top, key=lambda i: (lengths[i], i))
    bottom = [i for i, s in enumerate(scores) if s == worst]
    rejected = min(bottom, key=lambda i: (abs(lengths[i] - lengths[chosen]), i))
    if texts[chosen] == texts[rejected]:
        return PairChoice(None, None, "identical_texts")
    return PairChoice(chosen, rejected)
