"""The quickstart's task: IFEval-style constraints read back from the prompt, scored by hand-worked examples."""

from __future__ import annotations

import json
import random

import pytest

from wpo.data.io import resolve_builtin
from wpo.tasks import ifeval


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


KEYWORDS = "Tell me about salt. Include the keywords 'mineral' and 'sodium' in the response."
WORDS = "Describe snow briefly. Answer with less than 10 words."
BULLETS = ("Tell me about kites. Your answer must contain exactly 3 bullet points. Use the markdown bullet points such "
           "as:\n* This is point 1.\n* This is point 2")  # fmt: skip


@pytest.mark.parametrize(
    ("prompt", "response", "expected"),
    [
        (KEYWORDS, "Salt is a Mineral.", 0.5),  # case-insensitive, whole words
        (KEYWORDS, "Salt is a mineral made of sodium chloride.", 1.0),
        (KEYWORDS, "Minerals and sodiums", 0.0),  # not the words themselves
        (WORDS, "Snow is frozen water.", 1.0),  # 4 words < 10
        (WORDS, "one two three four five six seven eight nine ten", 0.9),  # 10 words: (10 - 1) / 10
        (WORDS, "   ", 0.0),
        (BULLETS, "* a\n* b\n* c", 1.0),
        (BULLETS, "Intro\n- a\n- b", 2 / 3),  # one bullet short of three
        (BULLETS, "no bullets at all", 0.0),
        (
            "Tell me about maps. Your answer must contain a title, wrapped in double angular brackets, such as "
            "<<poem of joy>>.",
            "<<Maps>>\nMaps show places.",
            1.0,
        ),
        (
            "Tell me about maps. In your entire response, refrain from the use of any commas.",
            "Maps, roads, towns.",
            1 / 3,
        ),
    ],
)
def test_reward_by_hand(prompt, response, expected):
    assert ifeval.reward(user(prompt), response) == pytest.approx(expected)


def test_reward_averages_several_constraints_and_refuses_a_prompt_without_one():
    both = f"{KEYWORDS} Answer with less than 10 words."
    assert ifeval.reward(user(both), "Salt is a mineral.") == pytest.approx((0.5 + 1.0) / 2)
    with pytest.raises(ValueError, match="no IFEval-style constraint found in the prompt 'What is 2"):
        ifeval.reward(user("What is 2 + 2?"), "4")


def test_pairwise_preference_compares_rewards():
    messages = user(KEYWORDS)
    assert ifeval.pairwise_preference(messages, "salt", "mineral salt") == 1.0
    assert ifeval.pairwise_preference(messages, "mineral salt", "salt") == 0.0
    assert ifeval.pairwise_preference(messages, "sodium!", "mineral?") == 0.5


def shipped(name: str) -> list[dict]:
    return [json.loads(line) for line in resolve_builtin(f"builtin:{name}").read_text().splitlines()]


def test_shipped_prompt_files_are_what_the_builder_makes():
    """The files in the package are `build_prompts()`'s output: nobody hand-edited (or tuned) the held-out set."""
    built = ifeval.build_prompts(ifeval.load_topics())
    assert list(built) == [ifeval.TRAIN_FILE, ifeval.DEV_FILE, ifeval.HELDOUT_FILE]
    for name, records in built.items():
        assert shipped(name) == records, name


def test_splits_and_every_reference_satisfies_its_constraint():
    train, dev, heldout = shipped(ifeval.TRAIN_FILE), shipped(ifeval.DEV_FILE), shipped(ifeval.HELDOUT_FILE)
    assert (len(train), len(dev), len(heldout)) == (96, 48, 48)
    topic = lambda record: record["id"].removesuffix(f"-{record['constraint']}")  # noqa: E731
    assert not {topic(r) for r in train} & {topic(r) for r in heldout}  # held-out topics are never trained on
    assert {topic(r) for r in dev} == {topic(r) for r in train}  # dev: training topics ...
    assert not {r["id"] for r in dev} & {r["id"] for r in train}  # ... with a constraint they were not trained with
    assert len({r["id"] for r in train + dev + heldout}) == 192
    for record in train + dev + heldout:
        assert ifeval.reward(record["messages"], record["reference"]) == 1.0, record["id"]
        found = [c.kind for c, _ in ifeval.constraints_in(record["messages"][-1]["content"])]
        assert found == [record["constraint"]], record["id"]
    assert {r["constraint"] for r in heldout} == set(ifeval.CONSTRAINTS)


def test_every_kind_reads_back_the_parameters_it_was_written_with():
    topic = ifeval.Topic("owls", ("Owls hunt at night.", "They have large eyes.", "Their feathers are soft."),
                         ("night", "feathers"))  # fmt: skip
    for kind in ifeval.CONSTRAINTS:
        for seed in range(5):
            text = ifeval.instruction_text(kind, topic, random.Random(seed))
            reference = ifeval.reference_answer(kind, topic, text)
            assert ifeval.reward(user(f"Tell me about owls. {text}"), reference) == 1.0, (kind, reference)


def test_topics_file_errors_name_the_line(tmp_path):
    bad = tmp_path / "topics.tsv"
    bad.write_text("owls\tOne.\tTwo.\tThree.\tnight,feathers\nbroken line\n")
    with pytest.raises(ValueError, match=r"topics.tsv:2: expected 5 tab-separated fields, got 1"):
        ifeval.load_topics(bad)


def test_every_topic_keyword_is_a_word_of_its_facts():
    """A keywords prompt asks for words the reference contains verbatim (not 'invention' for 'inventions')."""
    for topic in ifeval.load_topics():
        words = {w.lower() for w in ifeval._words(" ".join(topic.facts))}
        assert {k.lower() for k in topic.keywords} <= words, topic.name
