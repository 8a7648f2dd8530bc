"""The topic table behind the prompts: three short facts and two keywords per topic (`ifeval-topics.tsv`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from wpo.data.io import resolve_builtin

TOPICS_FILE = "ifeval-topics.tsv"


@dataclass(frozen=True)
class Topic:
    name: str
    facts: tuple[str, str, str]
    keywords: tuple[str, str]


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
