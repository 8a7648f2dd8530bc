"""Held-out measures: distinct-2, the verdict's rules, the fixed rule for highlights, the side-by-side file."""

from __future__ import annotations

import pytest

from wpo.evaluation.measures import compare, distinct_2, highlights, side_by_side, verdict


def test_distinct_2_by_hand():
    assert distinct_2("a b a b") == pytest.approx(2 / 3)  # bigrams ab, ba, ab: two distinct of three
    assert distinct_2("The cat. the CAT") == pytest.approx(2 / 3)  # lowercased; punctuation is not a word
    assert distinct_2("one") == 1.0


def rows_with(deltas: dict[str, list[float]], base: dict[str, list[float]]) -> list[dict[str, float]]:
    count = len(next(iter(deltas.values())))
    return [
        {
            "id": f"p{i}",
            **{f"{n}_base": base[n][i] for n in deltas},
            **{f"{n}_trained": base[n][i] + deltas[n][i] for n in deltas},
        }
        for i in range(count)
    ]


def test_verdict_needs_every_rule():
    names = ["reward", "chrf", "length_chars", "distinct_2"]
    good = rows_with(
        {
            "reward": [0.1, 0.2, 0.1, 0.3],
            "chrf": [-1.0, 0.0, 1.0, -1.5],
            "length_chars": [-10.0, 0.0, 5.0, -20.0],
            "distinct_2": [0.0, 0.01, -0.02, 0.0],
        },
        {"reward": [0.2] * 4, "chrf": [30.0] * 4, "length_chars": [200.0] * 4, "distinct_2": [0.9] * 4},
    )
    metrics = compare(good, names, seed=0)
    result = verdict(metrics, ["reward"], content_margin=2.0, min_length_ratio=0.75, repetition_margin=0.05)
    assert result["better"] is True
    assert result["verdict"]["length_not_collapsed"]["value"] == pytest.approx(193.75 / 200)
    assert result["verdict"]["content_not_worse"]["value"] == metrics["chrf_delta_ci95"][0]

    # the quickstart's old failure: reward up, but answers a quarter as long and content down by 15 chrF points
    gamed = rows_with(
        {"reward": [0.1, 0.2, 0.1, 0.3], "chrf": [-15.0] * 4, "length_chars": [-150.0] * 4, "distinct_2": [-0.2] * 4},
        {"reward": [0.2] * 4, "chrf": [30.0] * 4, "length_chars": [200.0] * 4, "distinct_2": [0.9] * 4},
    )
    result = verdict(compare(gamed, names, seed=0), ["reward"], 2.0, 0.75, 0.05)
    assert result["better"] is False
    failed = {name for name, check in result["verdict"].items() if not check["passed"]}
    assert failed == {"content_not_worse", "length_not_collapsed", "repetition_not_worse"}

    no_gain = rows_with(
        {"reward": [0.1, -0.1, 0.0, 0.0], "chrf": [0.0] * 4, "length_chars": [0.0] * 4, "distinct_2": [0.0] * 4},
        {"reward": [0.2] * 4, "chrf": [30.0] * 4, "length_chars": [200.0] * 4, "distinct_2": [0.9] * 4},
    )
    result = verdict(compare(no_gain, names, seed=0), ["reward"], 2.0, 0.75, 0.05)
    assert not result["verdict"]["reward_up"]["passed"] and result["better"] is False


def test_highlights_follow_the_fixed_rule():
    rows = rows_with({"reward": [0.0, 0.5, -0.3, 0.5, 0.1]}, {"reward": [0.2] * 5})
    picked = [(label, row["id"]) for label, row in highlights(rows, "reward")]
    # sorted deltas: p2 -0.3, p0 0.0, p4 0.1, p3 0.5, p1 0.5 (a tie: the earlier prompt ranks higher)
    assert picked == [("largest gain", "p1"), ("median", "p4"), ("largest loss", "p2")]


def test_side_by_side_keeps_hostile_text_inside_its_fence():
    row = {
        "id": "p0",
        "prompt": "Q?",
        "reference": "R",
        "base_output": "~~~\n# not a heading",
        "output": "~~~~~ still text",
        "reward_base": 0.25,
        "reward_trained": 12.5,
    }
    text = side_by_side([row], ["reward"], "base-model", "trained-model", "reward")
    assert "~~~~text\n~~~\n# not a heading\n~~~~\n" in text  # a fence longer than the answer's own run of tildes
    assert "~~~~~~text\n~~~~~ still text\n~~~~~~" in text
    assert "| reward | 0.250 | 12 |" in text
    assert text.count("### p0 (") == 3 and text.count("### p0\n") == 1  # the three highlights, then file order
