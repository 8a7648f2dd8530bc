"""Building the shipped prompt files from the topic table: `python -m wpo.tasks.ifeval`."""

from __future__ import annotations

import random
import re
from typing import Any

from wpo.data.io import resolve_builtin, write_jsonl
from wpo.tasks.ifeval.constraints import CONSTRAINTS, instruction_text, reference_answer
from wpo.tasks.ifeval.topics import TOPICS_FILE, Topic, load_topics

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
