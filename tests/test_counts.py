"""A manifest's counts as one record: read, written and skipped by reason under the same names for every stage, and
the shape each stage wrote before (its own names) still read."""

from __future__ import annotations

import pytest

from wpo.manifest import Counts


def test_counts_write_and_read_one_shape():
    counts = Counts(read=5, written=3, skipped={"invalid_json": 1, "all_scores_equal": 1}, other={"steps": 4})
    written = counts.to_json()
    assert written == {"read": 5, "written": 3, "skipped": {"invalid_json": 1, "all_scores_equal": 1}, "steps": 4}
    assert Counts.from_json(written, "any stage") == counts
    assert Counts.from_json(Counts(None, 2).to_json(), "export") == Counts(None, 2)


@pytest.mark.parametrize(
    ("stage", "old", "expected"),
    [
        (
            "sample",
            {"prompts_read": 5, "prompts_written": 3, "skipped": {"bad": 1}, "dropped": {"same": 1}, "n": 2},
            Counts(5, 3, {"bad": 1, "same": 1}, {"n": 2}),
        ),
        ("score", {"records_read": 4, "records_written": 4, "skipped": {}}, Counts(4, 4)),
        ("pair", {"prompts": 3, "pairs": 2, "dropped": {"tied": 1}, "skipped": {"tied": 1}}, Counts(3, 2, {"tied": 2})),
        (
            "train",
            {"pairs_read": 6, "pairs_trained": 5, "skipped": {"long": 1}, "steps": 3},
            Counts(6, 5, {"long": 1}, {"steps": 3}),
        ),
        ("eval", {"prompts": 8, "skipped": {}, "judge_usage": {}}, Counts(8, None, {}, {"judge_usage": {}})),
        ("export", {"files": 2}, Counts(None, 2)),
    ],
)
def test_manifests_written_before_the_record_still_read(stage, old, expected):
    assert Counts.from_json(old, stage) == expected


def test_a_stage_s_own_count_cannot_take_a_shared_name():
    with pytest.raises(ValueError, match="read"):
        Counts(1, 1, other={"read": 2})
