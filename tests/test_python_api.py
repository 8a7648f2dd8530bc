"""`import wpo` as a notebook user would: load, override and run stages from Python; errors are WpoErrors with the
CLI's messages; the loss example in docs/python-api.md runs as written."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import write_lines

import wpo

DOCS = Path(__file__).parent.parent / "docs" / "python-api.md"


def test_import_is_light_and_the_api_is_declared():
    code = "import sys, wpo; print('torch' in sys.modules, sorted(wpo.__all__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("False")
    for name in (
        "load_recipe",
        "Recipe",
        "run",
        "sample",
        "score",
        "pair",
        "train",
        "evaluate",
        "export",
        "WpoError",
        "loss",
    ):
        assert name in wpo.__all__ and hasattr(wpo, name)


def test_stages_from_python_with_a_mapping_and_overrides(tmp_path, tiny_llama):
    prompts = write_lines(
        tmp_path / "prompts.jsonl",
        [
            {
                "id": f"p{i}",
                "messages": [{"role": "user", "content": f"Count to {i}."}],
                "reference": f"1 to {i}, done.",
            }
            for i in range(4)
        ],
    )
    (tmp_path / "longer.py").write_text("def reward(messages, text):\n    return float(len(text))\n")
    sys.path.insert(0, str(tmp_path))
    try:
        recipe = wpo.load_recipe(
            {
                "output_dir": str(tmp_path / "run"),
                "seed": 3,
                "model": {"name_or_path": str(tiny_llama)},
                "sample": {"prompts": str(prompts), "n": 2, "max_new_tokens": 6, "offpolicy_fields": ["reference"]},
                "score": {"scorer": "python", "function": "longer:reward"},
                "pair": {"length_unit": "characters"},
                "train": {"per_device_batch_size": 2, "max_length": 96, "max_prompt_length": 48},
            },
            ["train.max_steps=2", "train.learning_rate=1e-3"],
        )
        assert isinstance(recipe, wpo.Recipe) and recipe.train.max_steps == 2
        assert wpo.sample(recipe)["counts"]["written"] == 4
        assert wpo.score(recipe)["counts"]["written"] == 4
        assert wpo.pair(recipe)["stats"]["pairs"] == 4
        trained = wpo.train(recipe)
    finally:
        sys.path.remove(str(tmp_path))
    assert trained["steps"] == 2 and Path(trained["final_dir"]).is_dir()
    summary = wpo.run(recipe, stages=["sample", "score", "pair", "train"])  # every stage is done: all skipped
    assert all(entry["skipped"] for entry in summary["stages"].values())
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["stages"].keys() == summary["stages"].keys()


def test_errors_are_wpo_errors_with_the_clis_message():
    with pytest.raises(wpo.ConfigError, match=r"\(mapping\): train.bta: unknown key; did you mean train.beta\?"):
        wpo.load_recipe({"train": {"bta": 0.1}})
    with pytest.raises(wpo.WpoError, match=r"sample.prompts is required"):
        wpo.sample({"output_dir": "/nonexistent/never-written"})


def test_the_loss_example_in_the_docs_trains(capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
    example = next(block for block in blocks if "preference_loss" in block)
    namespace: dict = {}
    exec(compile(example, str(DOCS), "exec"), namespace)  # noqa: S102 - our own documentation, run as written
    losses = namespace["losses"]
    assert len(losses) == 5 and losses[-1] < losses[0]
    assert "step 4: loss" in capsys.readouterr().out
