"""Instruction following with verifiable constraints (IFEval-style): the quickstart's task and programmatic reward.

A prompt asks about a topic and adds one format constraint written in IFEval's wording: two required keywords, a word
limit, an exact number of markdown bullets, a <<title>>, or no commas. The reward reads the constraint back *from the
prompt's text*, so it is a pure function of (prompt, response) that works on any prompt carrying these instructions,
and scores how well the response obeys it in [0, 1] — with partial credit where "how far off" is measurable
(keywords present, word count over the limit, bullets off by one, number of commas), which gives pairs a graded
signal rather than ties.

The five kinds are those on which SmolLM2-135M-Instruct's own samples vary (measured on the dev prompts: best of 3
samples well above their mean), so on-policy pairs carry signal. IFEval's all-capitals, all-lowercase, closing-phrase
and quotation-marks constraints were tried and dropped: the model never satisfied them within 48 new tokens, so
every pair taught them only through the off-policy reference, and two CPU epochs did not move them.

The shipped prompt files (`builtin:ifeval-train.jsonl`, `builtin:ifeval-heldout.jsonl`) are built by
`build_prompts()` from `ifeval-topics.tsv`: three short facts per topic, split by topic so no held-out topic is seen in
training. Each prompt carries a `reference` answer made from its topic's facts that satisfies the constraint — the
hybrid pool's off-policy "strong model" answer. Rebuild them with `python -m wpo.tasks.ifeval`.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from wpo.data.io import resolve_builtin, write_jsonl
from wpo.evaluation.measures import chrf, distinct_2

TOPICS_FILE = "ifeval-topics.tsv"
TRAIN_FILE = "ifeval-train.jsonl"
HELDOUT_FILE = "ifeval-heldout.jsonl"
DEV_FILE = "ifeval-dev.jsonl"
HELDOUT_TOPICS = 24
CONSTRAINTS_PER_TOPIC = 2
BUILD_SEED = 20261124

QUESTIONS = (
    "Write a short paragraph about {topic}.",
    "Tell me about {topic}.",
    "Explain {topic} to a curious child.",
    "Describe {topic} briefly.",
)


@dataclass(frozen=True)
class Topic:
    name: str
    facts: tuple[str, str, str]
    keywords: tuple[str, str]


@dataclass(frozen=True)
class Constraint:
    """One instruction kind: how it is worded, how to read it back from a prompt, and how to score a response."""

    kind: str
    pattern: re.Pattern[str]
    score: Callable[[str, re.Match[str]], float]


def _words(text: str) -> list[str]:
    return re.findall(r"\b\w+\b", text)


def _bullets(text: str) -> int:
    return len(re.findall(r"^\s*[*-]\s", text, flags=re.MULTILINE))


def _score_keywords(response: str, match: re.Match[str]) -> float:
    words = {w.lower() for w in _words(response)}
    keywords = (match["first"], match["second"])
    return sum(k.lower() in words for k in keywords) / len(keywords)


def _score_max_words(response: str, match: re.Match[str]) -> float:
    limit, count = int(match["limit"]), len(_words(response))
    if count == 0:
        return 0.0
    return 1.0 if count < limit else (limit - 1) / count


def _score_bullets(response: str, match: re.Match[str]) -> float:
    wanted, found = int(match["count"]), _bullets(response)
    return max(0.0, 1.0 - abs(found - wanted) / wanted)


def _score_title(response: str, _: re.Match[str]) -> float:
    return 1.0 if re.search(r"<<[^\n<>]+>>", response) else 0.0


def _score_no_commas(response: str, _: re.Match[str]) -> float:
    if not response.strip():
        return 0.0
    return 1.0 / (1.0 + response.count(","))


CONSTRAINTS: dict[str, Constraint] = {
    c.kind: c
    for c in (
        Constraint(
            "keywords",
            re.compile(
                r"Include the keywords '(?P<first>[^']+)' and '(?P<second>[^']+)' in the "
                r"response\."
            ),
            _score_keywords,
        ),
        Constraint("max_words", re.compile(r"Answer with less than (?P<limit>\d+) words\."), _score_max_words),
        Constraint(
            "bullets", re.compile(r"Your answer must contain exactly (?P<count>\d+) bullet points\."), _score_bullets
        ),
        Constraint(
            "title", re.compile(r"Your answer must contain a title, wrapped in double angular brackets"), _score_title
        ),
        Constraint("no_commas", re.compile(r"refrain from the use of any commas\."), _score_no_commas),
    )
}


def instruction_text(kind: str, topic: Topic, rng: random.Random) -> str:
    """The constraint's wording (IFEval's), with its parameters drawn from `rng`."""
    if kind == "keywords":
        return f"Include the keywords '{topic.keywords[0]}' and '{topic.keywords[1]}' in the response."
    if kind == "max_words":
        return f"Answer with less than {rng.choice((20, 25, 30))} words."
    if kind == "bullets":
        return (
            f"Your answer must contain exactly {rng.choice((2, 3))} bullet points. Use the markdown bullet points "
            "such as:\n* This is point 1.\n* This is point 2"
        )
    if kind == "title":
        return "Your answer must contain a title, wrapped in double angular brackets, such as <<poem of joy>>."
    if kind == "no_commas":
        return "In your entire response, refrain from the use of any commas."
    raise ValueError(f"unknown constraint kind {kind!r}")


def reference_answer(kind: str, topic: Topic, instruction: str) -> str:
    """An answer built from the topic's facts that satisfies the constraint (the off-policy 'strong' answer): two facts
    long, short like the answers 48 new tokens allow (three bullets take three facts, and so do keywords, which may
    sit in any of them)."""
    paragraph = " ".join(topic.facts[:2])
    match = CONSTRAINTS[kind].pattern.search(instruction)
    if kind == "max_words":
        kept: list[str] = []
        for fact in topic.facts:
            if len(_words(" ".join([*kept, fact]))) >= int(match["limit"]):
                break
            kept.append(fact)
        return " ".join(kept)
    if kind == "bullets":
        return "\n".join(f"* {fact}" for fact in topic.facts[: int(match["count"])])
    if kind == "title":
        return f"<<{topic.name[0].upper()}{topic.name[1:]}>>\n\n{paragraph}"
    if kind == "keywords":
        return " ".join(topic.facts)
    return paragraph  # the facts have no commas


def constraints_in(prompt: str) -> list[tuple[Constraint, re.Match[str]]]:
    return [(c, m) for c in CONSTRAINTS.values() if (m := c.pattern.search(prompt))]


def _constraints_of(messages: list[dict[str, str]]) -> list[tuple[Constraint, re.Match[str]]]:
    prompt = messages[-1]["content"]
    found = constraints_in(prompt)
    if not found:
        raise ValueError(f"no IFEval-style constraint found in the prompt {prompt[:80]!r}")
    return found


def format_score(messages: list[dict[str, str]], response: str) -> float:
    """Graded obedience to the prompt's format constraints alone, in [0, 1] (mean over the constraints)."""
    found = _constraints_of(messages)
    return sum(c.score(response, m) for c, m in found) / len(found)


# IFEval's strict checks (google-research/instruction_following_eval, instructions.py), one per kind: the measure of
# format the training never optimized directly (the reward grades "how far off"; this is pass/fail).
STRICT_CHECKS: dict[str, Callable[[str, re.Match[str]], bool]] = {
    "keywords": lambda text, m: all(re.search(k, text, flags=re.IGNORECASE) for k in (m["first"], m["second"])),
    "max_words": lambda text, m: len(re.findall(r"\w+", text)) < int(m["limit"]),
    "bullets": lambda text, m: (
        len(re.findall(r"^\s*\*[^\*].*$", text, flags=re.MULTILINE))
        + len(re.findall(r"^\s*-.*$", text, flags=re.MULTILINE))
        == int(m["count"])
    ),
    "title": lambda text, _: any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", text)),
    "no_commas": lambda text, _: not re.search(r"\,", text),
}


def constraint_accuracy(messages: list[dict[str, str]], response: str) -> float:
    """Instruction-level strict accuracy (IFEval): the fraction of the prompt's constraints the response follows."""
    found = _constraints_of(messages)
    return sum(STRICT_CHECKS[c.kind](response, m) for c, m in found) / len(found)


# Function words: a fluent sentence is about 40% of them, a keyword list none.
STOPWORDS = frozenset(
    "a an the and or but if of to in on at by for with from as into onto over under about than then so that this "
    "these those it its it's they them their there here is are was were be been being has have had do does did can "
    "could will would may might must should not no yes very more most much many some any each every all both other "
    "such what which who whom whose when where why how i you he she we me him her us my your our his also just only "
    "up down out off too again once while because through during before after above below between".split()
)
MIN_WORDS = 6  # fewer than this is not an answer, whatever the format says
SHORT_ANSWER_WORDS = 8  # a word-limited answer should still be a sentence
PARAGRAPH_WORDS = 15  # "a short paragraph", "tell me about", "briefly": at least a couple of sentences
FACT_WORDS_FOR_FULL_CREDIT = 3
FLUENT_STOPWORD_SHARE = 0.25
INSTRUCTION_EXAMPLES = ("poem of joy", "this is point")
JUDGE_TEMPERATURE = 0.05  # a content-quality difference of 0.05 is a 73% preference


def _stem(word: str) -> str:
    """A crude stem, enough to match 'eruptions' with 'eruption' and 'pumps' with 'pumping'."""
    word = word.lower().removesuffix("'s")
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)]
    return word


def _content_stems(text: str) -> set[str]:
    return {_stem(w) for w in _words(text) if w.lower() not in STOPWORDS and not w.isdigit()}


@lru_cache(maxsize=1)
def _topics_by_name() -> dict[str, Topic]:
    return {topic.name.lower(): topic for topic in load_topics()}


def topic_of(prompt: str) -> Topic:
    """The topic a prompt asks about: the topic name of the topic table found first in it (the longest, should several
    start there). First, because the question comes before its constraint, whose keywords may name another topic
    ("Explain pizza ... Include the keywords 'cheese' and 'Naples'")."""
    text = prompt.lower()
    found = [
        (match.start(), -len(name), name)
        for name in _topics_by_name()
        if (match := re.search(rf"\b{re.escape(name)}\b", text))
    ]
    if not found:
        raise ValueError(f"no topic of {TOPICS_FILE} found in the prompt {prompt[:80]!r}")
    return _topics_by_name()[min(found)[2]]


def fact_coverage(topic: Topic, response: str) -> float:
    """How many of the topic's fact words (beyond the words of its name) the response uses, capped at full credit."""
    facts = _content_stems(" ".join(topic.facts)) - _content_stems(topic.name)
    used = facts & _content_stems(response)
    return min(1.0, len(used) / FACT_WORDS_FOR_FULL_CREDIT)


def _content_factor(kind_limits: list[int], topic: Topic, response: str) -> float:
    """Content, in [0, 1]: fact coverage × fluency × no repetition × long enough for what was asked."""
    words = _words(response)
    if len(words) < MIN_WORDS or any(example in response.lower() for example in INSTRUCTION_EXAMPLES):
        return 0.0
    fluency = min(1.0, sum(w.lower() in STOPWORDS for w in words) / len(words) / FLUENT_STOPWORD_SHARE)
    repetition = min(1.0, max(0.0, (distinct_2(response) - 0.5) / 0.4))
    wanted = min([SHORT_ANSWER_WORDS if limit else PARAGRAPH_WORDS for limit in kind_limits])
    length = min(1.0, len(words) / wanted)
    return fact_coverage(topic, response) * fluency * repetition * length


def reward(messages: list[dict[str, str]], response: str) -> float:
    """The task reward (`score.function`): format score × content factor, in [0, 1].

    The format score alone is cheap to satisfy with a degenerate answer (the instruction's own example, a title with
    nothing under it, one sentence repeated, a keyword list); the content factor makes the cheapest high score a good
    answer: it is zero for an answer under six words or one that copies the instruction's example, and otherwise the
    product of the topic's fact words used (three for full credit), fluency (share of function words), repetition
    (distinct bigrams) and length against what the request asks.
    """
    found = _constraints_of(messages)
    limits = [int(m["limit"]) if c.kind == "max_words" else 0 for c, m in found]
    content = _content_factor(limits, topic_of(messages[-1]["content"]), response)
    return format_score(messages, response) * content


def content_quality(messages: list[dict[str, str]], response: str) -> float:
    """What the quickstart's judge sees in one answer: half IFEval's strict format check, half chrF against the answer
    built from the topic's facts (sacrebleu), so a format-only answer cannot win and neither can off-format prose."""
    prompt = messages[-1]["content"]
    kind = _constraints_of(messages)[0][0].kind
    reference = reference_answer(kind, topic_of(prompt), prompt)
    return 0.5 * constraint_accuracy(messages, response) + 0.5 * chrf(response, reference) / 100


def content_preference(messages: list[dict[str, str]], baseline_output: str, model_output: str) -> float:
    """P(model output better) for `eval.judge: python`: a logistic of the difference in `content_quality`, so a
    near tie stays near 0.5 (soft preferences, as AlpacaEval's weighted judge gives)."""
    if model_output == baseline_output:
        return 0.5
    difference = content_quality(messages, model_output) - content_quality(messages, baseline_output)
    return 1.0 / (1.0 + math.exp(-difference / JUDGE_TEMPERATURE))


def load_topics(path: Path | None = None) -> list[Topic]:
    """`ifeval-topics.tsv`: name, three facts and two keywords per line, tab-separated."""
    path = path or resolve_builtin(f"builtin:{TOPICS_FILE}")
    topics = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split("\t")
        if len(fields) != 5:
            raise ValueError(f"{path}:{number}: expected 5 tab-separated fields, got {len(fields)}")
        topics.append(Topic(fields[0], (fields[1], fields[2], fields[3]), tuple(fields[4].split(","))))
    return topics


def _record(topic: Topic, kind: str, rng: random.Random) -> dict[str, Any]:
    instruction = instruction_text(kind, topic, rng)
    question = rng.choice(QUESTIONS).format(topic=topic.name)
    return {
        "id": f"{re.sub(r'[^a-z0-9]+', '-', topic.name.lower()).strip('-')}-{kind}",
        "messages": [{"role": "user", "content": f"{question} {instruction}"}],
        "reference": reference_answer(kind, topic, instruction),
        "constraint": kind,
    }


def build_prompts(topics: list[Topic], seed: int = BUILD_SEED) -> dict[str, list[dict[str, Any]]]:
    """Train, dev and held-out prompt records. Held-out topics are never trained on. Dev prompts pair each training
    topic with a constraint kind it has no training prompt for: new prompts to tune the recipe on, so the held-out set
    is looked at once, for the final figures. A held-out topic is asked with every constraint kind (120 prompts), so
    one run's paired CIs are narrow enough to carry a verdict; the kinds beyond its first two draw from their own
    random stream, which leaves the train and dev files as they were built with two kinds per held-out topic."""
    rng, dev_rng, extra_rng = random.Random(seed), random.Random(seed + 1), random.Random(seed + 2)
    order = list(range(len(topics)))
    rng.shuffle(order)
    heldout_topics = set(order[:HELDOUT_TOPICS])
    kinds = list(CONSTRAINTS)
    files: dict[str, list[dict[str, Any]]] = {TRAIN_FILE: [], DEV_FILE: [], HELDOUT_FILE: []}
    for index, topic in enumerate(topics):
        chosen = rng.sample(kinds, CONSTRAINTS_PER_TOPIC)
        split = HELDOUT_FILE if index in heldout_topics else TRAIN_FILE
        files[split] += [_record(topic, kind, rng) for kind in chosen]
        unused = [kind for kind in kinds if kind not in chosen]
        if split == HELDOUT_FILE:
            files[split] += [_record(topic, kind, extra_rng) for kind in unused]
        else:
            files[DEV_FILE].append(_record(topic, dev_rng.choice(unused), dev_rng))
    return files


def main() -> None:
    for name, records in build_prompts(load_topics()).items():
        count = write_jsonl(resolve_builtin(f"builtin:{TOPICS_FILE}").parent / name, records)
        print(f"wrote {count} prompts to {name}")


if __name__ == "__main__":
    main()
