"""A new user's own model, prompts and reward: every mistake a user can make ends in one line, exit 2, that says what
to do — at load, where `wpo config` and `wpo run` agree — and the commands agree with each other on reruns.

Each case runs the real CLI in this process (`helpers.cli`); the messages are checked fragment by fragment.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import assert_ok, assert_one_line_error, cli, write_lines

import wpo


@pytest.fixture
def prompts(tmp_path) -> Path:
    return write_lines(
        tmp_path / "prompts.jsonl",
        [
            {"id": f"q{i}", "messages": [{"role": "user", "content": f"Name {i} colors."}], "reference": f"{i} colors."}
            for i in range(4)
        ],
    )


def recipe_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(f"output_dir: {tmp_path / 'run'}\n{text}")
    return path


# recipe text → what `wpo config` and `wpo run` both say (fragments of the one line)
AT_LOAD = {
    "score without its model": (
        "stages: [sample, score]\nsample: {prompts: PROMPTS}\n",
        ["score.model is required by score.scorer: reward_model", "or choose score.scorer: python"],
    ),
    "a prompts file that is not there": (
        "stages: [sample]\nsample: {prompts: ./nope.jsonl}\n",
        ["sample.prompts: no such file or directory: ./nope.jsonl"],
    ),
    "a quantization llama.cpp does not know": (
        "stages: [export]\nexport: {quantizations: [Q4_K_X]}\n",
        ["export.quantizations: unknown type 'Q4_K_X'"],
    ),
    "a reward module that does not import": (
        "stages: [sample, score]\nsample: {prompts: PROMPTS}\nscore: {scorer: python, function: nonexistent_mod:f}\n",
        ["score.function: cannot import 'nonexistent_mod'", "working directory or PYTHONPATH"],
    ),
    "a reward without its function": (
        "stages: [sample, score]\nsample: {prompts: PROMPTS}\nscore: {scorer: python, function: json:nothing}\n",
        ["score.function: module json has no function 'nothing'"],
    ),
    "a reward that takes the wrong parameters": (
        "stages: [sample, score]\nsample: {prompts: PROMPTS}\nscore: {scorer: python, function: json:dumps}\n",
        ["score.function: json:dumps", "must take (messages, text) or (messages, text, record)"],
    ),
    "eval without prompts": ("stages: [eval]\neval: {prompts: null}\n", ["eval.prompts is required by the eval stage"]),
    "eval comparing the base with itself": (
        "stages: [eval]\neval: {prompts: PROMPTS, compare_to: base_model, judge: python, "
        "function: wpo.tasks.ifeval:content_preference}\n",
        ["eval.compare_to: base_model, but nothing is trained", "compared with itself", "train first"],
    ),
    "training a new directory without pairs": (
        "stages: [train]\n",
        ["train reads", "pair/pairs.jsonl, which does not exist: run `wpo pair` first", "train.pairs"],
    ),
    "a model path that is not there": (
        "stages: [train]\nmodel: {name_or_path: ./my-model}\ntrain: {pairs: PROMPTS}\n",
        ["model.name_or_path: no such file or directory: ./my-model"],
    ),
}


@pytest.mark.parametrize("case", list(AT_LOAD))
def test_config_fails_where_run_would_with_one_line(tmp_path, prompts, case, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text, fragments = AT_LOAD[case]
    recipe = recipe_file(tmp_path, text.replace("PROMPTS", str(prompts)))
    for command in ("config", "run"):
        assert_one_line_error(cli(command, recipe), str(recipe), *fragments)
    assert not (tmp_path / "run").exists()  # nothing ran, nothing was written


def test_a_stage_command_checks_what_it_needs(tmp_path, prompts):
    recipe = recipe_file(tmp_path, "stages: [sample]\n")
    assert_one_line_error(cli("score", recipe), "score reads", "run `wpo sample` first")


@pytest.mark.parametrize(
    ("arguments", "fragments"),
    [
        (["config", "/tmp"], ["recipe /tmp is a directory: give the recipe's YAML file"]),
        (["config", "/nonexistent.yaml"], ["recipe /nonexistent.yaml does not exist"]),
        (["keys", "trian"], ["no recipe key 'trian'", "train"]),
        (["chat", "./no-model"], ["no such file or directory: ./no-model (wpo chat takes an HF model directory"]),
        (["chat", "runs/never-written"], ["no such file or directory: runs/never-written"]),  # not a hub id here
        (["chat", "/nonexistent/model.gguf"], ["GGUF file /nonexistent/model.gguf does not exist"]),
    ],
)
def test_commands_say_what_is_wrong(arguments, fragments):
    assert_one_line_error(cli(*arguments), *fragments)


def test_a_key_given_twice_names_it_and_both_lines(tmp_path):
    recipe = tmp_path / "twice.yaml"
    recipe.write_text("train:\n  beta: 0.1\nseed: 3\ntrain:\n  beta: 0.2\n")
    assert_one_line_error(
        cli("config", recipe), exact=f"{recipe}:4: key 'train' is given twice (lines 1 and 4); keep one"
    )


def test_a_data_path_is_never_a_hub_id(tmp_path):
    from wpo.data.io import looks_like_local_path, read_records
    from wpo.errors import DataError

    for path in ("./nope.jsonl", "nope.jsonl", "/abs/data", "a/b/c", "~/data", "data.parquet"):
        assert looks_like_local_path(path), path
    for hub_id in ("HuggingFaceH4/ultrafeedback_binarized", "owner/name:train_prefs", "gpt2"):
        assert not looks_like_local_path(hub_id), hub_id
    with pytest.raises(DataError, match=r"^no such file or directory: \./nope\.jsonl$"):
        next(read_records("./nope.jsonl"))


def test_chat_points_a_run_directory_to_its_models(tmp_path):
    run = tmp_path / "run"
    (run / "train" / "final").mkdir(parents=True)
    (run / "summary.json").write_text("{}")
    assert_one_line_error(cli("chat", run), f"{run} is a run directory, not a model: chat with {run}/train/final")
    assert_one_line_error(cli("chat", tmp_path / "run" / "train"), "not an HF model directory (no config.json)")


def test_chat_refuses_zero_new_tokens_at_once(tiny_llama):
    assert_one_line_error(
        cli("chat", tiny_llama, "--prompt", "hi", "--max-new-tokens", "0"),
        "--max-new-tokens must be at least 1 (got 0)",
    )


def test_version_and_help_examples():
    result = assert_ok(cli("--version"))
    assert result.stdout == f"wpo {wpo.__version__}\n"
    for command in (
        "run",
        "sample",
        "score",
        "pair",
        "train",
        "eval",
        "export",
        "config",
        "keys",
        "model-dir",
        "sweep",
        "report",
        "chat",
    ):
        assert "Example: wpo " in assert_ok(cli(command, "--help")).stdout, command


def test_every_recipe_key_is_described(tmp_path):
    from wpo.recipe_keys import recipe_keys

    rows = recipe_keys()
    assert [row.key for row in rows if not row.description] == []
    by_key = {row.key: row for row in rows}
    assert (by_key["train.beta"].type, by_key["train.beta"].default) == ("float", "0.1")
    assert by_key["train.loss"].type == "sigmoid | robust | ipo | hinge | length_normalized"
    assert by_key["sample.offpolicy_models[].name"].type == "str"
    listed = json.loads(assert_ok(cli("keys", "train", "--json")).stdout)
    assert listed[0]["key"] == "train" and all(row["key"].startswith("train.") for row in listed[1:])
    assert {"key", "type", "default", "description"} == set(listed[0])


def test_python_api_takes_a_stage_name_and_lists_only_itself():
    assert dir(wpo) == sorted([*wpo.__all__, "__version__"])
    with pytest.raises(wpo.ConfigError, match="sample.prompts is required by the sample stage"):
        wpo.run({"output_dir": "/nonexistent/never-written"}, stages="sample")
