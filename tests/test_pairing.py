"""Pair selection rules, table-driven, and the pair stage's outputs."""

from __future__ import annotations

import json

import pytest
from helpers import write_lines

from wpo.config import load_recipe
from wpo.pairing import choose_pair
from wpo.pairing.stage import run_pair

CASES = [
    # scores, lengths, texts, min_margin -> chosen, rejected, drop reason
    ("plain max/min", [1.0, 3.0, 2.0], [5, 5, 5], "abc", 0.0, 1, 0, None),
    ("tie on max: shortest wins", [3.0, 1.0, 3.0], [9, 4, 6], "abc", 0.0, 2, 1, None),
    ("tie on max and length: earlier wins", [3.0, 3.0, 0.0], [6, 6, 1], "abc", 0.0, 0, 2, None),
    ("tie on min: closest length to chosen", [0.0, 5.0, 0.0, 0.0], [2, 10, 12, 30], "abcd", 0.0, 1, 2, None),
    ("tie on min, equal distance: earlier wins", [0.0, 5.0, 0.0], [8, 10, 12], "abc", 0.0, 1, 0, None),
    ("all scores equal", [2.0, 2.0, 2.0], [1, 2, 3], "abc", 0.0, None, None, "all_scores_equal"),
    ("margin below minimum", [1.0, 1.4], [1, 1], "ab", 0.5, None, None, "below_min_margin"),
    ("margin exactly minimum", [1.0, 1.5], [1, 1], "ab", 0.5, 1, 0, None),
    ("single candidate", [1.0], [1], "a", 0.0, None, None, "fewer_than_two_candidates"),
    ("identical texts", [1.0, 2.0], [1, 1], "aa", 0.0, None, None, "identical_texts"),
]


@pytest.mark.parametrize(
    ("name", "scores", "lengths", "texts", "margin", "chosen", "rejected", "reason"), CASES, ids=[c[0] for c in CASES]
)
def test_choose_pair(name, scores, lengths, texts, margin, chosen, rejected, reason):
    choice = choose_pair(scores, lengths, list(texts), margin)
    assert (choice.chosen, choice.rejected, choice.drop_reason) == (chosen, rejected, reason)


def scored(record_id, *candidates):
    return {
        "id": record_id,
        "messages": [{"role": "user", "content": f"question {record_id}"}],
        "candidates": [{"text": t, "source": s, "seed": None, "score": sc, "scores": None} for t, s, sc in candidates],
    }


def test_pair_stage_writes_pairs_and_stats(tmp_path):
    records = [
        scored("a", ("long answer", "policy", 2.0), ("ok", "policy", 2.0), ("bad", "offpolicy:gpt4", 0.0)),
        scored("b", ("x", "policy", 1.0), ("y", "policy", 1.0)),
        scored("c", ("", "policy", 9.0), ("good", "offpolicy:gpt4", 3.0), ("worse", "policy", -1.0)),
    ]
    source = write_lines(tmp_path / "scored.jsonl", records)
    recipe = load_recipe(
        None, [f"output_dir={tmp_path / 'run'}", f"pair.candidates={source}", "pair.length_unit=characters"]
    )
    result = run_pair(recipe)
    pairs = [json.loads(line) for line in (tmp_path / "run" / "pair" / "pairs.jsonl").read_text().splitlines()]
    assert pairs[0] == {
        "id": "a",
        "prompt": [{"role": "user", "content": "question a"}],
        "chosen": [{"role": "assistant", "content": "ok"}],
        "rejected": [{"role": "assistant", "content": "bad"}],
        "score_chosen": 2.0,
        "score_rejected": 0.0,
        "source_chosen": "policy",
        "source_rejected": "offpolicy:gpt4",
    }
    assert [p["id"] for p in pairs] == ["a", "c"] and pairs[1]["chosen"][0]["content"] == "good"
    stats = json.loads((tmp_path / "run" / "pair" / "stats.json").read_text())
    assert stats["pairs"] == 2 and stats["dropped"] == {"all_scores_equal": 1}
    assert stats["empty_candidates_ignored"] == 1
    assert stats["sources"] == {
        "chosen": {"policy": 1, "offpolicy:gpt4": 1},
        "rejected": {"offpolicy:gpt4": 1, "policy": 1},
    }
    assert stats["mean_margin"] == pytest.approx((2.0 + 4.0) / 2)
    assert sum(stats["histograms"]["all"]["counts"]) == 7 and sum(stats["histograms"]["chosen"]["counts"]) == 2
    assert result["stats"]["pairs"] == 2
    manifest = json.loads((tmp_path / "run" / "pair" / "manifest.json").read_text())
    assert manifest["counts"]["skipped"] == {"all_scores_equal": 1} and manifest["completed"]


def test_unscored_candidates_are_refused(tmp_path):
    source = write_lines(tmp_path / "c.jsonl", [scored("a", ("x", "policy", None), ("y", "policy", 1.0))])
    recipe = load_recipe(None, [f"output_dir={tmp_path}", f"pair.candidates={source}", "pair.length_unit=characters"])
    from wpo.errors import DataError

    with pytest.raises(DataError, match=r"c.jsonl:1: candidates\[0\] has no score \(run wpo score first\)"):
        run_pair(recipe)


# scores, cut off (finish_reason length) -> chosen, rejected, drop reason under never_chosen
CUT_OFF_CASES = [
    ("a cut-off best is never chosen", [0.5, 0.9, 0.1], [False, True, False], 0, 2, None),
    ("a cut-off answer may still be rejected", [0.9, 0.1], [False, True], 0, 1, None),
    ("only cut-off answers are best", [0.1, 0.9, 0.9], [False, True, True], None, None, "best_answers_cut_off"),
    ("every answer cut off", [0.1, 0.9], [True, True], None, None, "best_answers_cut_off"),
]


@pytest.mark.parametrize(
    ("name", "scores", "cut", "chosen", "rejected", "reason"), CUT_OFF_CASES, ids=[c[0] for c in CUT_OFF_CASES]
)
def test_a_cut_off_answer_is_never_chosen(name, scores, cut, chosen, rejected, reason):
    choice = choose_pair(scores, [5] * len(scores), [f"t{i}" for i in range(len(scores))], 0.0, [not c for c in cut])
    assert (choice.chosen, choice.rejected, choice.drop_reason) == (chosen, rejected, reason)


@pytest.mark.parametrize(
    ("rule", "chosen", "rejected"),
    [("allow", "cut", "worst"), ("never_chosen", "complete", "worst"), ("drop", "complete", "worst")],
)
def test_the_pair_stage_applies_the_cut_off_rule(tmp_path, rule, chosen, rejected):
    record = scored("a", ("complete", "policy", 0.5), ("cut", "policy", 0.9), ("worst", "policy", 0.1))
    record["candidates"][1]["finish_reason"] = "length"
    record["candidates"][0]["finish_reason"] = "stop"
    source = write_lines(tmp_path / "scored.jsonl", [record])
    recipe = load_recipe(
        None,
        [
            f"output_dir={tmp_path / 'run'}",
            f"pair.candidates={source}",
            "pair.length_unit=characters",
            f"pair.cut_off={rule}",
        ],
    )
    result = run_pair(recipe)
    (pair,) = [json.loads(line) for line in (tmp_path / "run" / "pair" / "pairs.jsonl").open()]
    assert (pair["chosen"][0]["content"], pair["rejected"][0]["content"]) == (chosen, rejected)
    assert result["counts"]["cut_off_candidates"] == 1 and result["stats"]["cut_off_rule"] == rule
