"""Readers/writers for the data contracts: formats, validation with file:line, skip counting, atomic writes."""

from __future__ import annotations

import json
import os

import pytest
from helpers import PAIRS, pair_record, write_lines

from wpo.data import (
    BadRecordPolicy,
    atomic_writer,
    load_pairs,
    load_records,
    parse_annotation,
    parse_candidates,
    parse_model_output,
    parse_prompt,
    read_records,
    write_jsonl,
)
from wpo.errors import DataError


def test_pairs_roundtrip_in_trl_conversational_format(pairs_file, tmp_path):
    loaded = load_pairs(str(pairs_file), BadRecordPolicy())
    assert [p.id for p in loaded.pairs] == [p[0] for p in PAIRS]
    out = tmp_path / "out.jsonl"
    write_jsonl(out, [p.to_record() for p in loaded.pairs])
    first = json.loads(out.read_text().splitlines()[0])
    assert first == pair_record(*PAIRS[0])
    assert set(first) == {
        "id",
        "prompt",
        "chosen",
        "rejected",
        "score_chosen",
        "score_rejected",
        "source_chosen",
        "source_rejected",
    }


def test_implicit_prompt_format_is_normalized(tmp_path):
    """ultrafeedback-style: prompt is a string, chosen/rejected repeat the user turn before the answer."""
    user = {"role": "user", "content": "Hi?"}
    record = {
        "prompt_id": "abc",
        "prompt": "Hi?",
        "chosen": [user, {"role": "assistant", "content": "Hello!"}],
        "rejected": [user, {"role": "assistant", "content": "Go away."}],
        "score_chosen": 9.5,
        "score_rejected": 2,
    }
    pair = load_pairs(str(write_lines(tmp_path / "p.jsonl", [record])), BadRecordPolicy()).pairs[0]
    assert (pair.id, pair.prompt, pair.chosen, pair.rejected) == ("abc", [user], "Hello!", "Go away.")
    assert (pair.score_chosen, pair.score_rejected) == (9.5, 2.0)


BAD_PAIRS = [
    ('{"id": "a", "prompt": "x"', "invalid_json", r":1: invalid JSON"),
    (b'{"id": "a", "prompt": "\xff"}', "invalid_utf8", r":1: invalid UTF-8"),
    ("[1, 2]", "not_an_object", r":1: expected a JSON object, got list"),
    ({"id": "a", "prompt": "x", "chosen": "y"}, "missing_field", r":1: missing field 'rejected'"),
    (
        {"id": "a", "prompt": "x", "chosen": [{"role": "user", "content": "y"}], "rejected": "z"},
        "wrong_role",
        r":1: chosen must be an assistant message, got role 'user'",
    ),
    (
        {"id": "a", "prompt": "x", "chosen": "y", "rejected": [{"role": "robot", "content": "z"}]},
        "wrong_role",
        r":1: rejected\[0\] has role 'robot'",
    ),
    ({"id": "a", "prompt": "x", "chosen": "  ", "rejected": "z"}, "empty_text", r":1: chosen is empty"),
    (
        {"id": "a", "prompt": [{"role": "assistant", "content": "x"}], "chosen": "y", "rejected": "z"},
        "wrong_role",
        r"the prompt's last message must be the user's",
    ),
    (
        {"id": "a", "prompt": "x", "chosen": "y", "rejected": "z", "score_chosen": float("nan")},
        "non_finite_score",
        r"score_chosen is nan; scores must be finite",
    ),
    ({"id": "a", "prompt": 3, "chosen": "y", "rejected": "z"}, "wrong_type", r"prompt must be a non-empty list"),
]


@pytest.mark.parametrize(("line", "reason", "message"), BAD_PAIRS, ids=[b[1] + str(i) for i, b in enumerate(BAD_PAIRS)])
def test_bad_pair_records_name_file_and_line(tmp_path, line, reason, message):
    path = tmp_path / "bad.jsonl"
    raw = line if isinstance(line, bytes) else (line if isinstance(line, str) else json.dumps(line)).encode()
    path.write_bytes(raw + b"\n" + json.dumps(pair_record(*PAIRS[0])).encode() + b"\n")
    with pytest.raises(DataError, match=rf"bad.jsonl{message}" if message.startswith(":") else message):
        load_pairs(str(path), BadRecordPolicy())
    skipping = BadRecordPolicy("skip")
    loaded = load_pairs(str(path), skipping)
    assert [p.id for p in loaded.pairs] == ["p1"]
    assert loaded.skipped == {reason: 1}


def test_a_pairs_own_weight_is_read_and_written_back_only_when_given(tmp_path):
    records = [dict(pair_record(*PAIRS[0]), weight=2), dict(pair_record(*PAIRS[1]), weight=0.0), pair_record(*PAIRS[2])]
    loaded = load_pairs(str(write_lines(tmp_path / "p.jsonl", records)), BadRecordPolicy())
    assert [p.weight for p in loaded.pairs] == [2.0, 0.0, None]
    written = [p.to_record() for p in loaded.pairs]
    assert [r.get("weight") for r in written] == [2.0, 0.0, None]
    assert "weight" not in written[2]  # the TRL format, unchanged when no weight is given


@pytest.mark.parametrize("weight", ["-1", '"2"', "true", "NaN", "Infinity", "[1]"])
def test_bad_weights_are_refused_naming_file_and_line(tmp_path, weight):
    good = [json.dumps(pair_record(*pair)) for pair in PAIRS[:2]]
    bad = json.dumps(pair_record(*PAIRS[2]))[:-1] + f', "weight": {weight}}}'
    path = write_lines(tmp_path / "pairs.jsonl", [*good, bad])
    shown = {"NaN": "nan", "Infinity": "inf", "true": "True", '"2"': "'2'"}.get(weight, weight)
    with pytest.raises(DataError) as raised:
        load_pairs(str(path), BadRecordPolicy())
    assert str(raised.value) == f"{path}:3: weight must be a finite number >= 0 (got {shown})"
    assert load_pairs(str(path), BadRecordPolicy("skip")).skipped == {"bad_weight": 1}


def test_identical_and_duplicate_pairs(tmp_path):
    same = pair_record("s", "q", "same answer", "same answer")
    path = write_lines(tmp_path / "p.jsonl", [pair_record(*PAIRS[0]), same, "", pair_record(*PAIRS[0])])
    with pytest.raises(DataError, match=r"p.jsonl:4: duplicate id 'p1' \(first at .*p.jsonl:1\)"):
        load_pairs(str(path), BadRecordPolicy())
    loaded = load_pairs(str(path), BadRecordPolicy("skip"))
    assert loaded.records_read == 3  # the blank line is not a record
    assert loaded.skipped == {"identical_chosen_rejected": 1, "duplicate_id": 1}


def test_parquet_and_datasets_dir_sources(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [pair_record(*pair) for pair in PAIRS[:3]]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "pairs.parquet")
    assert [p.id for p in load_pairs(str(tmp_path / "pairs.parquet"), BadRecordPolicy()).pairs] == ["p1", "p2", "p3"]
    datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "ds"))
    rows = list(read_records(str(tmp_path / "ds")))
    assert rows[2].where.endswith("ds:row 3") and rows[2].data["id"] == "p3"


def test_unknown_source_is_a_clear_error():
    with pytest.raises(DataError, match=r"no-such/dataset: no local file by that name, and loading it as a datasets"):
        list(read_records("no-such/dataset"))
    with pytest.raises(DataError, match=r"builtin:nope.jsonl: no such built-in data file; available: .*toy-pairs"):
        list(read_records("builtin:nope.jsonl"))


def test_builtin_pairs_are_valid():
    loaded = load_pairs("builtin:toy-pairs.jsonl", BadRecordPolicy())
    assert len(loaded.pairs) == 48 and not loaded.skipped


def test_atomic_writer_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "out.jsonl"
    write_jsonl(target, [{"a": 1}])
    with pytest.raises(RuntimeError), atomic_writer(target) as handle:
        handle.write("partial")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == '{"a": 1}\n'
    assert os.listdir(tmp_path) == ["out.jsonl"]  # no temp file left behind
    with pytest.raises(ValueError):
        write_jsonl(target, [{"score": float("inf")}])  # never writes non-JSON
    assert target.read_text() == '{"a": 1}\n'


def test_prompt_candidates_and_eval_contracts(tmp_path):
    prompt = parse_prompt({"id": 7, "messages": [{"role": "user", "content": "q"}], "reference": "r"}, "f:1")
    assert (prompt.id, prompt.extra) == ("7", {"reference": "r"})
    record = {
        "id": "a",
        "messages": [{"role": "user", "content": "q"}],
        "candidates": [
            {"text": "x", "source": "policy", "seed": 3, "score": None, "scores": None},
            {"text": "y", "source": "offpolicy:reference", "seed": None, "score": 1.5, "scores": {"h": 1}},
        ],
    }
    parsed = parse_candidates(record, "f:1")
    assert parsed.to_record()["candidates"][1] == {
        "text": "y",
        "source": "offpolicy:reference",
        "seed": None,
        "score": 1.5,
        "scores": {"h": 1.0},
        "finish_reason": None,
    }
    bad = dict(record, candidates=[{"text": "x", "source": "gpt4"}])
    path = write_lines(tmp_path / "c.jsonl", [record, bad])
    with pytest.raises(DataError, match=r"c.jsonl:2: candidates\[0\].source must be 'policy' or 'offpolicy:<name>'"):
        load_records(str(path), parse_candidates, BadRecordPolicy())
    nan = dict(record, candidates=[{"text": "x", "source": "policy", "score": float("inf")}])
    with pytest.raises(DataError, match=r"c.jsonl:1: candidates\[0\].score is inf"):
        load_records(str(write_lines(tmp_path / "c.jsonl", [nan])), parse_candidates, BadRecordPolicy())

    outputs = tmp_path / "model_outputs.json"
    outputs.write_text(json.dumps([{"instruction": "i", "output": "o", "generator": "g"}, {"instruction": "i"}]))
    with pytest.raises(DataError, match=r"model_outputs.json:item 1: missing field 'output'"):
        load_records(str(outputs), parse_model_output, BadRecordPolicy())
    annotation = {"instruction": "i", "output_1": "a", "output_2": "b", "generator_1": "ref", "generator_2": "m"}
    assert parse_annotation({**annotation, "preference": 1.75}, "x").preference == 1.75
    with pytest.raises(Exception, match=r"preference must lie in \[1, 2\], got 2.5"):
        parse_annotation({**annotation, "preference": 2.5}, "x")


def test_ultrafeedback_style_prompts_are_read_as_one_user_message():
    from wpo.data.schemas import parse_prompt

    record = {"prompt_id": "abc", "prompt": "Write a haiku.", "all_rm_scores": [0.1, 0.2]}
    prompt = parse_prompt(record, "uf.jsonl:1")
    assert (prompt.id, prompt.messages) == ("abc", [{"role": "user", "content": "Write a haiku."}])
    assert prompt.extra == {"all_rm_scores": [0.1, 0.2]}
    with_messages = parse_prompt(
        {"id": "x", "prompt": "ignored", "prompt_id": "y", "messages": [{"role": "user", "content": "Hi"}]}, "w:1"
    )
    assert with_messages.id == "x" and with_messages.messages == [{"role": "user", "content": "Hi"}]
