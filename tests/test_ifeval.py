"""The quickstart's task: IFEval-style constraints read back from the prompt, scored by hand-worked examples."""

from __future__ import annotations

import json
import math
import random

import pytest
from helpers import user

from wpo.data.io import resolve_builtin
from wpo.tasks import ifeval

KEYWORDS = "Tell me about salt. Include the keywords 'mineral' and 'sodium' in the response."
WORDS = "Describe snow briefly. Answer with less than 10 words."
BULLETS = (
    "Tell me about kites. Your answer must contain exactly 3 bullet points. Use the markdown bullet points such "
    "as:\n* This is point 1.\n* This is point 2"
)


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
def test_format_score_by_hand(prompt, response, expected):
    assert ifeval.format_score(user(prompt), response) == pytest.approx(expected)


def test_format_score_averages_several_constraints_and_refuses_a_prompt_without_one():
    both = f"{KEYWORDS} Answer with less than 10 words."
    assert ifeval.format_score(user(both), "Salt is a mineral.") == pytest.approx((0.5 + 1.0) / 2)
    for measure in (ifeval.format_score, ifeval.constraint_accuracy, ifeval.reward):
        with pytest.raises(ValueError, match="no IFEval-style constraint found in the prompt 'What is 2"):
            measure(user("What is 2 + 2?"), "4")


@pytest.mark.parametrize(
    ("prompt", "response", "followed"),
    [
        (KEYWORDS, "Salt is a mineral rich in SODIUM.", 1.0),
        (KEYWORDS, "Salt is a mineral.", 0.0),  # strict: all keywords or nothing
        (WORDS, "one two three four five six seven eight nine", 1.0),  # 9 < 10
        (WORDS, "one two three four five six seven eight nine ten", 0.0),
        (BULLETS, "* a\n* b\n- c", 1.0),  # IFEval counts '*' and '-' bullets together
        (BULLETS, "* a\n* b\n** c", 0.0),  # '**' is bold, not a bullet
        ("Tell me about maps. Your answer must contain a title, wrapped in double angular brackets.", "<< >>\nx", 0.0),
        ("Tell me about maps. In your entire response, refrain from the use of any commas.", "a, b", 0.0),
        (f"{KEYWORDS} Answer with less than 10 words.", "Salt has sodium.", 0.5),  # instruction-level: 1 of 2
    ],
)
def test_constraint_accuracy_is_ifevals_strict_check(prompt, response, followed):
    assert ifeval.constraint_accuracy(user(prompt), response) == followed


# One prompt per constraint kind, on topics of the table, and for each a good answer that is not the reference.
PROMPTS = {
    "keywords": "Write a short paragraph about volcanoes. Include the keywords 'magma' and 'eruptions' in the response.",
    "max_words": "Describe deserts briefly. Answer with less than 20 words.",
    "bullets": BULLETS.replace("kites", "the human heart").replace("exactly 3", "exactly 2"),
    "title": "Describe volcanoes briefly. Your answer must contain a title, wrapped in double angular brackets, such as "
    "<<poem of joy>>.",
    "no_commas": "Tell me about the moon. In your entire response, refrain from the use of any commas.",
}
GOOD = {
    "keywords": "Volcanoes form where magma from deep below pushes up through cracks in the crust. Their eruptions "
    "send out lava and ash and can build new mountains over time.",
    "max_words": "Deserts are very dry places that get little rain. Their plants store water to survive.",
    "bullets": "* The heart is a strong muscle that pumps blood all around the body.\n* Blood brings oxygen to every "
    "cell and the heart beats in a steady rhythm.",
    "title": "<<All About Volcanoes>>\n\nA volcano is a mountain where molten rock called magma escapes from inside "
    "the Earth. When it erupts, lava flows out and can form new land.",
    "no_commas": "The moon is the natural satellite of the Earth. It has no light of its own and reflects sunlight. "
    "Its gravity causes the ocean tides.",
}
FIRST_SENTENCE = {kind: text.split(". ")[0].split(">>")[-1].lstrip("* \n") + "." for kind, text in GOOD.items()}
TITLE_ALONE = {
    "keywords": "<<Volcanoes>>",
    "max_words": "<<Deserts>>",
    "bullets": "<<The human heart>>",
    "title": "<<Volcanoes>>",
    "no_commas": "<<The moon>>",
}
CONTENT_FREE_BULLETS = {
    "keywords": "* Magma\n* Eruptions",
    "max_words": "* Deserts\n* Sand",
    "bullets": "* Heart\n* Blood",
    "title": "<<Volcanoes>>\n* Lava\n* Rock",
    "no_commas": "* Moon\n* Night",
}
KEYWORD_LISTS = {
    "keywords": "magma eruptions lava crust rock mountains ash volcano heat land",
    "max_words": "desert rain sand hot cold dry plants animals water cactus",
    "bullets": "* heart muscle blood chambers rhythm\n* oxygen nutrients cells pump body",
    "title": "<<Volcanoes>> magma lava crust molten rock eruptions mountains land",
    "no_commas": "moon satellite earth sunlight phases orbit gravity oceans tides",
}
OFF_TOPIC = (
    "My favourite hobby is cooking pasta with friends on a quiet Sunday evening in the kitchen because it is "
    "relaxing and fun for everyone."
)


def adversarial_answers(kind: str) -> dict[str, str]:
    """Answers that satisfy (or mimic) the format while saying nothing: each must earn a low reward."""
    sentence = FIRST_SENTENCE[kind]
    repeated = {"bullets": f"* {sentence}\n* {sentence}", "title": f"<<Volcanoes>>\n{sentence} {sentence} {sentence}"}
    return {
        "empty": "",
        "instruction example": {"bullets": "* This is point 1.\n* This is point 2"}.get(kind, "<<poem of joy>>"),
        "one sentence repeated": repeated.get(kind, f"{sentence} {sentence} {sentence}"),
        "title alone": TITLE_ALONE[kind],
        "bullets without content": CONTENT_FREE_BULLETS[kind],
        "off-topic paragraph": {
            "title": f"<<Volcanoes>>\n\n{OFF_TOPIC}",
            "bullets": f"* {OFF_TOPIC}\n* {OFF_TOPIC}",
        }.get(kind, OFF_TOPIC.replace(",", "")),
        "keyword list": KEYWORD_LISTS[kind],
    }


@pytest.mark.parametrize("kind", list(ifeval.CONSTRAINTS))
def test_a_good_answer_scores_high_and_every_degenerate_one_low(kind):
    messages = user(PROMPTS[kind])
    assert [c.kind for c, _ in ifeval.constraints_in(PROMPTS[kind])] == [kind]
    assert ifeval.constraint_accuracy(messages, GOOD[kind]) == 1.0
    assert ifeval.reward(messages, GOOD[kind]) >= 0.9
    for name, answer in adversarial_answers(kind).items():
        assert ifeval.reward(messages, answer) <= 0.1, (name, answer)


def test_reward_parts_by_hand():
    """The content factor's parts on one prompt (moon, no commas): each multiplies the format score."""
    messages = user(PROMPTS["no_commas"])
    # 15 words, 6 function words (40% >= 25%), no repeated bigram, fact words: satellite, reflects, sunlight -> full
    full = "The Moon is a satellite that reflects sunlight and it pulls the sea into high tides."
    assert ifeval.reward(messages, full) == pytest.approx(1.0)
    # two fact words (satellite, sunlight) of three -> 2/3
    two = "The Moon is a satellite that returns sunlight and it moves the sea into high waves."
    assert ifeval.reward(messages, two) == pytest.approx(2 / 3)
    # 10 words of the 15 a short paragraph asks for -> 10/15; a comma -> format 1/2
    short = "The Moon is a satellite that reflects sunlight, you know."
    assert ifeval.reward(messages, short) == pytest.approx(0.5 * 10 / 15)


def test_topic_is_read_from_the_prompt_and_an_unknown_topic_is_refused():
    assert ifeval.topic_of("Tell me about the Great Wall of China.").name == "the Great Wall of China"
    assert ifeval.topic_of("Explain the water cycle to a curious child.").name == "the water cycle"  # not 'water'
    with pytest.raises(ValueError, match="no topic of ifeval-topics.tsv found in the prompt 'Tell me about quarks"):
        ifeval.reward(user("Tell me about quarks. Answer with less than 10 words."), "Quarks are small.")


def test_content_preference_sees_content_not_only_format():
    messages = user(PROMPTS["title"])
    assert ifeval.content_preference(messages, "<<poem of joy>>", GOOD["title"]) > 0.9
    assert ifeval.content_preference(messages, GOOD["title"], "<<poem of joy>>") < 0.1
    off_topic = f"<<Volcanoes>>\n\n{OFF_TOPIC}"
    assert ifeval.content_preference(messages, off_topic, GOOD["title"]) > 0.6
    assert ifeval.content_preference(messages, GOOD["title"], GOOD["title"]) == 0.5
    # hand-worked: the logistic of the quality difference over the judge's temperature
    good, bad = (ifeval.content_quality(messages, t) for t in (GOOD["title"], "<<poem of joy>>"))
    assert ifeval.content_preference(messages, "<<poem of joy>>", GOOD["title"]) == pytest.approx(
        1 / (1 + math.exp(-(good - bad) / ifeval.JUDGE_TEMPERATURE))
    )


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
    assert (len(train), len(dev), len(heldout)) == (96, 48, 120)
    topic = lambda record: record["id"].removesuffix(f"-{record['constraint']}")  # noqa: E731
    assert not {topic(r) for r in train} & {topic(r) for r in heldout}  # held-out topics are never trained on
    assert {topic(r) for r in dev} == {topic(r) for r in train}  # dev: training topics ...
    assert not {r["id"] for r in dev} & {r["id"] for r in train}  # ... with a constraint they were not trained with
    assert len({r["id"] for r in train + dev + heldout}) == 264
    for record in train + dev + heldout:
        assert ifeval.constraint_accuracy(record["messages"], record["reference"]) == 1.0, record["id"]
        assert ifeval.reward(record["messages"], record["reference"]) >= 0.8, record["id"]
        found = [c.kind for c, _ in ifeval.constraints_in(record["messages"][-1]["content"])]
        assert found == [record["constraint"]], record["id"]
    kinds_by_topic = {}
    for record in heldout:
        kinds_by_topic.setdefault(topic(record), []).append(record["constraint"])
    assert len(kinds_by_topic) == ifeval.HELDOUT_TOPICS  # every held-out topic asked with every kind, once each
    assert all(sorted(kinds) == sorted(ifeval.CONSTRAINTS) for kinds in kinds_by_topic.values())


def test_every_kind_reads_back_the_parameters_it_was_written_with():
    topic = ifeval.topic_of("Tell me about owls.")
    for kind in ifeval.CONSTRAINTS:
        for seed in range(5):
            text = ifeval.instruction_text(kind, topic, random.Random(seed))
            reference = ifeval.reference_answer(kind, topic, text)
            assert ifeval.format_score(user(f"Tell me about owls. {text}"), reference) == 1.0, (kind, reference)
            assert ifeval.constraint_accuracy(user(f"Tell me about owls. {text}"), reference) == 1.0, (kind, reference)


def test_topics_file_errors_name_the_line(tmp_path):
    bad = tmp_path / "topics.tsv"
    bad.write_text("owls\tOne.\tTwo.\tThree.\tnight,feathers\nbroken line\n")
    with pytest.raises(ValueError, match=r"topics.tsv:2: expected 5 tab-separated fields, got 1"):
        ifeval.load_topics(bad)


def test_every_topic_keyword_is_a_word_of_its_facts():
    """A keywords prompt asks for words the reference contains verbatim (not 'invention' for 'inventions')."""
    for topic in ifeval.load_topics():
        words = {w.lower() for w in ifeval.constraints.words(" ".join(topic.facts))}
        assert {k.lower() for k in topic.keywords} <= words, topic.name


def test_the_topic_is_the_one_asked_about_not_one_the_constraint_names():
    """A keyword of the constraint may be another topic's name ('cheese'): the topic is the one the question names."""
    prompt = "Explain pizza to a curious child. Include the keywords 'cheese' and 'Naples' in the response."
    assert ifeval.topic_of(prompt).name == "pizza"
    reference = next(r for r in shipped(ifeval.HELDOUT_FILE) if r["id"] == "pizza-keywords")["reference"]
    assert ifeval.reward([{"role": "user", "content": prompt}], reference) >= 0.8
