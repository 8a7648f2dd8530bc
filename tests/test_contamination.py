"""Eval instructions seen in training: a 13-word sequence shared with the training prompts or pairs is found, listed
in metrics.json, flagged in the summary and the report; nothing is flagged without one."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

from helpers import pair_record, user, write_lines

from wpo.config import load_recipe
from wpo.data.schemas import PromptRecord
from wpo.evaluation.contamination import find_overlaps, texts_of, training_sources, words
from wpo.evaluation.stage import contamination_summary

LONG = "Describe in detail how the ancient Romans built their aqueducts and why those channels lasted so long"


def test_a_shared_13_word_sequence_is_found_and_12_are_not():
    words = LONG.split()
    instructions = [LONG, "Tell me about owls.", "Write a haiku about the sea and the moon tonight please."]
    training = [
        "Question: " + " ".join(words[2:15]).upper() + "!",  # 13 words of the first instruction, other case/punctuation
        " ".join(words[:12]) + " and nothing else",  # only 12 in a row: not enough
        "tell me about OWLS",  # a short instruction's words, whole: the same prompt
        "Tell me about owls and their nests.",  # more than the short instruction: not the same prompt
    ]
    overlap = find_overlaps(instructions, training, ["t.jsonl"])
    assert overlap.found == {0: " ".join(words[2:15]).lower(), 1: "tell me about owls"}
    assert overlap.texts_read == 4 and overlap.ngram == 13
    assert find_overlaps(instructions, training[1:2] + training[3:], []).found == {}


TEMPLATE = "Your answer must contain a title, wrapped in double angular brackets, such as <<poem of joy>>."


def test_wording_the_eval_set_shares_is_not_contamination_but_a_leaked_item_is():
    """IFEval-style: every instruction of a kind carries the same constraint sentence (17 words), and so do the
    training prompts. That sentence is no evidence; an item whose whole text was trained on, or whose own 13 words
    were, is."""
    own = "Explain in plain words why the old stone bridge over the river outlived every newer bridge in town"
    instructions = [f"Describe owls briefly. {TEMPLATE}", f"Describe rivers briefly. {TEMPLATE}", f"{own}. {TEMPLATE}"]
    training = [f"Describe kites briefly. {TEMPLATE}", f"Describe tea briefly. {TEMPLATE}"]
    clean = find_overlaps(instructions, training, ["train.jsonl"])
    # set aside: the sentence's 16 - 13 + 1 runs of 13 words, and "briefly" + its first 12 (two instructions have it)
    assert clean.found == {} and clean.template_ngrams == len(words(TEMPLATE)) - 13 + 1 + 1

    leaked = find_overlaps(instructions, [*training, f"describe RIVERS briefly! {TEMPLATE}"], [])
    assert leaked.found == {1: " ".join(words(f"Describe rivers briefly. {TEMPLATE}"))}  # the whole item
    seen = find_overlaps(instructions, [*training, f"As asked: {own.upper()}, and more."], [])
    assert seen.found == {2: " ".join(words(own)[:13])}  # its own words, not the template's


def test_the_eval_stage_lists_instructions_seen_in_the_run_s_prompts_or_pairs(tmp_path):
    prompts_file = write_lines(
        tmp_path / "train-prompts.jsonl",
        [{"id": "t1", "messages": user("Something unrelated about cheese making in the mountains of France today.")}],
    )
    pairs = write_lines(
        tmp_path / "pairs.jsonl", [pair_record("p1", "What is rain?", f"As asked: {LONG.lower()}.", "No idea.")]
    )
    recipe = load_recipe(
        None, [f"output_dir={tmp_path / 'run'}", f"sample.prompts={prompts_file}", f"train.pairs={pairs}"]
    )
    sources = training_sources(recipe)
    assert sources == [str(prompts_file), str(pairs)]  # the run's pair output does not exist
    eval_prompts = [PromptRecord("e1", user(LONG)), PromptRecord("e2", user("Name three birds of prey."))]
    summary = contamination_summary(sources, eval_prompts)
    assert summary["contaminated_instructions"] == 1
    found = summary["contamination"]
    assert found["instructions"] == [{"id": "e1", "shared": " ".join(LONG.lower().split()[:13])}]
    assert (found["instructions_checked"], found["sources"], found["ngram"]) == (2, [str(prompts_file), str(pairs)], 13)
    records = [json.loads(line) for path in (prompts_file, pairs) for line in path.read_text().splitlines()]
    assert found["training_texts_read"] == sum(len(list(texts_of(record))) for record in records) == 6
    json.dumps(summary)  # goes into metrics.json as it is

    clean = contamination_summary(sources, eval_prompts[1:])
    assert clean["contaminated_instructions"] == 0 and clean["contamination"]["instructions"] == []


def test_the_report_and_the_summary_flag_contamination(tmp_path, capsys):
    from pathlib import Path

    from wpo.cli import _print_summary
    from wpo.pipeline import HEADLINE_KEYS
    from wpo.reporting.collect import EvalData, RoundData, RunData
    from wpo.reporting.render import render_run

    def page_with(metrics):
        evaluation = EvalData(metrics, "m", None, "reference", [], None, [], 805, None, [])
        run = RunData(
            tmp_path,
            None,
            [RoundData(1, tmp_path, [], None, None, [], pair_weights=None, evaluation=evaluation, export=None)],
        )
        return " ".join(render_run(run, datetime.now(UTC)).split())

    found = {
        "ngram": 13,
        "sources": ["pairs.jsonl"],
        "training_texts_read": 10,
        "instructions_checked": 805,
        "template_ngrams_set_aside": 39,
        "contaminated": 2,
        "instructions": [{"id": "e1", "shared": "a <b> c"}, {"id": "e7", "shared": "d e f"}],
    }
    page = page_with({"contamination": found})
    assert "<h3>Contamination: 2 eval instruction(s) seen in training</h3>" in page
    assert "2 of 805 eval instructions share a 13-word sequence with pairs.jsonl" in page
    assert "<li>e1: <q>a &lt;b&gt; c</q></li><li>e7: <q>d e f</q></li>" in page
    assert "39 sequences that several eval instructions share (the set's own wording) were not counted" in page
    clean = {"contamination": {**found, "contaminated": 0, "instructions": []}}
    page = page_with(clean)
    assert "No eval instruction shares a 13-word sequence with the training data (pairs.jsonl)" in page
    assert "seen in training" not in page

    assert "contaminated_instructions" in HEADLINE_KEYS  # summary.json carries the count
    _print_summary({"stages": {}, "total_wall_seconds": 1.0, "contaminated_instructions": 2}, Path("s/summary.json"))
    printed = capsys.readouterr().out
    assert re.search(r"eval instructions seen in training \(!\) +│ +2 │", printed), printed
