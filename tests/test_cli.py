"""The real `wpo` command in subprocesses: exit codes, one-line errors, `wpo run` skipping finished stages."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import run_wpo, train_recipe

from wpo.config import load_recipe

ENV = {**os.environ, "WPO_LOG_LEVEL": "WARNING"}


def tiny_recipe(tmp_path, tiny_llama, pairs_file) -> str:
    return str(train_recipe(tmp_path / "tiny.yaml", tiny_llama, pairs_file, output_dir=tmp_path / "run", seed=1))


@pytest.mark.slow  # launches processes
def test_train_and_run_from_the_command_line(tmp_path, tiny_llama, pairs_file):
    recipe = tiny_recipe(tmp_path, tiny_llama, pairs_file)
    trained = run_wpo("train", recipe, "train.logging_steps=1", "--json", env=ENV)
    assert trained.returncode == 0, trained.stderr
    assert json.loads(trained.stdout)["steps"] == 2
    rows = [json.loads(line) for line in (tmp_path / "run" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]

    ran = run_wpo("run", recipe, "train.logging_steps=1", env=ENV)  # same config: the finished stage is skipped
    assert ran.returncode == 0, ran.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stages"]["train"]["skipped"] is True and summary["wall_seconds"] == {"train": 0.0}

    rerun = run_wpo("run", recipe, "train.beta=0.2", "train.resume=never", env=ENV)  # another config: it trains again
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stages"]["train"]["skipped"] is False and summary["stages"]["train"]["steps"] == 2


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ["export", "recipes/quickstart.yaml", "export.quantizations=[IQ2_XS]"],
            2,
            "wpo: error: recipes/quickstart.yaml: export.quantizations: IQ2_XS needs an importance matrix (imatrix)",
        ),
        (
            ["sample", "recipes/quickstart.yaml", "sample.prompts=null"],
            2,
            "wpo: error: recipes/quickstart.yaml: sample.prompts is required by the sample stage",
        ),
        (
            ["eval", "--annotations", "missing.json", "--json"],
            2,
            "wpo: error: no such file or directory: missing.json",
        ),
        (["eval"], 2, "wpo: error: wpo eval needs a recipe, or --annotations FILE"),
        (["chat", "missing.gguf", "--prompt", "hi"], 2, "wpo: error: GGUF file missing.gguf does not exist"),
        (
            ["train", "recipes/quickstart.yaml", "train.bta=1"],
            2,
            "wpo: error: recipes/quickstart.yaml: train.bta: unknown key; did you mean train.beta?",
        ),
        (["train", "missing.yaml"], 2, "wpo: error: recipe missing.yaml does not exist"),
        (  # the file may be on another machine: what this one lacks, apart from the recipe's mistakes
            ["train", "recipes/quickstart.yaml", "train.pairs=nowhere.jsonl", "output_dir=/tmp/wpo-cli-missing"],
            3,
            "wpo: this machine lacks: nowhere.jsonl (train.pairs): no such file or directory here",
        ),
    ],
)
def test_errors_are_one_line_with_a_nonzero_exit(args, code, message):
    result = run_wpo(*args, env=ENV, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert result.returncode == code
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("wpo")] == [result.stderr.strip()]


def test_help_lists_every_verb():
    result = run_wpo("--help", env=ENV)
    assert result.returncode == 0
    for verb in ("run", "sample", "score", "pair", "train", "eval", "export", "chat"):
        assert verb in result.stdout


def test_config_prints_the_validated_recipe_with_every_default(tmp_path):
    result = run_wpo(
        "config", "recipes/quickstart.yaml", "train.beta=0.3", "--json", env=ENV, cwd=Path(__file__).parent.parent
    )
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    assert resolved["train"]["beta"] == 0.3  # the override
    assert resolved["train"]["max_grad_norm"] == load_recipe(None, []).train.max_grad_norm  # a default filled in
    assert resolved["sample"]["n"] == 6 and set(resolved) >= {"model", "sample", "score", "pair", "train", "eval"}
    yaml_text = run_wpo("config", "recipes/quickstart.yaml", env=ENV, cwd=Path(__file__).parent.parent).stdout
    assert "beta: 0.2" in yaml_text
    bad = run_wpo("config", "recipes/quickstart.yaml", "train.bta=1", env=ENV, cwd=Path(__file__).parent.parent)
    assert bad.returncode == 2 and "train.bta: unknown key; did you mean train.beta?" in bad.stderr
