"""The judges' HTTP client: timeouts, bounded retries with exponential backoff and jitter, errors that say how many
judgements are safe on disk (for the scorer and the pairwise evaluator alike), and a cache that survives a kill."""

from __future__ import annotations

import json
import re

import pytest
from helpers import PLANTED_KEY, free_port
from judge_server import FakeJudge, digit_for

from wpo.api import AnswerCache, ChatClient, first_token_distribution
from wpo.config import JudgeConfig, load_recipe
from wpo.errors import WpoError
from wpo.eval.judges import ApiPairwiseJudge, Comparison
from wpo.scoring import ScoreRequest
from wpo.scoring.judge import JudgeScorer, judge_messages, score_from_answer


def requests_for(*responses: str) -> list[ScoreRequest]:
    return [ScoreRequest([{"role": "user", "content": "Say something."}], response) for response in responses]


def test_the_scorer_retries_then_says_how_many_judgements_are_saved(tmp_path):
    """Two answers, then HTTP 500 for good: 3 attempts at the third, and the error counts the 2 cached answers."""
    with FakeJudge(fail_status=500, fail_from=3) as judge:
        config = JudgeConfig(base_url=judge.url, model="m", max_retries=2, backoff_seconds=0.001)
        scorer = JudgeScorer(config, tmp_path)
        with pytest.raises(WpoError) as raised:
            scorer.score(requests_for("one", "two", "three"))
        assert str(raised.value) == (
            f"judge at {judge.url}/chat/completions failed after 3 attempts (HTTP 500); 2 judgements are saved in "
            f"{tmp_path / 'judge_cache.jsonl'} and will not be asked again"
        )
        assert judge.received == 2 + 3 and scorer.calls == 5

        judge.fail_status = None  # the endpoint recovers; a rerun asks only what is not cached
        rerun = JudgeScorer(config, tmp_path)
        prompts = [judge_messages(r)[-1]["content"] for r in requests_for("one", "two", "three")]
        expected = [0.75 * digit_for(p) + 0.25 * ((digit_for(p) + 1) % 10) for p in prompts]
        assert rerun.score(requests_for("one", "two", "three")) == pytest.approx(expected)
        assert (rerun.calls, rerun.cache_hits) == (1, 2)


def test_the_pairwise_judge_reports_saved_judgements_too(tmp_path):
    with FakeJudge(fail_status=503, fail_from=2) as judge:
        recipe = load_recipe(None, [f"eval.api={{base_url: '{judge.url}', model: m, max_retries: 1, "
                                    "backoff_seconds: 0.001}"])  # fmt: skip
        items = [Comparison([{"role": "user", "content": f"task {i}"}], "reference", f"output {i}") for i in range(3)]
        with pytest.raises(WpoError, match=r"failed after 2 attempts \(HTTP 503\); 1 judgements are saved in .*"
                                           r"judge_cache.jsonl and will not be asked again"):  # fmt: skip
            ApiPairwiseJudge(recipe, tmp_path).preferences(items)
    assert judge.received == 1 + 2


def test_a_stalled_server_times_out_and_is_retried(tmp_path):
    with FakeJudge(stall_seconds=1.5) as judge:
        client = ChatClient(JudgeConfig(base_url=judge.url, model="m", timeout=0.2, max_retries=1,
                                        backoff_seconds=0.001))  # fmt: skip
        with pytest.raises(WpoError, match=r"failed after 2 attempts \(ReadTimeout\); 0 judgements are saved"):
            client.complete([{"role": "user", "content": "q"}], AnswerCache(tmp_path / "cache.jsonl"))
    assert judge.received == 2 and judge.answered == []  # both attempts reached the server, neither was answered


def test_backoff_doubles_is_capped_and_jittered(tmp_path, monkeypatch):
    """delay_k = min(30, b * 2^(k-1)) * (1 + u_k), u_k uniform in [0, 1): here b = 10 and u = 0, .5, .99, .25, 0."""
    slept: list[float] = []
    draws = iter([0.0, 0.5, 0.99, 0.25, 0.0])
    monkeypatch.setattr("wpo.api.time.sleep", slept.append)
    monkeypatch.setattr("wpo.api.random.random", lambda: next(draws))
    nothing_listens = f"http://127.0.0.1:{free_port()}/v1"  # connection refused, at once
    client = ChatClient(JudgeConfig(base_url=nothing_listens, model="m", max_retries=5, backoff_seconds=10.0))
    with pytest.raises(WpoError, match=r"failed after 6 attempts \(ConnectionError\)"):
        client.complete([{"role": "user", "content": "q"}], AnswerCache(tmp_path / "cache.jsonl"))
    assert slept == pytest.approx([10.0, 30.0, 59.7, 37.5, 30.0])
    assert client.calls == 6


def test_a_client_error_fails_at_once_and_never_echoes_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("WPO_TEST_JUDGE_KEY", PLANTED_KEY)
    with FakeJudge(fail_status=401, fail_body=f"invalid key {PLANTED_KEY}") as judge:
        client = ChatClient(JudgeConfig(base_url=judge.url, model="m", api_key_env="WPO_TEST_JUDGE_KEY"))
        with pytest.raises(WpoError) as raised:
            client.complete([{"role": "user", "content": "q"}], AnswerCache(tmp_path / "cache.jsonl"))
    assert "answered HTTP 401: 'invalid key ***'; 0 judgements are saved" in str(raised.value)
    assert PLANTED_KEY not in str(raised.value)
    assert judge.received == 1 and judge.authorizations == [f"Bearer {PLANTED_KEY}"]


@pytest.mark.parametrize(
    "body", [b"<html>gateway says hi</html>", b'{"choices": []}', b'{"choices": [{"message": 5}]}']
)
def test_an_answer_that_is_not_a_completion_is_a_clear_error(tmp_path, body):
    with FakeJudge(body=body) as judge:
        client = ChatClient(JudgeConfig(base_url=judge.url, model="m"))
        with pytest.raises(WpoError, match=re.escape(f"answered with no chat completion: {body.decode()!r};")):
            client.complete([{"role": "user", "content": "q"}], AnswerCache(tmp_path / "cache.jsonl"))
    assert judge.received == 1


def test_an_unusable_url_or_missing_key_is_not_retried(tmp_path, monkeypatch):
    client = ChatClient(JudgeConfig(base_url="localhost:8000/v1", model="m", max_retries=3))
    with pytest.raises(WpoError, match=r"cannot be asked \(InvalidSchema: No connection adapters were found"):
        client.complete([{"role": "user", "content": "q"}], AnswerCache(tmp_path / "cache.jsonl"))
    assert client.calls == 1
    monkeypatch.delenv("WPO_TEST_JUDGE_KEY", raising=False)
    with pytest.raises(WpoError, match=r"api_key_env names WPO_TEST_JUDGE_KEY, which is not set"):
        ChatClient(JudgeConfig(base_url="http://127.0.0.1:1/v1", model="m", api_key_env="WPO_TEST_JUDGE_KEY"))


def test_malformed_logprobs_are_ignored():
    choice = {"message": {"content": "Score: 7"}, "logprobs": {"content": [{"top_logprobs": [
        {"token": "7", "logprob": -0.5}, {"token": 3, "logprob": -1.0}, {"token": "2", "logprob": "high"},
        {"token": "4", "logprob": float("nan")}, "junk"]}]}}  # fmt: skip
    assert first_token_distribution(choice) == pytest.approx({"7": 0.6065306597})
    assert score_from_answer(choice) == 7.0
    assert first_token_distribution({"logprobs": {"content": [{"top_logprobs": 5}]}}) == {}
    assert score_from_answer({"message": {"content": "8"}, "logprobs": [1, 2]}) == 8.0


def test_the_cache_cuts_a_line_torn_by_a_kill(tmp_path):
    """The torn tail is cut on load, so the next answer starts a clean line and survives the next load."""
    path = tmp_path / "judge_cache.jsonl"
    path.write_text(json.dumps({"key": "a", "value": 1.0}) + '\n{"key": "b", "val')
    cache = AnswerCache(path)
    assert dict(cache.values) == {"a": 1.0}
    cache.put("c", 3.0)
    assert dict(AnswerCache(path).values) == {"a": 1.0, "c": 3.0}
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()] == ["a", "c"]
