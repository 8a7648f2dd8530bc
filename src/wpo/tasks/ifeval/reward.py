"""The task reward (`score.function: wpo.tasks.ifeval:reward`) and IFEval's strict accuracy (an eval measure)."""

from __future__ import annotations

import re

from wpo.evaluation.measures import distinct_2
from wpo.tasks.ifeval.constraints import Constraint, constraints_in, words
from wpo.tasks.ifeval.topics import Topic, topic_of

# Function words: a fluent sentence is about 40% of them, a keyword list none.
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "but",
        "if",
        "of",
        "to",
        "in",
        "on",
        "at",
        "by",
        "for",
        "with",
        "from",
        "as",
        "into",
        "onto",
        "over",
        "under",
        "about",
        "than",
        "then",
        "so",
        "that",
        "this",
        "these",
        "those",
        "it",
        "its",
        "it's",
        "they",
        "them",
        "their",
        "there",
        "here",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "has",
        "have",
        "had",
        "do",
        "does",
        "did",
        "can",
        "could",
        "will",
        "would",
        "may",
        "might",
        "must",
        "should",
        "not",
        "no",
        "yes",
        "very",
        "more",
        "most",
        "much",
        "many",
        "some",
        "any",
        "each",
        "every",
        "all",
        "both",
        "other",
        "such",
        "what",
        "which",
        "who",
        "whom",
        "whose",
        "when",
        "where",
        "why",
        "how",
        "i",
        "you",
        "he",
        "she",
        "we",
        "me",
        "him",
        "her",
        "us",
        "my",
        "your",
        "our",
        "his",
        "also",
        "just",
        "only",
        "up",
        "down",
        "out",
        "off",
        "too",
        "again",
        "once",
        "while",
        "because",
        "through",
        "during",
        "before",
        "after",
        "above",
        "below",
        "between",
    ]
)
MIN_WORDS = 6  # fewer than this is not an answer, whatever the format says
SHORT_ANSWER_WORDS = 8  # a word-limited answer should still be a sentence
PARAGRAPH_WORDS = 15  # "a short paragraph", "tell me about", "briefly": at least a couple of sentences
FACT_WORDS_FOR_FULL_CREDIT = 3
FLUENT_STOPWORD_SHARE = 0.25
INSTRUCTION_EXAMPLES = ("poem of joy", "this is point")


def _stem(word: str) -> str:
    """A crude stem, enough to match 'eruptions' with 'eruption' and 'pumps' with 'pumping'."""
    word = word.lower().removesuffix("'s")
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)]
    return word


def _content_stems(text: str) -> set[str]:
    return {_stem(w) for w in words(text) if w.lower() not in STOPWORDS and not w.isdigit()}


def constraints_of(messages: list[dict[str, str]]) -> list[tuple[Constraint, re.Match[str]]]:
    """The constraints of the conversation's last prompt; a prompt without one is not this task's."""
    prompt = messages[-1]["content"]
    found = constraints_in(prompt)
    if not found:
        raise ValueError(f"no IFEval-style constraint found in the prompt {prompt[:80]!r}")
    return found


def format_score(messages: list[dict[str, str]], response: str) -> float:
    """Graded obedience to the prompt's format constraints alone, in [0, 1] (mean over the constraints)."""
    found = constraints_of(messages)
    return sum(c.score(response, m) for c, m in found) / len(found)


def constraint_accuracy(messages: list[dict[str, str]], response: str) -> float:
    """Instruction-level strict accuracy (IFEval): the fraction of the prompt's constraints the response follows."""
    found = constraints_of(messages)
    return sum(c.strict(response, m) for c, m in found) / len(found)


def fact_coverage(topic: Topic, response: str) -> float:
    """How many of the topic's fact words (beyond the words of its name) the response uses, capped at full credit."""
    facts = _content_stems(" ".join(topic.facts)) - _content_stems(topic.name)
    used = facts & _content_stems(response)
    return min(1.0, len(used) / FACT_WORDS_FOR_FULL_CREDIT)


def _content_factor(kind_limits: list[int], topic: Topic, response: str) -> float:
    """Content, in [0, 1]: fact coverage × fluency × no repetition × long enough for what was asked."""
    answer_words = words(response)
    if len(answer_words) < MIN_WORDS or any(example in response.lower() for example in INSTRUCTION_EXAMPLES):
        return 0.0
    fluency = min(1.0, sum(w.lower() in STOPWORDS for w in answer_words) / len(answer_words) / FLUENT_STOPWORD_SHARE)
    repetition = min(1.0, max(0.0, (distinct_2(response) - 0.5) / 0.4))
    wanted = min([SHORT_ANSWER_WORDS if limit else PARAGRAPH_WORDS for limit in kind_limits])
    length = min(1.0, len(answer_words) / wanted)
    return fact_coverage(topic, response) * fluency * repetition * length


def reward(messages: list[dict[str, str]], response: str) -> float:
    """The task reward (`score.function`): format score × content factor, in [0, 1].

    The format score alone is cheap to satisfy with a degenerate answer (the instruction's own example, a title with
    nothing under it, one sentence repeated, a keyword list); the content factor makes the cheapest high score a good
    answer: it is zero for an answer under six words or one that copies the instruction's example, and otherwise the
    product of the topic's fact words used (three for full credit), fluency (share of function words), repetition
    (distinct bigrams) and length against what the request asks.
    """
    found = constraints_of(messages)
    limits = [int(m["limit"]) if c.kind == "max_words" else 0 for c, m in found]
    content = _content_factor(limits, topic_of(messages[-1]["content"]), response)
    return format_score(messages, response) * content
