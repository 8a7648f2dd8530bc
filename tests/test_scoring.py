"""Scoring: a Python reward, a tiny seq-classification reward model, and a real judge on llama.cpp's server."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from helpers import PLANTED_KEY, write_lines

from wpo.config import load_recipe
from wpo.errors import ConfigError, DataError, WpoError
from wpo.scoring import ScoreRequest
from wpo.scoring.judge import JudgeScorer, score_from_answer
from wpo.scoring.stage import run_score


def candidates_file(tmp_path: Path) -> Path:
    records = [
        {
            "id": f"q{i}",
            "messages": [{"role": "user", "content": f"Say something about {topic}."}],
            "extra": i,
            "candidates": [
                {"text": text, "source": source, "seed": None, "score": None, "scores": None}
                for text, source in (
                    (f"{topic} is fine.", "policy"),
                    (f"I like {topic} a lot.", "policy"),
                    ("No.", "offpolicy:reference"),
                )
            ],
        }
        for i, topic in enumerate(["the sea", "Paris", "foxes"])
    ]
    return write_lines(tmp_path / "candidates.jsonl", records)


def score_recipe(tmp_path, source, *overrides):
    return load_recipe(None, [f"output_dir={tmp_path / 'run'}", f"score.candidates={source}", *overrides])


def read_scored(tmp_path):
    return [json.loads(line) for line in (tmp_path / "run" / "score" / "candidates.jsonl").read_text().splitlines()]


def test_python_scorer_fills_every_candidate(tmp_path, monkeypatch):
    (tmp_path / "length_reward.py").write_text("def reward(messages, text):\n    return len(text) / 10\n")
    monkeypatch.chdir(tmp_path)
    result = run_score(
        score_recipe(tmp_path, candidates_file(tmp_path), "score.scorer=python", "score.function=length_reward:reward")
    )
    records = read_scored(tmp_path)
    assert [c["score"] for c in records[1]["candidates"]] == [
        len("Paris is fine.") / 10,
        len("I like Paris a lot.") / 10,
        0.3,
    ]
    assert records[1]["extra"] == 1  # extra fields ride along
    assert result["counts"]["candidates_scored"] == 9 and result["counts"]["written"] == 3


def test_non_finite_scores_name_the_candidate(tmp_path, monkeypatch):
    (tmp_path / "bad_reward.py").write_text(
        "def reward(messages, text):\n    return float('nan') if 'lot' in text else 1.0\n"
    )
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        DataError, match=r"candidates.jsonl:1: candidate 1 of 'q0' got score nan; scores must be finite"
    ):
        run_score(
            score_recipe(tmp_path, candidates_file(tmp_path), "score.scorer=python", "score.function=bad_reward:reward")
        )
    with pytest.raises(ConfigError, match=r"score.function: cannot import 'nowhere'"):
        run_score(score_recipe(tmp_path, candidates_file(tmp_path), "score.scorer=python", "score.function=nowhere:f"))
    with pytest.raises(ConfigError, match=r"score.function is required by score.scorer: python"):
        run_score(score_recipe(tmp_path, candidates_file(tmp_path), "score.scorer=python"))


def test_reward_model_scores_match_one_at_a_time(tmp_path, tiny_reward_model):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run_score(
        score_recipe(tmp_path, candidates_file(tmp_path), f"score.model={tiny_reward_model}", "score.batch_size=4")
    )
    records = read_scored(tmp_path)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_reward_model).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_reward_model)
    for record in records:
        for candidate in record["candidates"]:
            conversation = record["messages"] + [{"role": "assistant", "content": candidate["text"]}]
            ids = tokenizer(
                tokenizer.apply_chat_template(conversation, tokenize=False),
                add_special_tokens=False,
                return_tensors="pt",
            )["input_ids"]
            with torch.no_grad():
                expected = model(input_ids=ids).logits[0, 0].item()
            assert candidate["score"] == pytest.approx(expected, abs=1e-5)

    truncating = run_score(
        score_recipe(tmp_path, candidates_file(tmp_path), f"score.model={tiny_reward_model}", "score.max_length=12")
    )
    assert truncating["counts"]["truncated"] == 9


def test_remote_code_reward_model_needs_consent(tmp_path):
    (tmp_path / "rm").mkdir()
    (tmp_path / "rm" / "config.json").write_text(
        json.dumps({"model_type": "armo-rm", "auto_map": {"AutoConfig": "configuration_armo.ArmoConfig"}})
    )
    (tmp_path / "rm" / "model.safetensors").write_bytes(b"")
    with pytest.raises(
        WpoError, match=r"needs its own code \(e.g. ArmoRM's gating head\); set model.trust_remote_code"
    ):
        run_score(score_recipe(tmp_path, candidates_file(tmp_path), f"score.model={tmp_path / 'rm'}"))


@pytest.mark.slow  # starts llama.cpp's server on the real SmolLM2
def test_judge_scores_against_a_real_local_server(tmp_path, llama_server, monkeypatch):
    monkeypatch.setenv("WPO_JUDGE_KEY", PLANTED_KEY)
    judge = (
        f"score.judge={{base_url: '{llama_server}', model: smollm2, api_key_env: WPO_JUDGE_KEY, "
        "extra_body: {grammar: 'root ::= [0-9]'}}"
    )  # a 135M judge needs the constraint to answer a digit
    recipe = score_recipe(tmp_path, candidates_file(tmp_path), "score.scorer=judge", judge)
    first = run_score(recipe)
    scores = [c["score"] for r in read_scored(tmp_path) for c in r["candidates"]]
    assert len(scores) == 9 and all(0.0 <= s <= 9.0 for s in scores)
    assert first["counts"]["judge_requests"] == first["counts"]["judge_completions"] == 9
    assert first["counts"]["judge_prompt_tokens"] > 9 * 20 and 9 <= first["counts"]["judge_completion_tokens"] <= 18
    cache = (tmp_path / "run" / "score" / "judge_cache.jsonl").read_text().splitlines()
    assert len(cache) == 9

    (tmp_path / "run" / "score" / "manifest.json").unlink()
    again = run_score(recipe)  # every answer is on disk: the judge is not asked again
    assert again["counts"]["judge_requests"] == 0 and again["counts"]["judge_cache_hits"] == 9
    assert [c["score"] for r in read_scored(tmp_path) for c in r["candidates"]] == scores
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file():
            assert PLANTED_KEY not in path.read_text(errors="replace"), path

    monkeypatch.setenv("WPO_JUDGE_KEY", "wrong-key")
    with pytest.raises(WpoError, match=r"score.judge at .* refused the API key \(HTTP 401\): check WPO_JUDGE_KEY"):
        JudgeScorer(recipe.score.judge, tmp_path / "other").score(
            [ScoreRequest([{"role": "user", "content": "q"}], "a")]
        )


class FlakyJudge(BaseHTTPRequestHandler):
    """Fails `failures` times with 503, then answers '7' with top logprobs of 7 (p=0.75) and 3 (p=0.25)."""

    failures = 0
    seen = 0

    def do_POST(self):  # noqa: N802 - http.server's naming
        type(self).seen += 1
        self.rfile.read(int(self.headers["Content-Length"]))
        if type(self).seen <= type(self).failures:
            self.send_response(503)
            self.send_header("Retry-After", "0.01")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = {
            "choices": [
                {
                    "message": {"content": "7"},
                    "logprobs": {
                        "content": [
                            {
                                "token": "7",
                                "top_logprobs": [
                                    {"token": "7", "logprob": -0.2876820724517809},
                                    {"token": "3", "logprob": -1.3862943611198906},
                                    {"token": "x", "logprob": -9.0},
                                ],
                            }
                        ]
                    },
                }
            ]
        }
        payload = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def flaky_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FlakyJudge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    FlakyJudge.seen = 0
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_judge_retries_then_weights_digits(tmp_path, flaky_server):
    """Expected digit: 0.75 x 7 + 0.25 x 3 = 6.0 (the non-digit token is ignored)."""
    FlakyJudge.failures = 2
    recipe = score_recipe(
        tmp_path,
        candidates_file(tmp_path),
        "score.scorer=judge",
        f"score.judge={{base_url: '{flaky_server}', model: m, max_retries: 3}}",
    )
    scorer = JudgeScorer(recipe.score.judge, tmp_path)
    assert scorer.score([ScoreRequest([{"role": "user", "content": "q"}], "a")]) == [pytest.approx(6.0)]
    assert FlakyJudge.seen == 3

    FlakyJudge.failures, FlakyJudge.seen = 100, 0
    with pytest.raises(WpoError, match=r"answered HTTP 503 after 4 attempts for the prompt 'q'; 1 answers are saved"):
        scorer.score([ScoreRequest([{"role": "user", "content": "q"}], "another answer")])


def test_score_from_answer_falls_back_to_text():
    assert score_from_answer({"message": {"content": "Score: 8"}}) == 8.0
    with pytest.raises(WpoError, match="holds no digit"):
        score_from_answer({"message": {"content": "great"}})
