"""Held-out figures as types: one writer and one reader of the flat keys files have always had."""

from __future__ import annotations

from wpo.figures import Estimate, MeasureRow, PairedMeasure, paired_measures, row_measure_names

REWARD = PairedMeasure(
    "reward", Estimate(0.339, (0.275, 0.407)), Estimate(0.453, (0.387, 0.522)), Estimate(0.114, (0.042, 0.188)), 120
)
FLAT = {
    "reward_base": 0.339,
    "reward_base_ci95": [0.275, 0.407],
    "reward_trained": 0.453,
    "reward_trained_ci95": [0.387, 0.522],
    "reward_delta": 0.114,
    "reward_delta_ci95": [0.042, 0.188],
    "reward_n": 120,
}


def test_a_measure_writes_and_reads_the_files_keys():
    assert REWARD.flat() == FLAT
    assert PairedMeasure.from_flat("reward", FLAT) == REWARD


def test_the_measures_list_names_them_and_old_files_are_read_by_their_deltas():
    metrics = {"measures": ["reward"], **FLAT, "win_rate": 60.9, "length_delta_ci95": [0, 1]}
    assert paired_measures(metrics) == [REWARD]  # only what the list names
    written_before_the_list = {**FLAT, "win_rate": 60.9, "identical_to_base": 0}
    assert paired_measures(written_before_the_list) == [REWARD]
    assert paired_measures({"win_rate": 60.9}) == []


def test_a_measures_row_is_read_by_field():
    record = {
        "id": 7,
        "reward_base": 0.0,
        "reward_trained": 1.0,
        "chrf_base": 30.0,
        "chrf_trained": 32.5,
        "output": "x",
    }
    assert row_measure_names(record) == ["reward", "chrf"]
    row = MeasureRow.from_record(record, ["reward", "chrf"])
    assert (row.id, row.base, row.trained) == ("7", {"reward": 0.0, "chrf": 30.0}, {"reward": 1.0, "chrf": 32.5})
    assert MeasureRow.fields("chrf") == ("chrf_base", "chrf_trained")
