"""Evaluation: pairwise judges (order randomization, un-swapping), the eval stage's files, and `wpo eval` on the CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from helpers import builtin, write_lines

from wpo.config import load_recipe
from wpo.errors import DataError, WpoError
from wpo.evaluation.judges import ApiPairwiseJudge, Comparison, judge_all, model_shown_first
from wpo.evaluation.stage import run_eval


def test_order_is_deterministic_and_balanced():
    instructions = [f"instruction {i}" for i in range(200)]
    first = [model_shown_first(text) for text in instructions]
    assert first == [model_shown_first(text) for text in instructions]
    assert 70 < sum(first) < 130


class PrefersB(BaseHTTPRequestHandler):
    """Always gives letter b probability 0.8 (and a 0.2)."""

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        top = [{"token": "b", "logprob": math.log(0.8)}, {"token": " a", "logprob": math.log(0.2)}]
        body = json.dumps(
            {"choices": [{"message": {"content": "b"}, "logprobs": {"content": [{"token": "b", "top_logprobs": top}]}}]}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_api_judge_unswaps_the_order(tmp_path):
    """A judge that always prefers (b) at 0.8: the model gets 0.8 where it was shown second, 0.2 where first."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), PrefersB)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        recipe = load_recipe(
            None, [f"eval.api={{base_url: 'http://127.0.0.1:{server.server_address[1]}/v1', model: j}}"]
        )
        items = [Comparison([{"role": "user", "content": f"task {i}"}], "reference", f"output {i}") for i in range(12)]
        preferences = ApiPairwiseJudge(recipe.eval, tmp_path).preferences(items)
    finally:
        server.shutdown()
    for item, preference in zip(items, preferences, strict=True):
        assert preference == pytest.approx(1.2 if model_shown_first(item.instruction) else 1.8)


def test_identical_outputs_are_draws_without_a_judge(tmp_path):
    recipe = load_recipe(None, ["eval.judge=python", "eval.function=nowhere:f"])  # never imported: all identical
    items = [Comparison([{"role": "user", "content": "q"}], "same", "same")]
    assert judge_all(recipe.eval, recipe.model, items, tmp_path) == ([1.5], {})


def test_reward_model_judge_is_bradley_terry(tiny_reward_model):
    """preference = 1 + σ(r(model) − r(reference)), with r computed here straight from the model."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from wpo.evaluation.judges import RewardModelPairwiseJudge

    recipe = load_recipe(None, ["eval.judge=reward_model", f"eval.reward_model={tiny_reward_model}"])
    items = [
        Comparison([{"role": "user", "content": f"Say something about {w}."}], f"{w}.", f"I like {w} a lot.")
        for w in ("the sea", "foxes")
    ]
    preferences = RewardModelPairwiseJudge(recipe.eval, recipe.model).preferences(items)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_reward_model).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_reward_model)

    def reward(messages, text):
        rendered = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": text}], tokenize=False)
        with torch.no_grad():
            ids = tokenizer(rendered, add_special_tokens=False, return_tensors="pt")["input_ids"]
            return model(input_ids=ids).logits[0, 0].item()

    for item, preference in zip(items, preferences, strict=True):
        margin = reward(item.messages, item.output) - reward(item.messages, item.reference)
        assert preference == pytest.approx(1 + 1 / (1 + math.exp(-margin)), abs=1e-5)


def eval_prompts(tmp_path, count=4):
    records = [
        {
            "id": f"e{i}",
            "messages": [{"role": "user", "content": f"Name something {word}."}],
            "reference": f"Something {word} is the {word} thing.",
        }
        for i, word in enumerate(["blue", "small", "loud", "old", "new", "warm"][:count])
    ]
    return write_lines(tmp_path / "eval.jsonl", records)


def test_eval_stage_writes_alpaca_eval_files(tmp_path, tiny_llama, monkeypatch):
    """A Python judge that prefers the shorter output: preferences are known, so every metric is."""
    (tmp_path / "shorter.py").write_text(
        "def judge(messages, reference, output):\n    return 1.0 if len(output) < len(reference) else 0.0\n"
    )
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(
        None,
        [
            f"output_dir={tmp_path / 'run'}",
            f"eval.model={tiny_llama}",
            "eval.judge=python",
            "eval.function=shorter:judge",
            f"eval.prompts={eval_prompts(tmp_path)}",
            "eval.max_new_tokens=8",
            "eval.generator_name=tiny",
        ],
    )
    result = run_eval(recipe)
    eval_dir = tmp_path / "run" / "eval"
    outputs = json.loads((eval_dir / "model_outputs.json").read_text())
    assert [set(o) for o in outputs] == [{"instruction", "output", "generator"}] * 4
    assert outputs[0]["instruction"] == "Name something blue." and outputs[0]["generator"] == "tiny"
    annotations = json.loads((eval_dir / "annotations.json").read_text())
    for annotation, output in zip(annotations, outputs, strict=True):
        assert annotation["output_2"] == output["output"] and annotation["generator_1"] == "reference"
        assert annotation["preference"] == (2.0 if len(output["output"]) < len(annotation["output_1"]) else 1.0)
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    wins = sum(a["preference"] == 2.0 for a in annotations)
    assert metrics["win_rate"] == pytest.approx(100 * wins / 4) == result["metrics"]["win_rate"]
    assert metrics["avg_length"] == pytest.approx(sum(len(o["output"]) for o in outputs) / 4)
    assert metrics["lc_formula"] == "tanh(std_delta_len) + not_gamed_baseline"
    board = (eval_dir / "leaderboard.csv").read_text().splitlines()
    assert board[0] == (
        ",win_rate,standard_error,n_wins,n_wins_base,n_draws,n_total,discrete_win_rate,mode,"
        "avg_length,length_controlled_winrate,lc_standard_error,annotator,comparable_with_leaderboard"
    )
    assert board[1].startswith("tiny,") and board[1].endswith(",python,False")  # wpo's judge: not the leaderboard's
    assert metrics["contaminated_instructions"] == 0 and metrics["contamination"]["ngram"] == 13
    assert (eval_dir / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "tiny vs the reference" in (eval_dir / "report.html").read_text()
    assert json.loads((eval_dir / "manifest.json").read_text())["completed"]


def test_the_evaluation_page_shows_every_figure_and_row_escaped(tmp_path):
    """eval/report.html: the headline as the run's page writes figures, the leaderboard row by row (a missing figure a
    dash), every instruction's preference; markup in a model's name or an instruction stays text; no script at all."""
    from wpo.evaluation.leaderboard import update_leaderboard, write_report

    hostile = "<script>alert(1)</script>"
    metrics = {"win_rate": 62.5, "standard_error": 12.34567, "n_total": 4, "length_controlled_winrate": 55.0}
    metrics["avg_length"] = 8.0  # the older row has none: it is left out of the plot, a dash in the table
    update_leaderboard(tmp_path / "board.csv", "older", {"win_rate": 40.0, "length_controlled_winrate": 41.0})
    board = update_leaderboard(tmp_path / "board.csv", f"tiny{hostile}", metrics)
    annotations = [
        {"instruction": f"Say {hostile}", "preference": 2.0, "output_1": "ref", "output_2": "a model answer"},
        {"instruction": "x" * 300, "preference": 1.25, "output_1": "reference!", "output_2": "no"},
    ]
    write_report(tmp_path, board, metrics, annotations, f"tiny{hostile}")
    page = (tmp_path / "report.html").read_text()

    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert "<script" not in page and "script-src" not in page and "default-src &#39;none&#39;" in page
    assert f"<h1>tiny{escaped} vs the reference</h1>" in page
    for key, shown in (("length_controlled_winrate", "55"), ("win_rate", "62.5"), ("standard_error", "12.35")):
        assert f"<tr><td>{key}</td><td>{shown}</td></tr>" in page
    assert "<tr><td>win rate 95% CI (± 1.96 SE)</td><td>[38.3, 86.7]</td></tr>" in page  # 62.5 ± 1.96 · 12.35
    rows = page[page.index("<h2>Leaderboard</h2>") : page.index("<h2>Per instruction</h2>")]
    assert rows.index(f"<b>tiny{escaped}</b>") < rows.index("<td>older</td>")  # by LC win rate, this model in bold
    assert "<td>older</td><td>40</td><td>—</td>" in rows  # win rate, then its missing standard error
    instructions = page[page.index("<h2>Per instruction</h2>") :]
    assert f"<td>Say {escaped}</td><td>2.000</td>" in instructions
    assert f"<td>{'x' * 199}…</td><td>1.250</td>" in instructions
    assert "<td>14</td><td>3</td>" in instructions and "<td>2</td><td>10</td>" in instructions


def test_eval_reads_an_alpaca_eval_reference_outputs_file(tmp_path, tiny_llama, monkeypatch):
    """alpaca_eval's format (instruction, output = the reference, generator) works as the eval set as it is."""
    (tmp_path / "always.py").write_text("def judge(messages, reference, output):\n    return 0.25\n")
    monkeypatch.chdir(tmp_path)
    references = tmp_path / "gpt4_turbo_outputs.json"
    references.write_text(
        json.dumps(
            [
                {
                    "instruction": "Name something blue.",
                    "output": "The sky is blue.",
                    "generator": "gpt4_turbo",
                    "dataset": "helpful_base",
                },
                {
                    "instruction": "Name something old.",
                    "output": "The pyramids are old.",
                    "generator": "gpt4_turbo",
                    "dataset": "koala",
                },
            ]
        )
    )
    recipe = load_recipe(
        None,
        [
            f"output_dir={tmp_path / 'run'}",
            f"eval.model={tiny_llama}",
            "eval.judge=python",
            "eval.function=always:judge",
            f"eval.prompts={references}",
            "eval.max_new_tokens=4",
        ],
    )
    result = run_eval(recipe)
    annotations = json.loads((tmp_path / "run" / "eval" / "annotations.json").read_text())
    assert [a["output_1"] for a in annotations] == ["The sky is blue.", "The pyramids are old."]
    assert {a["generator_1"] for a in annotations} == {"gpt4_turbo"}
    assert [a["instruction"] for a in annotations] == ["Name something blue.", "Name something old."]
    assert result["metrics"]["win_rate"] == pytest.approx(25.0)


def test_eval_annotations_json_on_the_cli(tmp_path):
    """Preferences 2, 1, 1.5, 1.75 (see test_eval_metrics): WR 56.25, discrete 62.5, 2 wins, 1 draw, 4 total."""
    annotations = [
        {
            "instruction": f"i{k}",
            "output_1": "r" * 10,
            "output_2": "m" * length,
            "generator_1": "ref",
            "generator_2": "mine",
            "preference": pref,
        }
        for k, (pref, length) in enumerate([(2.0, 12), (1.0, 8), (1.5, 10), (1.75, 14)])
    ]
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(annotations))
    env = {**os.environ, "WPO_LOG_LEVEL": "WARNING"}
    result = subprocess.run(
        [sys.executable, "-m", "wpo", "eval", "--annotations", str(path), "--json"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["win_rate"] == pytest.approx(56.25) and out["discrete_win_rate"] == pytest.approx(62.5)
    assert (out["n_wins"], out["n_draws"], out["n_total"]) == (2, 1, 4)
    assert out["avg_length"] == pytest.approx(11.0)
    assert 0 <= out["length_controlled_winrate"] <= 100 and out["generator"] == "mine"
    for key in ("standard_error", "length_controlled_winrate"):
        assert key in out

    annotations[1]["preference"] = 2.5
    path.write_text(json.dumps(annotations))
    bad = subprocess.run(
        [sys.executable, "-m", "wpo", "eval", "--annotations", str(path)], capture_output=True, text=True, env=env
    )
    assert bad.returncode == 2
    assert "annotations.json:item 1: preference must lie in [1, 2], got 2.5" in bad.stderr


@pytest.mark.slow
def test_eval_offline_on_the_embedded_model_with_a_local_judge(tmp_path, llama_server, monkeypatch):
    """`wpo eval` fully offline: SmolLM2 answers, SmolLM2 on llama.cpp's server judges (a/b constrained)."""
    from helpers import PLANTED_KEY

    monkeypatch.setenv("WPO_JUDGE_KEY", PLANTED_KEY)
    recipe = tmp_path / "eval.yaml"
    recipe.write_text(
        f"output_dir: {tmp_path / 'run'}\nstages: [eval]\n"
        f"eval:\n  prompts: {eval_prompts(tmp_path, 3)}\n  max_new_tokens: 24\n"
        f"  api: {{base_url: '{llama_server}', model: smollm2, api_key_env: WPO_JUDGE_KEY, "
        'extra_body: {grammar: \'root ::= "a" | "b"\'}}\n'
    )
    env = {**os.environ, "WPO_LOG_LEVEL": "WARNING"}
    result = subprocess.run([sys.executable, "-m", "wpo", "eval", str(recipe)], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    for label in ("LC win rate", "win rate", "avg length"):
        assert label in result.stdout
    annotations = json.loads((tmp_path / "run" / "eval" / "annotations.json").read_text())
    assert len(annotations) == 3 and all(1.0 <= a["preference"] <= 2.0 for a in annotations)
    assert annotations[0]["generator_2"] == "smollm2-135m-instruct"


def test_eval_against_the_base_model_with_a_programmatic_reward(tmp_path, tiny_llama, tiny_llama_reference):
    """compare_to: base_model generates the base's outputs as the baseline; eval.reward scores both sides per prompt
    and reports means with bootstrap intervals — every figure recomputed here from the files."""
    from sacrebleu.metrics import CHRF

    from wpo.evaluation.measures import distinct_2
    from wpo.evaluation.metrics import bootstrap_mean_ci
    from wpo.tasks import ifeval

    heldout = builtin("ifeval-heldout.jsonl")
    prompts = write_lines(tmp_path / "heldout.jsonl", heldout[:5])
    recipe = load_recipe(
        None,
        [
            f"output_dir={tmp_path / 'run'}",
            "seed=3",
            f"model.name_or_path={tiny_llama}",
            f"eval.model={tiny_llama_reference}",
            f"eval.prompts={prompts}",
            "eval.compare_to=base_model",
            "eval.reward=wpo.tasks.ifeval:reward",
            "eval.measures={constraint_accuracy: wpo.tasks.ifeval:constraint_accuracy}",
            "eval.judge=python",
            "eval.function=wpo.tasks.ifeval:content_preference",
            "eval.max_new_tokens=12",
            "eval.temperature=1.0",
        ],
    )
    metrics = run_eval(recipe)["metrics"]
    eval_dir = tmp_path / "run" / "eval"
    base = json.loads((eval_dir / "base_outputs.json").read_text())
    trained = json.loads((eval_dir / "model_outputs.json").read_text())
    assert {o["generator"] for o in base} == {tiny_llama.name}
    assert {o["generator"] for o in trained} == {tiny_llama_reference.name}
    assert [o["output"] for o in base] != [o["output"] for o in trained]  # two different models really ran

    annotations = json.loads((eval_dir / "annotations.json").read_text())
    rows = [json.loads(line) for line in (eval_dir / "measures.jsonl").read_text().splitlines()]
    for record, b, t, a, r in zip(heldout[:5], base, trained, annotations, rows, strict=True):
        assert (a["output_1"], a["output_2"], a["generator_1"]) == (b["output"], t["output"], tiny_llama.name)
        expected = (
            1.5
            if b["output"] == t["output"]
            else 1 + ifeval.content_preference(record["messages"], b["output"], t["output"])
        )
        assert a["preference"] == expected
        measured = {}
        for side, text in (("base", b["output"]), ("trained", t["output"])):
            measured |= {
                f"reward_{side}": ifeval.reward(record["messages"], text),
                f"constraint_accuracy_{side}": ifeval.constraint_accuracy(record["messages"], text),
                f"chrf_{side}": CHRF().sentence_score(text, [record["reference"]]).score,
                f"length_chars_{side}": len(text),
                f"distinct_2_{side}": distinct_2(text),
            }
        assert r == {
            "id": record["id"],
            "constraint": record["constraint"],
            **measured,
            "prompt": record["messages"][-1]["content"],
            "reference": record["reference"],
            "base_output": b["output"],
            "output": t["output"],
        }
    assert metrics["measures"] == ["reward", "constraint_accuracy", "chrf", "length_chars", "distinct_2"]
    for name in metrics["measures"]:
        deltas = [r[f"{name}_trained"] - r[f"{name}_base"] for r in rows]
        assert metrics[f"{name}_base"] == pytest.approx(sum(r[f"{name}_base"] for r in rows) / 5)
        assert metrics[f"{name}_delta"] == pytest.approx(sum(deltas) / 5)
        assert metrics[f"{name}_delta_ci95"] == bootstrap_mean_ci(deltas, seed=3)
    assert set(metrics["verdict"]) == {
        "reward_up",
        "constraint_accuracy_up",
        "content_not_worse",
        "length_not_collapsed",
        "repetition_not_worse",
    }
    assert metrics["better"] == all(check["passed"] for check in metrics["verdict"].values())
    side_by_side = (eval_dir / "side_by_side.md").read_text()
    assert all(
        record["id"] in side_by_side and b["output"] in side_by_side
        for record, b in zip(heldout[:5], base, strict=True)
    )
    assert metrics["reference_generator"] == tiny_llama.name
    assert json.loads((eval_dir / "metrics.json").read_text())["reward_trained_ci95"] == metrics["reward_trained_ci95"]


def test_a_non_finite_eval_reward_names_the_prompt(tmp_path, tiny_llama, tiny_llama_reference, monkeypatch):
    (tmp_path / "nan_reward.py").write_text("def reward(messages, text):\n    return float('inf')\n")
    monkeypatch.chdir(tmp_path)
    prompts = write_lines(
        tmp_path / "prompts.jsonl", [{"id": f"p{i}", "messages": [{"role": "user", "content": "Hi"}]} for i in (1, 2)]
    )
    recipe = load_recipe(
        None,
        [
            f"output_dir={tmp_path / 'run'}",
            f"model.name_or_path={tiny_llama}",
            f"eval.model={tiny_llama_reference}",
            f"eval.prompts={prompts}",
            "eval.compare_to=base_model",
            "eval.reward=nan_reward:reward",
            "eval.judge=python",
            "eval.function=wpo.tasks.ifeval:content_preference",
            "eval.max_new_tokens=4",
        ],
    )
    with pytest.raises(WpoError, match=r"eval measure reward gave inf for the prompt 'p1'; expected a finite number"):
        run_eval(recipe)
    assert not (tmp_path / "run" / "eval" / "measures.jsonl").exists()


def test_instruction_difficulties_are_matched_by_instruction_not_by_row(tmp_path, tiny_llama, monkeypatch):
    """AlpacaEval's difficulty file in another order than the eval set: each instruction still gets its own value."""
    from wpo.evaluation.stage import metrics_from_annotations

    (tmp_path / "shorter.py").write_text(
        "def judge(messages, reference, output):\n    return 1.0 if len(output) < len(reference) else 0.0\n"
    )
    monkeypatch.chdir(tmp_path)
    prompts = eval_prompts(tmp_path)
    instructions = [json.loads(line)["messages"][-1]["content"] for line in prompts.read_text().splitlines()]
    difficulty = {text: float(i) - 1.5 for i, text in enumerate(instructions)}
    shuffled = tmp_path / "difficulty.csv"
    shuffled.write_text(
        "instruction,instruction_difficulty\n"
        + "".join(f'"{text}",{difficulty[text]}\n' for text in reversed(instructions))
    )
    settings = [
        f"output_dir={tmp_path / 'run'}",
        f"eval.model={tiny_llama}",
        "eval.judge=python",
        "eval.function=shorter:judge",
        f"eval.prompts={prompts}",
        "eval.max_new_tokens=8",
    ]
    metrics = run_eval(load_recipe(None, [*settings, f"eval.instruction_difficulty={shuffled}"]))["metrics"]
    annotations = json.loads((tmp_path / "run" / "eval" / "annotations.json").read_text())
    expected = metrics_from_annotations(annotations, np.array([difficulty[text] for text in instructions]))
    assert metrics["lc_formula"].startswith("tanh(std_delta_len) + instruction_difficulty")
    assert metrics["length_controlled_winrate"] == expected["length_controlled_winrate"]

    partial = tmp_path / "partial.csv"
    partial.write_text(f'instruction,instruction_difficulty\n"{instructions[0]}",0.5\n')
    with pytest.raises(DataError, match=r"partial.csv: no difficulty for 3 of 4 eval instructions, e.g. "):
        run_eval(load_recipe(None, [*settings, f"eval.instruction_difficulty={partial}", "eval.generator_name=b"]))
