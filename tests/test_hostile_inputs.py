"""The hostile input corpus (`tests/hostile/`) through the real CLI: every bad input ends in one clear line and exit 2
naming `file:line` (or the recipe's key path) — or, with `on_bad_record: skip`, in a skip counted by reason in the
stage's manifest. Never a traceback.

The CLI runs in-process (`helpers.cli`, typer's runner: the same `app` and error guard as `python -m wpo`, seconds
instead of a process start per case); `test_a_real_process_prints_one_line` checks that a real process behaves the
same. The 1 MB texts are generated here rather than stored.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import assert_one_line_error, cli, one_step_training, run_wpo, write_lines

HOSTILE = Path(__file__).parent / "hostile"
ONE_MB = 1_000_000


def manifest_counts(run_dir: Path, stage: str) -> dict:
    manifest = json.loads((run_dir / stage / "manifest.json").read_text())
    assert manifest["completed"]
    return manifest["counts"]


def pair_recipe(tmp_path: Path, candidates: Path, on_bad_record: str = "error") -> Path:
    recipe = tmp_path / "pair.yaml"
    recipe.write_text(
        f"output_dir: {tmp_path / 'run'}\nstages: [pair]\non_bad_record: {on_bad_record}\n"
        f"pair: {{candidates: {candidates}, length_unit: characters}}\n"
    )
    return recipe


# file → (message after "<path>:", the skip reason counted with on_bad_record: skip)
BAD_RECORDS = {
    "malformed-json.jsonl": ("2: invalid JSON (Expecting value at column 93)", "invalid_json"),
    "deeply-nested.jsonl": ("2: invalid JSON (nested too deeply)", "invalid_json"),
    "missing-keys.jsonl": ("2: missing field 'messages'", "missing_field"),
    "wrong-type-messages.jsonl": ("2: messages must be a non-empty list of messages or a string", "wrong_type"),
    "wrong-type-score.jsonl": ("2: candidates[1].score must be a number, got str", "wrong_type"),
    "wrong-role-last.jsonl": ("2: the prompt's last message must be the user's, got 'assistant'", "wrong_role"),
    "wrong-role-robot.jsonl": (
        "2: messages[0] has role 'robot'; expected ('system', 'user', 'assistant')",
        "wrong_role",
    ),
    "empty-prompt.jsonl": ("2: messages[0] (the user's message) is empty", "empty_text"),
    "invalid-utf8.jsonl": ("2: invalid UTF-8 at byte 60", "invalid_utf8"),
    "lone-surrogate.jsonl": ("2: invalid Unicode: an unpaired surrogate escape (\\uD800-\\uDFFF)", "invalid_utf8"),
    "duplicate-ids.jsonl": (f"2: duplicate id 'q1' (first at {HOSTILE / 'duplicate-ids.jsonl'}:1)", "duplicate_id"),
    "nan-score.jsonl": ("2: candidates[0].score is nan; scores must be finite", "non_finite_score"),
    "inf-score.jsonl": ("2: candidates[1].score is -inf; scores must be finite", "non_finite_score"),
}


@pytest.mark.parametrize("name", list(BAD_RECORDS))
def test_a_bad_record_names_its_line_or_is_counted(tmp_path, name):
    """`wpo pair` on scored candidates with one bad record (line 2) between two good ones."""
    message, reason = BAD_RECORDS[name]
    assert_one_line_error(cli("pair", pair_recipe(tmp_path, HOSTILE / name)), exact=f"{HOSTILE / name}:{message}")
    skipped = cli("pair", pair_recipe(tmp_path, HOSTILE / name, on_bad_record="skip"))
    assert skipped.exit_code == 0, skipped.stderr
    counts = manifest_counts(tmp_path / "run", "pair")
    assert (counts["read"], counts["written"], counts["skipped"]) == (3, 2, {reason: 1})


def test_an_empty_file_is_an_error_even_when_skipping(tmp_path):
    empty = HOSTILE / "empty.jsonl"
    for mode in ("error", "skip"):
        assert_one_line_error(
            cli("pair", pair_recipe(tmp_path, empty, mode)), exact=f"{empty}: the file is empty (no records)"
        )


def test_tied_and_empty_candidates_are_dropped_and_counted(tmp_path):
    """All-tied scores give no pair (counted as dropped); an empty candidate is ignored (counted), the rest pair."""
    assert cli("pair", pair_recipe(tmp_path, HOSTILE / "all-tied.jsonl")).exit_code == 0
    counts = manifest_counts(tmp_path / "run", "pair")
    assert (counts["written"], counts["skipped"]) == (2, {"all_scores_equal": 1})

    assert cli("pair", pair_recipe(tmp_path, HOSTILE / "empty-candidate.jsonl")).exit_code == 0
    counts = manifest_counts(tmp_path / "run", "pair")
    assert (counts["written"], counts["empty_candidates_ignored"], counts["skipped"]) == (3, 1, {})
    pairs = [json.loads(line) for line in (tmp_path / "run" / "pair" / "pairs.jsonl").read_text().splitlines()]
    assert pairs[1]["chosen"][0]["content"] == "Four."  # the empty text scored 9.0 but is not a response


def test_only_tied_candidates_fail_the_pair_stage(tmp_path):
    tied = tmp_path / "tied.jsonl"
    tied.write_text((HOSTILE / "all-tied.jsonl").read_text().splitlines()[1] + "\n")
    assert_one_line_error(
        cli("pair", pair_recipe(tmp_path, tied)),
        exact=f"{tied}: no preference pair could be formed from 1 prompts (dropped "
        "{'all_scores_equal': 1}, skipped {})",
    )


def test_a_one_megabyte_candidate_is_just_a_long_candidate(tmp_path):
    record = json.loads((HOSTILE / "all-tied.jsonl").read_text().splitlines()[0])
    record["candidates"][0]["text"] = "x" * ONE_MB
    assert cli("pair", pair_recipe(tmp_path, write_lines(tmp_path / "big.jsonl", [record]))).exit_code == 0
    pair = json.loads((tmp_path / "run" / "pair" / "pairs.jsonl").read_text())
    assert len(pair["chosen"][0]["content"]) == ONE_MB


def test_a_prompt_longer_than_max_length_fails_is_skipped_or_truncated(tmp_path, tiny_llama):
    pairs = HOSTILE / "pairs-long-prompt.jsonl"
    refused = cli("train", one_step_training(tmp_path, tiny_llama, pairs, None))
    assert isinstance(refused.exception, SystemExit) and refused.exit_code == 2
    assert refused.stderr.startswith(f"wpo: error: {pairs}:2 (pair long): prompt has ")
    assert refused.stderr.endswith(
        " tokens, leaving no room for a response within max_length 64 (set train.max_prompt_length to truncate it)\n"
    )
    assert refused.stderr.count("\n") == 1

    skipped = cli("train", one_step_training(tmp_path, tiny_llama, pairs, None), "on_bad_record=skip")
    assert skipped.exit_code == 0, skipped.stderr
    counts = manifest_counts(tmp_path / "run", "train")
    assert (counts["skipped"], counts["written"], counts["truncated_prompts"]) == ({"prompt_too_long": 1}, 2, 0)

    truncated = cli("train", one_step_training(tmp_path, tiny_llama, pairs, 32), "train.resume=never")
    assert truncated.exit_code == 0, truncated.stderr
    counts = manifest_counts(tmp_path / "run", "train")
    assert (counts["skipped"], counts["written"], counts["truncated_prompts"]) == ({}, 3, 1)


def test_a_one_megabyte_response_is_truncated_and_counted(tmp_path, tiny_llama):
    records = [json.loads(line) for line in (HOSTILE / "pairs-long-prompt.jsonl").read_text().splitlines()]
    records[1]["prompt"][0]["content"] = "Write at length."
    records[1]["chosen"][0]["content"] = "The sea and the sky. " * (ONE_MB // 21)
    pairs = write_lines(tmp_path / "pairs.jsonl", records)
    assert cli("train", one_step_training(tmp_path, tiny_llama, pairs, 32)).exit_code == 0
    counts = manifest_counts(tmp_path / "run", "train")
    assert (counts["written"], counts["truncated_responses"], counts["skipped"]) == (3, 1, {})


def test_a_prompt_beyond_the_models_context_is_refused_before_sampling(tmp_path, tiny_llama):
    """A 1 MB prompt cannot fit tiny_llama's 512 positions: a bad record named by line, not an out-of-memory."""
    prompts = write_lines(
        tmp_path / "prompts.jsonl",
        [
            {"id": "short", "messages": [{"role": "user", "content": "What is the capital of France?"}]},
            {"id": "huge", "messages": [{"role": "user", "content": "The sea and the sky. " * (ONE_MB // 21)}]},
        ],
    )
    recipe = tmp_path / "sample.yaml"
    recipe.write_text(
        f"output_dir: {tmp_path / 'run'}\nstages: [sample]\nmodel: {{name_or_path: {tiny_llama}}}\n"
        f"sample: {{prompts: {prompts}, n: 2, max_new_tokens: 4}}\n"
    )
    refused = cli("sample", recipe)
    assert isinstance(refused.exception, SystemExit) and refused.exit_code == 2
    assert refused.stderr.startswith(f"wpo: error: {prompts}:2: prompt has ")
    assert refused.stderr.endswith(
        " tokens; with sample.max_new_tokens 4 it exceeds the model's context of 512 tokens\n"
    )
    skipped = cli("sample", recipe, "on_bad_record=skip")
    assert skipped.exit_code == 0, skipped.stderr
    counts = manifest_counts(tmp_path / "run", "sample")
    assert (counts["skipped"], counts["read"]) == ({"prompt_too_long": 1}, 2)


RECIPES = {
    "unknown-key.yaml": "train.bta: unknown key; did you mean train.beta?",
    "wrong-type.yaml": "train.beta: Input should be a valid number (got 'high')",
    "python-tag.yaml": ":1: invalid YAML (could not determine a constructor for the tag "
    "'tag:yaml.org,2002:python/object/apply:os.system')",
}


@pytest.mark.parametrize("name", list(RECIPES))
def test_a_bad_recipe_names_the_key_path(tmp_path, name, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the python tag would have written its file
    message = RECIPES[name]
    separator = "" if message.startswith(":") else ": "
    assert_one_line_error(cli("train", HOSTILE / name), exact=f"{HOSTILE / name}{separator}{message}")
    assert not (tmp_path / "pwned").exists()


def test_a_real_process_prints_one_line(tmp_path):
    """The same guard in a real `python -m wpo` process: exit 2, one line on stderr, no traceback."""
    name = "malformed-json.jsonl"
    env = {**os.environ, "WPO_LOG_LEVEL": "WARNING", "OMP_NUM_THREADS": "1"}
    result = run_wpo("pair", pair_recipe(tmp_path, HOSTILE / name), env=env)
    assert result.returncode == 2
    assert result.stderr == f"wpo: error: {HOSTILE / name}:{BAD_RECORDS[name][0]}\n"
    assert result.stdout == ""
