"""The README's "Your own model, prompts and reward" runs as written: its recipe, its reward module and its two
commands, in a fresh directory where `./my-model` is a tiny model and the prompts files are a user's."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest
from helpers import assert_ok, cli, write_lines

README = Path(__file__).parent.parent / "README.md"


def section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"## {title}\n")
    return text[start : text.index("\n## ", start + 1)]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


@pytest.mark.slow  # samples, trains and evaluates a tiny model through every stage
def test_your_own_model_prompts_and_reward_as_written(tmp_path, tiny_llama, monkeypatch):
    own = section("Your own model, prompts and reward")
    (recipe,), (reward,), (commands,) = blocks(own, "yaml"), blocks(own, "python"), blocks(own, "bash")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "my_reward", None)  # imported afresh from this directory, forgotten after
    del sys.modules["my_reward"]
    (tmp_path / "my-recipe.yaml").write_text(recipe)
    (tmp_path / "my_reward.py").write_text(reward)
    shutil.copytree(tiny_llama, tmp_path / "my-model")
    facts = [
        "the sun is a star",
        "water boils at one hundred degrees",
        "cats are mammals",
        "rivers flow to seas",
        "bees make honey",
        "the moon orbits the earth",
        "ice is frozen water",
        "owls hunt at night",
    ]
    records = [
        {
            "id": f"q{i}",
            "messages": [{"role": "user", "content": f"State a fact about {fact.split()[1]}."}],
            "reference": fact.capitalize() + ".",
        }
        for i, fact in enumerate(facts)
    ]
    write_lines(tmp_path / "my_prompts.jsonl", records[:6])
    write_lines(tmp_path / "my_heldout.jsonl", records[6:])

    lines = [line.split("#")[0].strip() for line in commands.splitlines() if line.startswith("wpo ")]
    assert [line.split()[1] for line in lines] == ["config", "run"]
    results = [assert_ok(cli(*shlex.split(line)[1:])) for line in lines]
    assert "stages:" in results[0].stdout and "my_reward:reward" in results[0].stdout

    run = tmp_path / "runs" / "mine"
    summary = json.loads((run / "summary.json").read_text())
    assert list(summary["stages"]) == ["sample", "score", "pair", "train", "eval"]
    assert (run / "train" / "final" / "model.safetensors").is_file()
    assert {"reward_base", "reward_trained", "identical_to_base", "win_rate"} <= set(summary)
    scored = [json.loads(line) for line in (run / "score" / "candidates.jsonl").open()]
    reference = next(c for c in scored[0]["candidates"] if c["source"] == "offpolicy:reference")
    assert reference["score"] == 1.0  # the reference uses every one of its own words

    again = json.loads(assert_ok(cli("run", "my-recipe.yaml", "--json")).stdout)
    assert all(entry["skipped"] for entry in again["stages"].values())
