"""End to end on the real embedded SmolLM2-135M-Instruct (dequantized from its GGUF), on CPU."""

from __future__ import annotations

import json
import math

import pytest

from wpo.config import load_recipe
from wpo.train.metrics import read_metrics
from wpo.train.trainer import train


@pytest.mark.slow
def test_embedded_smollm2_trains_two_steps(tmp_path):
    """Step 1 has lr 0 and the policy is its own reference, so z = 0 and every pair's loss is ln 2 x its weight."""
    recipe = load_recipe(
        "recipes/quickstart.yaml",
        [f"output_dir={tmp_path}", "train.max_steps=2", "train.per_device_batch_size=2",
         "train.gradient_accumulation_steps=1", "train.save_steps=0"],
    )  # fmt: skip
    result = train(recipe)
    rows = read_metrics(tmp_path / "train" / "metrics.jsonl")
    first, second = rows
    assert first["learning_rate"] == 0.0 and second["learning_rate"] > 0.0
    assert first["loss"] == pytest.approx(math.log(2.0) * first["weight_mean"], rel=1e-5)
    assert first["reward_margin"] == pytest.approx(0.0, abs=1e-4)
    assert 0.0 < first["weight_min"] <= first["weight_max"] <= 1.0
    assert first["logps_chosen"] < 0 and first["tokens_per_second"] > 0
    trained = json.loads((result.final_dir / "wpo_training.json").read_text())
    assert trained["base_model"] == "embedded:smollm2-135m-instruct"
    assert (result.final_dir / "model.safetensors").stat().st_size > 100_000_000

    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(result.final_dir)
    assert reloaded.config.model_type == "llama"
