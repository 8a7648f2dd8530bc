"""The model card says what the model was compared with (the base model or the reference outputs, by name) and gives
the held-out verdict with its confidence intervals beside the win rates."""

from __future__ import annotations

import json

import pytest
from helpers import builtin, tiny_model, write_lines

from wpo.config import load_recipe
from wpo.exporting.card import write_card
from wpo.models import load_tokenizer, resolve_model_path
from wpo.pipeline import run_pipeline

WIN_RATES = {"length_controlled_winrate": 58.8, "win_rate": 61.1, "avg_length": 160.2, "judge": "python"}
HELD_OUT = {
    "measures": ["reward", "chrf"],
    "reward_base": 0.339,
    "reward_trained": 0.455,
    "reward_delta": 0.116,
    "reward_delta_ci95": [0.045, 0.189],
    "reward_n": 120,
    "chrf_base": 31.2,
    "chrf_trained": 31.9,
    "chrf_delta": 0.7,
    "chrf_delta_ci95": [-0.9, 2.4],
    "chrf_n": 120,
    "better": False,
    "verdict": {
        "reward_up": {"rule": "reward delta CI above 0", "value": 0.045, "passed": True},
        "repetition_not_worse": {"rule": "distinct-2 delta CI low end above -0.05", "value": -0.051, "passed": False},
    },
}


def write_eval(run_dir, metrics, compare_to, base_model):
    (run_dir / "eval").mkdir(parents=True)
    (run_dir / "eval" / "metrics.json").write_text(json.dumps(metrics))
    config = {"base_model": base_model, "eval": {"compare_to": compare_to}}
    (run_dir / "eval" / "manifest.json").write_text(json.dumps({"config": config}))


def card_of(tmp_path, run_dir) -> str:
    model_dir = run_dir / "train" / "final"
    model_dir.mkdir(parents=True, exist_ok=True)
    return write_card(
        tmp_path / "README.md", name="m", run_dir=run_dir, model_dir=model_dir, report=[], license_name=None
    )


def test_a_card_compared_with_its_base_names_it_and_gives_the_verdict_with_its_cis(tmp_path):
    run_dir = tmp_path / "run"
    write_eval(run_dir, {**WIN_RATES, **HELD_OUT, "reference_generator": "SmolBase"}, "base_model", "/data/SmolBase")
    card = card_of(tmp_path, run_dir)

    assert "### Evaluation (AlpacaEval-style, vs the base model SmolBase)" in card
    assert "reference outputs" not in card and "/data" not in card
    assert "| m | 58.80 | 61.10 | 160 |" in card
    assert "Held-out measures on 120 prompts, SmolBase → this model" in card
    assert "| reward | 0.339 | 0.455 | +0.116 [+0.045, +0.189] |" in card
    assert "| chrf | 31.2 | 31.9 | +0.7 [-0.9, +2.4] |" in card
    assert "Verdict: **not better than the base** — a rule below failed." in card
    assert "- reward delta CI above 0: 0.045 (held)" in card
    assert "- distinct-2 delta CI low end above -0.05: -0.051 (failed)" in card
    assert "\n\n\n" not in card


def test_a_card_compared_with_reference_outputs_names_their_generator(tmp_path):
    run_dir = tmp_path / "run"
    write_eval(run_dir, {**WIN_RATES, "reference_generator": "gpt4_turbo"}, "reference", None)
    card = card_of(tmp_path, run_dir)

    assert "### Evaluation (AlpacaEval-style, vs the reference outputs (gpt4_turbo))" in card
    assert "Judged by wpo's `python` judge: not AlpacaEval 2's annotator" in card
    assert "Held-out measures" not in card and "Verdict" not in card


@pytest.mark.slow  # samples, trains, evaluates against the base and exports a tiny model with llama.cpp
def test_the_card_of_a_run_compared_with_its_base(tmp_path):
    base = tiny_model(
        tmp_path / "tiny-base", "llama", load_tokenizer(resolve_model_path("embedded:smollm2-135m-instruct"))
    )
    train, heldout = builtin("ifeval-train.jsonl"), builtin("ifeval-heldout.jsonl")
    run = tmp_path / "run"
    recipe = load_recipe(
        None,
        [
            f"output_dir={run}",
            "seed=5",
            f"model.name_or_path={base}",
            f"sample.prompts={write_lines(tmp_path / 'train.jsonl', train[:4])}",
            "sample.n=2",
            "sample.max_new_tokens=6",
            "sample.offpolicy_fields=[reference]",
            "score.scorer=python",
            "score.function=wpo.tasks.ifeval:reward",
            "train.learning_rate=1e-3",
            "train.per_device_batch_size=2",
            "train.max_length=160",
            "train.max_prompt_length=128",
            f"eval.prompts={write_lines(tmp_path / 'heldout.jsonl', heldout[:4])}",
            "eval.compare_to=base_model",
            "eval.reward=wpo.tasks.ifeval:reward",
            "eval.judge=python",
            "eval.function=wpo.tasks.ifeval:content_preference",
            "eval.max_new_tokens=6",
            "export.name=tiny",
            "export.quantizations=[F16]",
            "export.verify_tokens=32",
        ],
    )
    summary = run_pipeline(recipe)
    card = (run / "export" / "README.md").read_text()

    assert "### Evaluation (AlpacaEval-style, vs the base model tiny-base)" in card
    assert f"| tiny | {summary['length_controlled_winrate']:.2f} | {summary['win_rate']:.2f} |" in card
    low, high = summary["reward_delta_ci95"]
    reward = f"| reward | {summary['reward_base']:.3f} | {summary['reward_trained']:.3f} | "
    assert reward + f"{summary['reward_delta']:+.3f} [{low:+.3f}, {high:+.3f}] |" in card
    assert "Held-out measures on 4 prompts, tiny-base → this model" in card
    verdict = "better than the base** — every" if summary["better"] else "not better than the base** — a rule"
    assert f"Verdict: **{verdict}" in card
    for check in summary["verdict"].values():
        assert f"- {check['rule']}: " in card
    assert str(tmp_path) not in card
