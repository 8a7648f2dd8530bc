"""End to end on the real embedded SmolLM2-135M-Instruct (dequantized from its GGUF), on CPU."""

from __future__ import annotations

import json
import math

import pytest
from helpers import write_lines

from wpo.config import load_recipe
from wpo.training.metrics import read_metrics
from wpo.training.trainer import train


@pytest.mark.slow
def test_embedded_smollm2_trains_two_steps(tmp_path):
    """Step 1 has lr 0 and the policy is its own reference, so z = 0 and every pair's loss is ln 2 x its weight."""
    recipe = load_recipe(
        "recipes/quickstart.yaml",
        [
            f"output_dir={tmp_path}",
            "train.pairs=builtin:toy-pairs.jsonl",
            "train.max_steps=2",
            "train.per_device_batch_size=2",
            "train.gradient_accumulation_steps=1",
            "train.save_steps=0",
            "train.sft_weight=0",
        ],  # the plain WPO loss: the quickstart adds RPO's term, checked in test_loss
    )
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


QUESTIONS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Name a primary colour.", "Red is a primary colour."),
    ("What is 3 plus 4?", "3 plus 4 is 7."),
    ("Name a fruit.", "An apple is a fruit."),
]


def write_prompts(path, count):
    """The first `count` questions as prompts records, each with its off-policy `reference` answer."""
    records = [
        {"id": f"q{i}", "messages": [{"role": "user", "content": question}], "reference": reference}
        for i, (question, reference) in enumerate(QUESTIONS[:count])
    ]
    return write_lines(path, records)


@pytest.mark.slow
def test_llamacpp_sampler_is_seeded_per_sample(tmp_path):
    from wpo.models import resolve_model_path
    from wpo.sampling import Generation, SampleRequest
    from wpo.sampling.llamacpp_backend import LlamaCppSampler

    recipe = load_recipe(
        None,
        [
            "sample.backend=llamacpp",
            "sample.max_new_tokens=24",
            "sample.temperature=1.0",
            "sample.stop=['.']",
            "sample.threads=1",
        ],
    )
    sampler = LlamaCppSampler(
        resolve_model_path(recipe.model.name_or_path),
        recipe.model,
        Generation.for_sampling(recipe.sample, recipe.seed, recipe.output_dir),
    )
    question = [{"role": "user", "content": "Tell me a fact about the moon."}]
    requests = [SampleRequest(question, 1), SampleRequest(question, 2), SampleRequest(question, 1)]
    first = sampler.generate(requests)
    assert first[0] == first[2] and first == sampler.generate(requests)
    assert first[0] != first[1]
    assert all("." not in sample.text for sample in first)  # cut at the stop string


@pytest.mark.slow
def test_sample_score_pair_from_the_cli_on_the_embedded_model(tmp_path):
    """The data side end to end: `wpo run` with a Python reward preferring answers near 40 characters."""
    import subprocess
    import sys

    prompts = write_prompts(tmp_path / "prompts.jsonl", 2)
    (tmp_path / "near40.py").write_text("def reward(messages, text):\n    return -abs(len(text) - 40)\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"output_dir: {tmp_path / 'run'}\nseed: 2\nstages: [sample, score, pair]\n"
        f"sample: {{prompts: {prompts}, n: 2, max_new_tokens: 24, offpolicy_fields: [reference]}}\n"
        "score: {scorer: python, function: 'near40:reward'}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "wpo", "run", str(recipe)], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    scored = [json.loads(line) for line in (tmp_path / "run" / "score" / "candidates.jsonl").read_text().splitlines()]
    for record in scored:
        assert [c["source"] for c in record["candidates"]] == ["policy", "policy", "offpolicy:reference"]
        assert all(c["score"] == -abs(len(c["text"]) - 40) for c in record["candidates"])
    pairs = [json.loads(line) for line in (tmp_path / "run" / "pair" / "pairs.jsonl").read_text().splitlines()]
    stats = json.loads((tmp_path / "run" / "pair" / "stats.json").read_text())
    assert len(pairs) + sum(stats["dropped"].values()) == 2
    for pair in pairs:
        assert pair["score_chosen"] > pair["score_rejected"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert set(summary["wall_seconds"]) == {"sample", "score", "pair"}


@pytest.mark.slow
def test_whole_pipeline_chains_and_a_rerun_skips_every_stage(tmp_path):
    """sample → score → pair → train → eval on the embedded model, each stage reading the previous one's output."""
    import subprocess
    import sys

    write_prompts(tmp_path / "prompts.jsonl", 4)
    (tmp_path / "rewards.py").write_text(
        "def near40(messages, text):\n    return -abs(len(text) - 40)\n\n\n"
        "def shorter(messages, reference, output):\n    return 1.0 if len(output) < len(reference) else 0.0\n"
    )
    (tmp_path / "recipe.yaml").write_text(
        "output_dir: run\nseed: 3\nstages: [sample, score, pair, train, eval]\n"
        "sample: {prompts: prompts.jsonl, n: 2, max_new_tokens: 24, offpolicy_fields: [reference]}\n"
        "score: {scorer: python, function: 'rewards:near40'}\n"
        "train: {max_steps: 2, per_device_batch_size: 2, max_length: 128, max_prompt_length: 64, save_steps: 0}\n"
        "eval: {prompts: prompts.jsonl, judge: python, function: 'rewards:shorter', max_new_tokens: 24}\n"
    )

    def wpo_run():
        result = subprocess.run(
            [sys.executable, "-m", "wpo", "run", "recipe.yaml"], cwd=tmp_path, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        return json.loads((tmp_path / "run" / "summary.json").read_text())

    first = wpo_run()
    assert [name for name, stage in first["stages"].items() if not stage["skipped"]] == [
        "sample",
        "score",
        "pair",
        "train",
        "eval",
    ]
    pairs = (tmp_path / "run" / "pair" / "pairs.jsonl").read_text().splitlines()
    assert first["stages"]["train"]["final_metrics"]["step"] == 2 and pairs
    annotations = json.loads((tmp_path / "run" / "eval" / "annotations.json").read_text())
    assert len(annotations) == 4 and annotations[0]["generator_2"] == "smollm2-135m-instruct-wpo"
    assert first["stages"]["eval"]["metrics"]["n_total"] == 4

    again = wpo_run()
    assert all(stage["skipped"] for stage in again["stages"].values())
