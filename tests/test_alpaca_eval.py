"""`eval.judge: alpaca_eval` against the alpaca_eval package itself: the same outputs and the same judge server give
the same prompts, the same per-instruction preferences and the same WR and LC as `alpaca_eval evaluate`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import assert_one_line_error, cli
from judge_server import FakeJudge

from wpo.config import load_recipe
from wpo.evaluation.judges import Comparison, judge_all
from wpo.evaluation.stage import _difficulty_inputs, metrics_from_annotations

ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"
JUDGE_MODEL = "gpt-4-1106-preview"
COUNT = 24

# alpaca_eval's own run, in a process of its own (its OpenAI client reads OPENAI_API_BASE when imported); the
# length-controlled fit's precomputed rows come from the file given instead of the hub (no network in tests), and
# nothing is cached or written inside the package.
ALPACA_EVAL_ITSELF = """
import json, sys
import alpaca_eval.metrics.glm_winrate as glm
glm.hf_hub_download = lambda **kwargs: sys.argv[1]
from alpaca_eval.main import evaluate
board, annotations = evaluate(
    model_outputs=json.load(open(sys.argv[2])), reference_outputs=json.load(open(sys.argv[3])),
    annotators_config=sys.argv[4], output_path=None, is_return_instead_of_print=True,
    caching_path=None, metric_kwargs={"save_weights_dir": None},
    precomputed_leaderboard=None,
)
row = board.loc["wpo-model"]
print(json.dumps({"win_rate": row["win_rate"], "length_controlled_winrate": row["length_controlled_winrate"],
                  "annotations": [{k: a[k] for k in ("instruction", "preference")} for a in annotations]}))
"""


def eval_set(tmp_path: Path):
    """Distinct instructions and outputs of varied lengths, the difficulty CSV wpo reads and the `df_gamed.csv` of
    the same numbers that alpaca_eval's LC fit downloads (first rows: one per instruction, in order)."""
    rng = np.random.default_rng(0)
    instructions = [f"Instruction {i}: explain topic {i} in a few words." for i in range(COUNT)]
    references = [f"Reference answer {i}. " + "detail " * int(rng.integers(1, 30)) for i in range(COUNT)]
    outputs = [f"Model answer {i}. " + "more " * int(rng.integers(1, 30)) for i in range(COUNT)]
    difficulty = rng.normal(size=COUNT)
    gamed = pd.DataFrame(
        [
            {
                "model": model,
                "index": i,
                "instruction_difficulty": difficulty[i],
                "preference": float(rng.uniform(0.05, 0.95)),
                "std_delta_len": float(rng.normal() + shift),
                "not_gamed_baseline": False,
            }
            for model, shift in (("gamed_short", -1.0), ("gamed_long", 1.0))
            for i in range(COUNT)
        ]
    )
    gamed.to_csv(tmp_path / "df_gamed.csv", index=False)
    gamed.drop(columns=["model", "index"]).to_csv(tmp_path / "gamed.csv", index=False)
    pd.DataFrame({"instruction": instructions, "instruction_difficulty": difficulty}).to_csv(
        tmp_path / "difficulty.csv", index=False
    )
    return instructions, references, outputs


def wpo_recipe(tmp_path: Path, url: str, *overrides: str):
    return load_recipe(
        None,
        [
            f"output_dir={tmp_path / 'run'}",
            "eval.judge=alpaca_eval",
            f"eval.annotator={ANNOTATOR}",
            f'eval.api={{"base_url": "{url}", "model": "{JUDGE_MODEL}"}}',
            f"eval.instruction_difficulty={tmp_path / 'difficulty.csv'}",
            f"eval.gamed_baselines={tmp_path / 'gamed.csv'}",
            *overrides,
        ],
    )


def sent(server: FakeJudge) -> list[tuple[str, dict]]:
    """What a server was asked: each request's messages and completion settings, sorted."""
    settings = ("model", "max_tokens", "temperature", "top_p", "logprobs", "top_logprobs")
    return sorted((json.dumps(body["messages"]), {k: body.get(k) for k in settings}) for body in server.bodies)


@pytest.mark.slow  # launches a process (alpaca_eval's own evaluate)
def test_wpo_judges_by_alpaca_evals_own_protocol(tmp_path):
    instructions, references, outputs = eval_set(tmp_path)
    model_file = tmp_path / "model_outputs.json"
    reference_file = tmp_path / "reference_outputs.json"
    model_file.write_text(
        json.dumps([{"instruction": i, "output": o, "generator": "wpo-model"} for i, o in zip(instructions, outputs)])
    )
    reference_file.write_text(
        json.dumps(
            [{"instruction": i, "output": r, "generator": "gpt4_turbo"} for i, r in zip(instructions, references)]
        )
    )

    with FakeJudge() as server:
        env = {**os.environ, "OPENAI_API_BASE": server.url, "OPENAI_API_KEY": "sk-test", "IS_ALPACA_EVAL_2": "True"}
        ran = subprocess.run(
            [
                sys.executable,
                "-c",
                ALPACA_EVAL_ITSELF,
                str(tmp_path / "df_gamed.csv"),
                str(model_file),
                str(reference_file),
                ANNOTATOR,
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert ran.returncode == 0, ran.stderr[-3000:]
        itself = json.loads(ran.stdout.strip().splitlines()[-1])
        asked_by_alpaca_eval = sent(server)

    with FakeJudge() as server:
        recipe = wpo_recipe(tmp_path, server.url)
        comparisons = [
            Comparison([{"role": "user", "content": i}], r, o) for i, r, o in zip(instructions, references, outputs)
        ]
        preferences, usage = judge_all(recipe.eval, recipe.model, comparisons, tmp_path / "run")
        asked_by_wpo = sent(server)
    assert asked_by_wpo == asked_by_alpaca_eval
    assert len(asked_by_wpo) == COUNT and usage["requests"] == COUNT

    theirs = {a["instruction"]: a["preference"] for a in itself["annotations"]}
    assert preferences == pytest.approx([theirs[i] for i in instructions], abs=1e-6)
    assert len({round(p, 3) for p in preferences}) > 5  # weighted, varied: not a constant that would agree anyway
    annotations = [
        {"instruction": i, "output_1": r, "output_2": o, "preference": p}
        for i, r, o, p in zip(instructions, references, outputs, preferences)
    ]
    ours = metrics_from_annotations(annotations, *_difficulty_inputs(recipe.eval, instructions))
    assert ours["win_rate"] == pytest.approx(itself["win_rate"], abs=0.01)
    assert ours["length_controlled_winrate"] == pytest.approx(itself["length_controlled_winrate"], abs=0.01)

    with FakeJudge() as server:  # a rerun asks nothing: wpo's answer cache holds the judge's answers
        rerun = wpo_recipe(tmp_path, server.url)
        again, usage = judge_all(rerun.eval, rerun.model, comparisons, tmp_path / "run")
        assert again == preferences and server.received == 0 and usage["requests"] == 0


def test_the_files_name_the_annotator_and_whether_it_is_the_leaderboards(tmp_path):
    from wpo.evaluation.alpaca_eval_protocol import comparability
    from wpo.exporting.card import judged_by

    recipe = wpo_recipe(tmp_path, "http://127.0.0.1:9/v1")
    same = comparability(recipe.eval, 805, "gpt4_turbo")
    assert same == {
        "annotator": ANNOTATOR,
        "annotator_model": JUDGE_MODEL,
        "judged_by": JUDGE_MODEL,
        "comparable_with_leaderboard": True,
        "not_comparable_because": [],
    }
    local = wpo_recipe(tmp_path, "http://127.0.0.1:9/v1", 'eval.api.model="llama-3-70b"')
    other = comparability(local.eval, 120, "reference")
    assert other["not_comparable_because"] == [
        f"judged by llama-3-70b, not the annotator's {JUDGE_MODEL}",
        "120 instructions, not AlpacaEval's 805",
        "against reference's outputs, not AlpacaEval 2's gpt4_turbo",
    ]
    assert judged_by({"alpaca_eval": same}) == (
        f"Judged by alpaca_eval's annotator `{ANNOTATOR}` (AlpacaEval 2's protocol) with {JUDGE_MODEL}: comparable "
        "with the public AlpacaEval 2 leaderboard."
    )
    assert "not comparable with the public AlpacaEval 2 leaderboard: judged by llama-3-70b" in judged_by(
        {"alpaca_eval": other}
    )
    assert judged_by({"judge": "python", "reference_generator": "reference"}) == (  # the heading names the baseline
        "Judged by wpo's `python` judge: not AlpacaEval 2's annotator, so not comparable with its leaderboard."
    )


def test_an_unknown_annotator_is_one_line_at_load(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"output_dir: {tmp_path / 'run'}\nstages: [eval]\n"
        "model: {name_or_path: embedded:smollm2-135m-instruct}\n"
        "eval: {prompts: builtin:ifeval-heldout.jsonl, judge: alpaca_eval, annotator: weighted_gpt5, "
        "api: {base_url: 'http://127.0.0.1:9/v1', model: m}}\n"
    )
    assert_one_line_error(
        cli("config", recipe),
        f"{recipe}: eval.annotator: 'weighted_gpt5' is not an annotator shipped with alpaca_eval nor a configs.yaml "
        "path; weighted ones: ",
        "weighted_alpaca_eval_gpt4_turbo",
    )
