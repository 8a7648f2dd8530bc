"""A new user's own model, prompts and reward: every mistake a user can make ends in one line, exit 2, that says what
to do — at load, where `wpo config` and `wpo run` agree, input files included, which `wpo config` reads as the stages
will — and the commands agree with each other on reruns. What this machine lacks to run a recipe (a package, a GPU,
a file) is no mistake of the recipe's: its own lines, exit 3, and `wpo config` still prints the recipe.

Each case runs the real CLI in this process (`helpers.cli`); the messages are checked fragment by fragment.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import assert_ok, assert_one_line_error, cli, machine_lacks, pair_record, write_lines

import wpo
from wpo.config import load_recipe
from wpo.errors import DataError

ROOT = Path(__file__).resolve().parents[1]


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
}


@pytest.mark.parametrize("case", list(AT_LOAD))
def test_config_fails_where_run_would_with_one_line(tmp_path, prompts, case, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text, fragments = AT_LOAD[case]
    recipe = recipe_file(tmp_path, text.replace("PROMPTS", str(prompts)))
    for command in ("config", "run"):
        assert_one_line_error(cli(command, recipe), str(recipe), *fragments)
    assert not (tmp_path / "run").exists()  # nothing ran, nothing was written


NOT_HERE = "no such file or directory here: copy it to this machine, or correct the path"

# recipe text → the stage it runs, and the one thing this machine lacks to run it
LACKS = {
    "a prompts file that is not there": (
        "stages: [sample]\nsample: {prompts: ./nope.jsonl}\n",
        "sample",
        f"./nope.jsonl (sample.prompts): {NOT_HERE}",
    ),
    "a model path that is not there": (
        "stages: [sample]\nmodel: {name_or_path: ./my-model}\nsample: {prompts: PROMPTS}\n",
        "sample",
        f"./my-model (model.name_or_path): {NOT_HERE}",
    ),
    "a reference model that is not there": (
        "stages: [train]\ntrain: {pairs: PAIRS, reference_model: ./ref}\n",
        "train",
        f"./ref (train.reference_model): {NOT_HERE}",
    ),
}


@pytest.mark.parametrize("case", list(LACKS))
def test_a_file_that_is_not_here_is_what_this_machine_lacks(tmp_path, prompts, case, monkeypatch):
    """The file may be on the machine that runs the recipe: `wpo config` prints the recipe and says what is missing
    here (exit 3); `wpo run` and the stage's command refuse to start with the same line."""
    monkeypatch.chdir(tmp_path)
    pairs = write_lines(tmp_path / "pairs.jsonl", [pair_record("p1", "Hi?", "Hello.", "No.")])
    text, stage, lack = LACKS[case]
    recipe = recipe_file(tmp_path, text.replace("PROMPTS", str(prompts)).replace("PAIRS", str(pairs)))
    config = cli("config", recipe)
    assert machine_lacks(config) == [lack]
    assert yaml.safe_load(config.stdout) == load_recipe(recipe).to_dict()
    for command in ("run", stage):
        refused = cli(command, recipe)
        assert machine_lacks(refused) == [lack] and refused.stdout == ""
    assert not (tmp_path / "run").exists()


def test_the_seed_recipe_is_printed_on_a_machine_without_vllm_or_a_gpu(monkeypatch):
    """A user prepares the seed's GPU run on a laptop: the recipe is right, and what this laptop lacks is said apart
    (exit 3), a line per thing, naming every setting that needs it; a mistake in the recipe is still exit 2."""
    import importlib.util

    import torch

    found = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in ("vllm", "alpaca_eval") else found(name, *a)
    )
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.chdir(ROOT)
    recipe = "recipes/gemma-2-9b-it-wpo-hb.yaml"
    config = cli("config", recipe, "--json")
    lacks = machine_lacks(config)
    vllm = "vllm (sample.backend: vllm, eval.backend: vllm): pip install vllm on a GPU machine (it pins its own torch)"
    gpu = "a GPU (sample.backend: vllm, eval.backend: vllm): torch sees 0 here: run it on a machine with a GPU"
    alpaca_eval = "alpaca_eval (eval.judge: alpaca_eval): pip install 'wpo[alpaca-eval]'"
    eval_set = f"alpaca_eval/gpt4_turbo_reference_outputs.json (eval.prompts): {NOT_HERE}"
    assert lacks[:2] == [vllm, gpu] and alpaca_eval in lacks and eval_set in lacks
    assert json.loads(config.stdout) == load_recipe(ROOT / recipe).to_dict()

    refused = cli("run", recipe)
    assert machine_lacks(refused) == lacks and refused.stdout == ""
    assert machine_lacks(cli("sample", recipe)) == [
        vllm.replace(", eval.backend: vllm", ""),
        gpu.replace(", eval.backend: vllm", ""),
    ]
    assert not (ROOT / load_recipe(ROOT / recipe).output_dir).exists()

    assert_one_line_error(cli("config", recipe, "train.bta=1"), "train.bta: unknown key")
    # a mistake the checks find comes before what the machine lacks
    assert_one_line_error(cli("config", recipe, "export.quantizations=[Q4_K_X]"), "unknown type 'Q4_K_X'")


def issue_prompts(path: Path, malformed_line: int | None = None) -> Path:
    """16 prompts, the last 6 without the `reference` their recipe samples as an off-policy answer (as issue 38's
    user had them); `malformed_line` cut short inside a string."""
    lines = [
        json.dumps(
            {"id": f"q{i}", "messages": [{"role": "user", "content": f"Name {i} colors."}]}
            | ({"reference": f"{i} colors: red, ..."} if i < 10 else {})
        )
        for i in range(16)
    ]
    if malformed_line is not None:
        lines[malformed_line - 1] = lines[malformed_line - 1][:50]
    return write_lines(path, lines)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("my-prompts.jsonl", "my-prompts.jsonl:11: off-policy field 'reference' is missing or empty"),
        ("bad-prompts.jsonl", "bad-prompts.jsonl:8: invalid JSON (Unterminated string starting at column 44)"),
    ],
)
def test_config_fails_on_the_line_and_with_the_words_of_the_sample_stage(
    tmp_path, tiny_llama, monkeypatch, case, expected
):
    from wpo.sampling.stage import run_sample

    monkeypatch.chdir(tmp_path)
    issue_prompts(tmp_path / case, malformed_line=8 if case.startswith("bad") else None)
    recipe = recipe_file(
        tmp_path,
        f"stages: [sample]\nmodel: {{name_or_path: {tiny_llama}}}\n"
        f"sample: {{prompts: {case}, n: 2, max_new_tokens: 4, offpolicy_fields: [reference]}}\n",
    )
    with pytest.raises(DataError) as stage_error:
        run_sample(load_recipe(recipe, [f"output_dir={tmp_path / 'stage'}"]))  # the stage itself, no checks before it
    assert str(stage_error.value).startswith(expected)
    for command in ("config", "run"):
        assert_one_line_error(cli(command, recipe), exact=str(stage_error.value))
    assert not (tmp_path / "run").exists()


def test_config_reads_the_prompts_under_the_recipes_policies(tmp_path, monkeypatch, caplog):
    """What a stage would skip passes, counted in one line; what leaves no prompt at all fails as the stage would."""
    monkeypatch.chdir(tmp_path)
    issue_prompts(tmp_path / "my-prompts.jsonl")
    recipe = recipe_file(
        tmp_path, "stages: [sample]\nsample: {prompts: my-prompts.jsonl, offpolicy_fields: [reference]}\n"
    )
    for policy, skipped in (
        ("on_bad_record=skip", True),
        ("sample.offpolicy_missing=skip_record", True),
        ("sample.offpolicy_missing=skip_candidate", False),
    ):
        caplog.clear()
        assert_ok(cli("config", recipe, policy))
        said = "sample.prompts: my-prompts.jsonl: 6 records will be skipped (missing_offpolicy 6)"
        assert (said in caplog.text) is skipped, (policy, caplog.text)
    assert_one_line_error(
        cli("config", recipe, "on_bad_record=skip", "sample.offpolicy_fields=[answer]"),
        exact="my-prompts.jsonl: no usable prompts (skipped {'missing_offpolicy': 16})",
    )


def candidates_record(source: str = "policy", score: float | None = 1.0) -> dict:
    messages = [{"role": "user", "content": "Hi?"}]
    texts = ("Hello.", "No.")
    candidates = [{"text": text, "source": source, "seed": None, "score": score} for text in texts]
    return {"id": "q1", "messages": messages, "candidates": candidates}


# stages and settings → the input file they read (FILE in the settings), its one record, and the stage's words
INPUTS = {
    "score.candidates": (
        "stages: [score]\nscore: {scorer: python, function: wpo.tasks.reference:chrf, candidates: FILE}\n",
        "c.jsonl",
        candidates_record(source="gpt"),
        "candidates[0].source must be 'policy' or 'offpolicy:<name>', got 'gpt'",
    ),
    "the score stage's output, read by pair": (
        "stages: [pair]\npair: {length_unit: characters}\n",
        "run/score/candidates.jsonl",
        candidates_record(score=None),
        "candidates[0] has no score (run wpo score first)",
    ),
    "train.pairs": (
        "stages: [train]\ntrain: {pairs: FILE}\n",
        "p.jsonl",
        pair_record("p1", "Hi?", "Hello.", "No.") | {"weight": -1},
        "weight must be a finite number >= 0 (got -1)",
    ),
    "eval.prompts": (
        "stages: [eval]\neval: {prompts: FILE, judge: python, function: wpo.tasks.ifeval:content_preference}\n",
        "e.jsonl",
        {"id": "e1", "messages": [{"role": "user", "content": "Hi?"}]},
        "reference output field 'reference' is missing",
    ),
}


@pytest.mark.parametrize("case", list(INPUTS))
def test_config_reads_every_stages_input_with_its_reader(tmp_path, case):
    """An input set in the recipe, or an upstream output that a stage not in this run wrote, is read as its stage
    reads it: its record fails at load, with the file:line and the stage's words."""
    settings, name, record, words = INPUTS[case]
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    write_lines(path, [record])
    recipe = recipe_file(tmp_path, settings.replace("FILE", str(path)))
    for command in ("config", "run"):
        assert_one_line_error(cli(command, recipe), exact=f"{path}:1: {words}")


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
