"""Reruns that agree: every command skips a stage finished under the same config (`--force` redoes it), and an
upstream change redoes every stage it makes stale — training included — moving what it replaces aside. Also a
user's own reward that reads the prompt's record, and the reference rewards shipped for any prompt with a reference.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import assert_ok, cli, write_lines

from wpo.tasks import reference


@pytest.fixture
def user_run(tmp_path, tiny_llama, monkeypatch) -> Path:
    """A user's own model, prompts with a `reference` field, and a reward in their working directory that reads it."""
    monkeypatch.chdir(tmp_path)
    write_lines(
        tmp_path / "prompts.jsonl",
        [
            {"id": f"q{i}", "messages": [{"role": "user", "content": f"Say {i} words."}], "reference": "one two " * i}
            for i in range(1, 5)
        ],
    )
    (tmp_path / "length_closeness.py").write_text(
        "def reward(messages, text, record):\n    return -abs(len(text) - len(record['reference']))\n"
    )
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"output_dir: {tmp_path / 'run'}\nseed: 3\nstages: [sample, score, pair, train]\n"
        f"model: {{name_or_path: {tiny_llama}}}\n"
        "sample: {prompts: ./prompts.jsonl, n: 2, max_new_tokens: 6, offpolicy_fields: [reference]}\n"
        "score: {scorer: python, function: length_closeness:reward}\n"
        "pair: {length_unit: characters}\n"
        "train: {max_steps: 2, learning_rate: 1.0e-3, per_device_batch_size: 2, max_length: 96, "
        "max_prompt_length: 48, save_steps: 1}\n"
    )
    return recipe


def manifest(run: Path, stage: str) -> dict:
    return json.loads((run / stage / "manifest.json").read_text())


def test_a_user_reward_reads_the_prompts_record(user_run):
    assert_ok(cli("run", user_run))
    scored = [json.loads(line) for line in (user_run.parent / "run" / "score" / "candidates.jsonl").open()]
    for record in scored:
        for candidate in record["candidates"]:
            assert candidate["score"] == -abs(len(candidate["text"]) - len(record["reference"]))
    references = [c for r in scored for c in r["candidates"] if c["source"] == "offpolicy:reference"]
    assert references and all(c["score"] == 0 for c in references)


def test_every_command_skips_a_finished_stage_and_force_redoes_it(user_run, caplog):
    run = user_run.parent / "run"
    assert_ok(cli("run", user_run))
    first = manifest(run, "sample")
    skipped = json.loads(assert_ok(cli("sample", user_run, "--json")).stdout)
    assert skipped["skipped"] and skipped["output"] == str(run / "sample" / "candidates.jsonl")
    assert manifest(run, "sample") == first  # nothing ran, nothing was rewritten
    table = assert_ok(cli("sample", user_run)).stdout
    assert "done before under this config (skipped)" in table and "written" in table

    redone = json.loads(assert_ok(cli("sample", user_run, "--force", "--json")).stdout)
    assert not redone["skipped"] and redone["counts"]["written"] == 4
    replaced = run / f"sample.replaced-{first['config_hash']}"
    assert json.loads((replaced / "manifest.json").read_text()) == first
    assert (run / "sample" / "candidates.jsonl").read_bytes() == (replaced / "candidates.jsonl").read_bytes()


def test_an_upstream_change_redoes_every_stale_stage_training_included(user_run):
    run = user_run.parent / "run"
    assert_ok(cli("run", user_run))
    before = {stage: manifest(run, stage)["config_hash"] for stage in ("sample", "score", "pair", "train")}

    result = assert_ok(cli("run", user_run, "sample.max_new_tokens=8", "--json"))
    summary = json.loads(result.stdout)
    assert not any(entry["skipped"] for entry in summary["stages"].values())
    for stage, old_hash in before.items():
        assert manifest(run, stage)["config_hash"] != old_hash, stage
        assert (run / f"{stage}.replaced-{old_hash}" / "manifest.json").is_file(), stage
    assert (run / f"train.replaced-{before['train']}" / "checkpoint-2").is_dir()  # kept, not destroyed
    assert manifest(run, "train")["counts"]["resumed_from_step"] == 0

    again = json.loads(assert_ok(cli("run", user_run, "sample.max_new_tokens=8", "--json")).stdout)
    assert all(entry["skipped"] for entry in again["stages"].values())


def redone_lines(caplog) -> list[str]:
    return [record.getMessage().split(": ", 1)[1] for record in caplog.records if " is redone: " in record.getMessage()]


def test_editing_the_reward_or_a_helper_it_imports_redoes_score_and_what_follows(user_run, caplog):
    """The reward's code is an input like any file: editing its body, or a helper module it imports, redoes score
    and every stage after it (with a line saying what changed), and the scores come from the edited code."""
    run, folder = user_run.parent / "run", user_run.parent
    (folder / "closeness_scale.py").write_text("SCALE = 1\n")
    (folder / "length_closeness.py").write_text(
        "from closeness_scale import SCALE\n\n"
        "def reward(messages, text, record):\n    return -SCALE * abs(len(text) - len(record['reference']))\n"
    )
    assert_ok(cli("run", user_run))
    score = manifest(run, "score")
    assert score["config"]["code"].keys() == {"closeness_scale.py", "length_closeness.py"}
    assert score["fingerprinted"] == [
        f"score.candidates: {run / 'sample' / 'candidates.jsonl'}",
        "code: closeness_scale.py",
        "code: length_closeness.py",
    ]
    caplog.clear()
    summary = json.loads(assert_ok(cli("run", user_run, "--json")).stdout)  # unchanged: everything skips
    assert all(entry["skipped"] for entry in summary["stages"].values()) and not redone_lines(caplog)

    (folder / "closeness_scale.py").write_text("SCALE = 3\n")
    summary = json.loads(assert_ok(cli("run", user_run, "--json")).stdout)
    assert {name: entry["skipped"] for name, entry in summary["stages"].items()} == {
        "sample": True,
        "score": False,
        "pair": False,
        "train": False,
    }
    assert redone_lines(caplog)[
        0
    ] == "score is redone: closeness_scale.py changed; the earlier result is kept in " + str(
        run / f"score.replaced-{score['config_hash']}"
    )
    assert redone_lines(caplog)[1].startswith(
        f"pair is redone: pair.candidates ({run / 'score' / 'candidates.jsonl'}) changed"
    )
    for record in (json.loads(line) for line in (run / "score" / "candidates.jsonl").open()):
        for candidate in record["candidates"]:  # the edited helper's scale
            assert candidate["score"] == -3 * abs(len(candidate["text"]) - len(record["reference"]))

    caplog.clear()
    (folder / "length_closeness.py").write_text(
        "from closeness_scale import SCALE\n\n"
        "def reward(messages, text, record):\n    return -SCALE * abs(len(text) - len(record['reference'])) - 1\n"
    )
    assert_ok(cli("run", user_run, "--json"))
    assert redone_lines(caplog)[0].startswith("score is redone: length_closeness.py changed")


def test_the_reference_rewards_are_sacrebleus_scores_over_100():
    from sacrebleu.metrics import BLEU, CHRF

    record = {"id": "a", "reference": "The cat sat on the mat."}
    assert reference.chrf([], "The cat sat on the mat.", record) == 1.0
    answer = "A cat was sitting on the mat."
    assert reference.chrf([], answer, record) == pytest.approx(
        CHRF().sentence_score(answer, [record["reference"]]).score / 100
    )
    assert 0.0 < reference.chrf([], answer, record) < 1.0
    assert reference.bleu([], answer, record) == pytest.approx(
        BLEU(effective_order=True).sentence_score(answer, [record["reference"]]).score / 100
    )
    assert reference.bleu([], "zebra", record) == 0.0
    with pytest.raises(ValueError, match="the prompt 'b' has no 'reference' field"):
        reference.chrf([], answer, {"id": "b"})


def test_an_unfinished_stage_resumes_and_force_starts_it_over(user_run):
    run = user_run.parent / "run"
    assert_ok(cli("run", user_run))
    for name in ("final", "manifest.json"):  # as if killed after its last checkpoint
        path = run / "train" / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    resumed = json.loads(assert_ok(cli("train", user_run, "--json")).stdout)
    assert resumed["counts"]["resumed_from_step"] == 2
    (run / "train" / "manifest.json").unlink()
    again = json.loads(assert_ok(cli("train", user_run, "--force", "--json")).stdout)
    assert again["counts"]["resumed_from_step"] == 0
    assert (run / "train.replaced-unfinished" / "checkpoint-2").is_dir()
