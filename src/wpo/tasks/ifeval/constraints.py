"""The five constraint kinds, each one object: its IFEval wording, how to read it back from a prompt, the graded
score the reward uses, IFEval's strict pass/fail check, and an answer built from a topic's facts that satisfies it.

The strict checks are IFEval's (google-research/instruction_following_eval, instructions.py): the measure of format
the training never optimized directly (the reward grades "how far off"; the strict check is pass/fail).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from wpo.tasks.ifeval.topics import Topic


def words(text: str) -> list[str]:
    return re.findall(r"\b\w+\b", text)


def _bullet_lines(text: str) -> int:
    return len(re.findall(r"^\s*[*-]\s", text, flags=re.MULTILINE))


@dataclass(frozen=True)
class Constraint:
    """One instruction kind. `pattern` finds its wording in a prompt; the match carries its parameters."""

    kind: str
    pattern: re.Pattern[str]

    def wording(self, topic: Topic, rng: random.Random) -> str:
        """The instruction in IFEval's words, its parameters drawn from `rng`."""
        raise NotImplementedError

    def score(self, response: str, match: re.Match[str]) -> float:
        """How well the response obeys, in [0, 1], with partial credit where "how far off" is measurable."""
        raise NotImplementedError

    def strict(self, response: str, match: re.Match[str]) -> bool:
        """IFEval's strict check."""
        raise NotImplementedError

    def reference(self, topic: Topic, match: re.Match[str]) -> str:
        """An answer from the topic's facts that satisfies the constraint: two facts long, short like the answers 48
        new tokens allow."""
        return " ".join(topic.facts[:2])


class Keywords(Constraint):
    def wording(self, topic: Topic, rng: random.Random) -> str:
        return f"Include the keywords '{topic.keywords[0]}' and '{topic.keywords[1]}' in the response."

    def score(self, response: str, match: re.Match[str]) -> float:
        present = {w.lower() for w in words(response)}
        keywords = (match["first"], match["second"])
        return sum(k.lower() in present for k in keywords) / len(keywords)

    def strict(self, response: str, match: re.Match[str]) -> bool:
        return all(re.search(k, response, flags=re.IGNORECASE) for k in (match["first"], match["second"]))

    def reference(self, topic: Topic, match: re.Match[str]) -> str:
        return " ".join(topic.facts)  # the keywords may sit in any of the three facts


class MaxWords(Constraint):
    def wording(self, topic: Topic, rng: random.Random) -> str:
        return f"Answer with less than {rng.choice((20, 25, 30))} words."

    def score(self, response: str, match: re.Match[str]) -> float:
        limit, count = int(match["limit"]), len(words(response))
        if count == 0:
            return 0.0
        return 1.0 if count < limit else (limit - 1) / count

    def strict(self, response: str, match: re.Match[str]) -> bool:
        return len(re.findall(r"\w+", response)) < int(match["limit"])

    def reference(self, topic: Topic, match: re.Match[str]) -> str:
        kept: list[str] = []
        for fact in topic.facts:
            if len(words(" ".join([*kept, fact]))) >= int(match["limit"]):
                break
            kept.append(fact)
        return " ".join(kept)


class Bullets(Constraint):
    def wording(self, topic: Topic, rng: random.Random) -> str:
        return (
            f"Your answer must contain exactly {rng.choice((2, 3))} bullet points. Use the markdown bullet points "
            "such as:\n* This is point 1.\n* This is point 2"
        )

    def score(self, response: str, match: re.Match[str]) -> float:
        wanted, found = int(match["count"]), _bullet_lines(response)
        return max(0.0, 1.0 - abs(found - wanted) / wanted)

    def strict(self, response: str, match: re.Match[str]) -> bool:
        stars = len(re.findall(r"^\s*\*[^\*].*$", response, flags=re.MULTILINE))
        dashes = len(re.findall(r"^\s*-.*$", response, flags=re.MULTILINE))
        return stars + dashes == int(match["count"])

    def reference(self, topic: Topic, match: re.Match[str]) -> str:
        return "\n".join(f"* {fact}" for fact in topic.facts[: int(match["count"])])


class Title(Constraint):
    def wording(self, topic: Topic, rng: random.Random) -> str:
        return "Your answer must contain a title, wrapped in double angular brackets, such as <<poem of joy>>."

    def score(self, response: str, match: re.Match[str]) -> float:
        return 1.0 if re.search(r"<<[^\n<>]+>>", response) else 0.0

    def strict(self, response: str, match: re.Match[str]) -> bool:
        return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", response))

    def reference(self, topic: Topic, match: re.Match[str]) -> str:
        return f"<<{topic.name[0].upper()}{topic.name[1:]}>>\n\n{super().reference(topic, match)}"


class NoCommas(Constraint):
    def wording(self, topic: Topic, rng: random.Random) -> str:
        return "In your entire response, refrain from the use of any commas."

    def score(self, response: str, match: re.Match[str]) -> float:
        return 1.0 / (1.0 + response.count(",")) if response.strip() else 0.0

    def strict(self, response: str, match: re.Match[str]) -> bool:
        return "," not in response  # the facts have no commas, so the default reference obeys


CONSTRAINTS: dict[str, Constraint] = {
    c.kind: c
    for c in (
        Keywords(
            "keywords",
            re.compile(r"Include the keywords '(?P<first>[^']+)' and '(?P<second>[^']+)' in the response\."),
        ),
        MaxWords("max_words", re.compile(r"Answer with less than (?P<limit>\d+) words\.")),
        Bullets("bullets", re.compile(r"Your answer must contain exactly (?P<count>\d+) bullet points\.")),
        Title("title", re.compile(r"Your answer must contain a title, wrapped in double angular brackets")),
        NoCommas("no_commas", re.compile(r"refrain from the use of any commas\.")),
    )
}


def constraints_in(prompt: str) -> list[tuple[Constraint, re.Match[str]]]:
    """Every constraint the prompt's text carries, with its parameters."""
    return [(c, m) for c in CONSTRAINTS.values() if (m := c.pattern.search(prompt))]


def instruction_text(kind: str, topic: Topic, rng: random.Random) -> str:
    if kind not in CONSTRAINTS:
        raise ValueError(f"unknown constraint kind {kind!r}")
    return CONSTRAINTS[kind].wording(topic, rng)


def reference_answer(kind: str, topic: Topic, instruction: str) -> str:
    """The off-policy 'strong' answer to a prompt whose instruction is `instruction`."""
    constraint = CONSTRAINTS[kind]
    return constraint.reference(topic, constraint.pattern.search(instruction))
