"""The one OpenAI-compatible client (`wpo.endpoints`) against a loopback server: concurrency, order, retries that
honour Retry-After, usage accounting, failures that name the prompt and what is saved, and a refused key."""

from __future__ import annotations

import time

import pytest
from helpers import PLANTED_KEY
from judge_server import FakeJudge, digit_for

from wpo.config import EndpointConfig, load_recipe
from wpo.endpoints import AnswerCache, ChatRequest, Endpoint, first_token_distribution, message_text
from wpo.errors import WpoError
from wpo.evaluation.judges import ApiPairwiseJudge, Comparison
from wpo.scoring import ScoreRequest
from wpo.scoring.judge import JudgeScorer, judge_messages, score_from_answer


def requests_for(*responses: str) -> list[ScoreRequest]:
    return [ScoreRequest([{"role": "user", "content": "Say something."}], response) for response in responses]


def asks(count: int) -> list[ChatRequest]:
    return [
        ChatRequest(f"k{i}", [{"role": "user", "content": f"question {i}"}], {"max_tokens": 1}, f"q{i}")
        for i in range(count)
    ]


def endpoint(url: str, tmp_path, **settings) -> Endpoint:
    return Endpoint(EndpointConfig(base_url=url, model="m", **settings), "test", AnswerCache(tmp_path / "c.jsonl"))


def test_requests_run_concurrently_up_to_the_bound_and_come_back_in_order(tmp_path):
    with FakeJudge(stall_seconds=0.3) as judge:
        client = endpoint(judge.url, tmp_path, max_concurrency=4)
        answers = client.ask_all(asks(12), message_text)
    assert judge.most_in_flight == 4  # never more than the bound, and the bound is reached
    assert answers == [str(digit_for(f"question {i}")) for i in range(12)]  # input order, whatever finished first
    usage = client.usage.as_dict()
    assert usage == {
        "requests": 12,
        "completions": 12,
        "retries": 0,
        "prompt_tokens": 2 * 12,
        "completion_tokens": 12,
        "cache_hits": 0,
    }
    again = endpoint(judge.url, tmp_path)  # a rerun reads every answer from the cache and asks nothing
    assert again.ask_all(asks(12), message_text) == answers and again.usage.cache_hits == 12
    assert again.usage.requests == 0


def test_429_is_retried_after_the_servers_retry_after(tmp_path):
    with FakeJudge(fail_status=429, fail_until=3, retry_after="0.4") as judge:
        client = endpoint(judge.url, tmp_path, max_retries=3)
        started = time.perf_counter()
        assert client.ask_all(asks(1), message_text) == [str(digit_for("question 0"))]
        waited = time.perf_counter() - started
    assert judge.received == 3 and waited >= 2 * 0.4  # two 429s, each followed by the server's own delay
    assert (client.usage.requests, client.usage.retries, client.usage.completions) == (3, 2, 1)


def test_a_prompt_that_still_fails_names_itself_the_endpoint_and_what_is_saved(tmp_path):
    """Two answers, then HTTP 500 for good: 3 attempts at the third, and the error counts the 2 cached answers."""
    with FakeJudge(fail_status=500, fail_from=3) as judge:
        scorer = JudgeScorer(EndpointConfig(base_url=judge.url, model="m", max_retries=2, max_concurrency=1), tmp_path)
        with pytest.raises(WpoError) as raised:
            scorer.score(requests_for("one", "two", "three"))
    assert f"score.judge (m at {judge.url}) answered HTTP 500 after 3 attempts for the prompt 'Say something.'" in str(
        raised.value
    )
    assert "2 answers are saved in" in str(raised.value) and "judge_cache.jsonl and will not be asked again" in str(
        raised.value
    )
    assert judge.received == 2 + 3
    with FakeJudge() as judge:  # the rerun asks only the missing one
        rerun = JudgeScorer(EndpointConfig(base_url=judge.url, model="m"), tmp_path)
        prompts = [judge_messages(r)[-1]["content"] for r in requests_for("one", "two", "three")]
        expected = [0.75 * digit_for(p) + 0.25 * ((digit_for(p) + 1) % 10) for p in prompts]
        assert rerun.score(requests_for("one", "two", "three")) == pytest.approx(expected)
    assert judge.received == 1 and rerun.usage["cache_hits"] == 2


def test_a_failing_request_can_be_counted_and_skipped(tmp_path):
    with FakeJudge(fail_status=503, fail_from=2, fail_until=3) as judge:
        client = endpoint(judge.url, tmp_path, max_retries=0, max_concurrency=1)
        failed = []
        answers = client.ask_all(asks(3), message_text, on_failure=lambda request, error: failed.append(request.label))
    assert answers[1] is None and None not in (answers[0], answers[2]) and failed == ["q1"]


def test_a_refused_key_fails_at_once_and_never_echoes_it(tmp_path, monkeypatch):
    monkeypatch.setenv("WPO_TEST_JUDGE_KEY", PLANTED_KEY)
    with FakeJudge(fail_status=401, fail_body=f'{{"error": {{"message": "invalid key {PLANTED_KEY}"}}}}') as judge:
        client = endpoint(judge.url, tmp_path, api_key_env="WPO_TEST_JUDGE_KEY", max_retries=5)
        with pytest.raises(WpoError, match=r"refused the API key \(HTTP 401\): check WPO_TEST_JUDGE_KEY") as raised:
            client.ask_all(asks(1), message_text, on_failure=lambda *_: None)  # never skipped: every call would fail
    assert PLANTED_KEY not in str(raised.value)
    assert judge.received == 1 and judge.authorizations == [f"Bearer {PLANTED_KEY}"]
    monkeypatch.delenv("WPO_TEST_JUDGE_KEY")
    with pytest.raises(WpoError, match=r"test: api_key_env names WPO_TEST_JUDGE_KEY, which is not set"):
        endpoint(judge.url, tmp_path, api_key_env="WPO_TEST_JUDGE_KEY")


def test_a_stalled_server_times_out_and_is_retried(tmp_path):
    with FakeJudge(stall_seconds=1.5) as judge:
        client = endpoint(judge.url, tmp_path, timeout=0.2, max_retries=1)
        with pytest.raises(WpoError, match=r"failed after 2 attempts \(APITimeoutError\) for q0; 0 answers are saved"):
            client.ask_all(asks(1), message_text)
    assert judge.received == 2 and judge.answered == []  # both attempts reached the server, neither was answered


def test_extra_body_and_several_servers(tmp_path):
    with FakeJudge() as first, FakeJudge() as second:
        client = endpoint([first.url, second.url], tmp_path, extra_body={"grammar": "root ::= [0-9]"})
        client.ask_all(asks(4), message_text)
    assert (first.received, second.received) == (2, 2)  # spread over the servers in turn
    assert all(body["grammar"] == "root ::= [0-9]" and body["model"] == "m" for body in first.bodies + second.bodies)


def test_the_pairwise_judge_reports_saved_judgements_too(tmp_path):
    with FakeJudge(fail_status=503, fail_from=2) as judge:
        recipe = load_recipe(
            None, [f"eval.api={{base_url: '{judge.url}', model: m, max_retries: 1, max_concurrency: 1}}"]
        )
        items = [Comparison([{"role": "user", "content": f"task {i}"}], "reference", f"output {i}") for i in range(3)]
        with pytest.raises(
            WpoError,
            match=r"eval.api \(m at .*\) answered HTTP 503 after 2 attempts for the "
            r"instruction 'task \d'; 1 answers are saved in .*judge_cache.jsonl",
        ):
            ApiPairwiseJudge(recipe.eval, tmp_path).preferences(items)
    assert judge.received == 1 + 2


def test_malformed_logprobs_are_ignored():
    choice = {
        "message": {"content": "Score: 7"},
        "logprobs": {
            "content": [
                {
                    "top_logprobs": [
                        {"token": "7", "logprob": -0.5},
                        {"token": 3, "logprob": -1.0},
                        {"token": "2", "logprob": "high"},
                        {"token": "4", "logprob": float("nan")},
                        "junk",
                    ]
                }
            ]
        },
    }
    assert first_token_distribution(choice) == pytest.approx({"7": 0.6065306597})
    assert score_from_answer(choice) == 7.0
    assert first_token_distribution({"logprobs": {"content": [{"top_logprobs": 5}]}}) == {}
    assert score_from_answer({"message": {"content": "8"}, "logprobs": [1, 2]}) == 8.0
    with pytest.raises(WpoError, match=r"judge answered 'great', which holds no digit"):
        score_from_answer({"message": {"content": "great"}})
