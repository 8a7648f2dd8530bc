"""`wpo run` end to end on a tiny model: rounds of iterative on-policy WPO, eval against the base, the summary."""

from __future__ import annotations

import json

from helpers import builtin, write_lines

from wpo.config import load_recipe
from wpo.pipeline import run_pipeline


def read_json(path):
    return json.loads(path.read_text())


def policy_texts(candidates_file):
    records = [json.loads(line) for line in candidates_file.read_text().splitlines()]
    return [c["text"] for r in records for c in r["candidates"] if c["source"] == "policy"]


def test_two_rounds_sample_from_the_updated_policy_then_eval_the_last(tmp_path, tiny_llama):
    train, heldout = builtin("ifeval-train.jsonl"), builtin("ifeval-heldout.jsonl")
    run = tmp_path / "run"
    recipe = load_recipe(
        None,
        [
            f"output_dir={run}",
            "seed=5",
            "rounds=2",
            "stages=[sample, score, pair, train, eval]",
            f"model.name_or_path={tiny_llama}",
            f"sample.prompts={write_lines(tmp_path / 'train.jsonl', train[:6])}",
            "sample.n=2",
            "sample.max_new_tokens=6",
            "sample.temperature=1.0",
            "sample.offpolicy_fields=[reference]",
            "score.scorer=python",
            "score.function=wpo.tasks.ifeval:reward",
            "train.learning_rate=1e-3",
            "train.per_device_batch_size=2",
            "train.max_length=160",
            "train.max_prompt_length=128",
            "train.logging_steps=1",
            f"eval.prompts={write_lines(tmp_path / 'heldout.jsonl', heldout[:4])}",
            "eval.compare_to=base_model",
            "eval.reward=wpo.tasks.ifeval:reward",
            "eval.judge=python",
            "eval.function=wpo.tasks.ifeval:content_preference",
            "eval.max_new_tokens=6",
            "eval.temperature=1.0",
        ],
    )
    summary = run_pipeline(recipe)

    rounds = ["sample", "score", "pair", "train"]
    assert list(summary["stages"]) == [*rounds, *(f"round-2/{s}" for s in rounds), "eval"]
    assert not any(entry["skipped"] for entry in summary["stages"].values())
    round_two = run / "round-2"
    sampled_from = read_json(round_two / "sample" / "manifest.json")["config"]["model"]["name_or_path"]
    assert sampled_from == str(run / "train" / "final")
    assert policy_texts(round_two / "sample" / "candidates.jsonl") != policy_texts(run / "sample" / "candidates.jsonl")
    lineage = read_json(round_two / "train" / "final" / "wpo_training.json")
    assert (lineage["base_model"], lineage["round"], lineage["trained_from"]) == (
        str(tiny_llama),
        2,
        str(run / "train" / "final"),
    )
    assert read_json(run / "train" / "final" / "wpo_training.json")["round"] == 1

    eval_manifest = read_json(run / "eval" / "manifest.json")
    assert eval_manifest["config"]["model"] == str(round_two / "train" / "final")
    assert eval_manifest["config"]["base_model"] == str(tiny_llama)
    assert {o["generator"] for o in read_json(run / "eval" / "model_outputs.json")} == {f"{tiny_llama.name}-wpo"}
    metrics = read_json(run / "eval" / "metrics.json")
    written = read_json(run / "summary.json")
    for key in (
        "reward_base",
        "reward_trained",
        "reward_delta_ci95",
        "win_rate",
        "length_controlled_winrate",
        "chrf_delta_ci95",
        "length_chars_trained",
        "distinct_2_base",
        "better",
        "verdict",
    ):
        assert written[key] == metrics[key] == summary[key]
    assert set(written["wall_seconds"]) == set(summary["stages"]) and written["rounds"] == 2
    assert written["weights"] == read_json(round_two / "train" / "manifest.json")["weights"]  # the last round's
    assert written["weights"]["pair_visits"] > 0

    again = run_pipeline(recipe)  # everything is done under the same config: nothing runs
    assert all(entry["skipped"] for entry in again["stages"].values())
    assert again["reward_delta_ci95"] == summary["reward_delta_ci95"]
    assert again["weights"] == summary["weights"]  # read from the manifest when training is skipped
