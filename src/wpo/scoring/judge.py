"""A pointwise LLM judge on any OpenAI-compatible chat endpoint (vLLM, llama.cpp's server, a hosted API).

The judge answers one digit, 0–9. When the endpoint returns `top_logprobs`, the score is the expected digit under
the judge's distribution over digit tokens (smoother than the argmax, as G-Eval and AlpacaEval 2 do); otherwise the
first digit of its answer. Every answer is cached on disk, keyed by (endpoint, judge model, prompt, response), so a
rerun pays nothing twice; transient failures (timeouts, 429, 5xx) are retried with exponential backoff and jitter.
The API key comes from the environment variable named in the recipe and is never written anywhere.

Small judges do not follow the one-digit instruction; `score.judge.extra_body` passes a server's own constraint
through (llama.cpp: `{grammar: "root ::= [0-9]"}`; vLLM: `{guided_choice: ["0", ..., "9"]}`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
import time
from pathlib import Path
from typing import Any

import requests

from wpo.config import JudgeConfig
from wpo.errors import WpoError
from wpo.scoring import ScoreRequest

log = logging.getLogger(__name__)

JUDGE_SYSTEM = "You are a strict, fair grader of assistant responses."
JUDGE_TEMPLATE = (
    "Grade the response to the conversation below for helpfulness, correctness and following the instructions.\n\n"
    "[Conversation]\n{conversation}\n\n[Response]\n{response}\n\n"
    "Answer with a single digit from 0 (useless) to 9 (excellent), and nothing else."
)
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
CACHE_FILE = "judge_cache.jsonl"


def judge_messages(request: ScoreRequest) -> list[dict[str, str]]:
    conversation = "\n".join(f"{m['role']}: {m['content']}" for m in request.messages)
    return [
        {"role": "system", "content": JUDGE_SYSTEM},
        {"role": "user", "content": JUDGE_TEMPLATE.format(conversation=conversation, response=request.response)},
    ]


def score_from_answer(choice: dict[str, Any]) -> float | None:
    """Expected digit under the first token's top logprobs, else the first digit in the text, else None."""
    logprobs = ((choice.get("logprobs") or {}).get("content") or [{}])[0].get("top_logprobs") or []
    digit_probs = {}
    for entry in logprobs:
        token = entry.get("token", "").strip()
        if len(token) == 1 and token.isdigit():
            digit_probs[int(token)] = digit_probs.get(int(token), 0.0) + math.exp(entry["logprob"])
    if digit_probs:
        total = sum(digit_probs.values())
        return sum(digit * p for digit, p in digit_probs.items()) / total
    match = re.search(r"\d", (choice.get("message") or {}).get("content") or "")
    return float(match.group()) if match else None


class JudgeScorer:
    def __init__(self, config: JudgeConfig, cache_dir: Path):
        self.config = config
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self.headers = {"Content-Type": "application/json"}
        if config.api_key_env:
            key = os.environ.get(config.api_key_env)
            if not key:
                raise WpoError(f"score.judge.api_key_env names {config.api_key_env}, which is not set")
            self.headers["Authorization"] = f"Bearer {key}"
        self.cache_path = cache_dir / CACHE_FILE
        self.cache = self._read_cache()
        self.calls = 0
        self.cache_hits = 0

    def _read_cache(self) -> dict[str, float]:
        cache: dict[str, float] = {}
        if self.cache_path.is_file():
            for line in self.cache_path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by a kill: that judgement is simply asked again
                cache[entry["key"]] = entry["score"]
        return cache

    def _key(self, request: ScoreRequest) -> str:
        payload = json.dumps([self.config.base_url, self.config.model, self.config.extra_body, JUDGE_TEMPLATE,
                              request.messages, request.response], ensure_ascii=False, sort_keys=True)  # fmt: skip
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def _remember(self, key: str, score: float) -> None:
        self.cache[key] = score
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        with self.cache_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"key": key, "score": score}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def _ask(self, request: ScoreRequest) -> float:
        body = {
            "model": self.config.model,
            "messages": judge_messages(request),
            "max_tokens": 2,
            "temperature": 0.0,
            "logprobs": True,
            "top_logprobs": 20,
            **self.config.extra_body,
        }
        last_error = ""
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                delay = min(30.0, self.config.backoff_seconds * 2 ** (attempt - 1)) * (1.0 + random.random())
                log.warning("judge: %s; retry %d/%d in %.1fs", last_error, attempt, self.config.max_retries, delay)
                time.sleep(delay)
            try:
                self.calls += 1
                response = requests.post(self.url, json=body, headers=self.headers, timeout=self.config.timeout)
            except (requests.Timeout, requests.ConnectionError) as exc:
                last_error = f"{type(exc).__name__}"
                continue
            if response.status_code in RETRY_STATUS:
                last_error = f"HTTP {response.status_code}"
                continue
            if response.status_code != 200:
                raise WpoError(f"judge at {self.url} answered HTTP {response.status_code}: {response.text[:200]}")
            choice = response.json()["choices"][0]
            score = score_from_answer(choice)
            if score is None:
                raise WpoError(f"judge answered {choice.get('message', {}).get('content')!r}, which holds no digit")
            return score
        raise WpoError(
            f"judge at {self.url} failed after {self.config.max_retries + 1} attempts ({last_error}); "
            f"{len(self.cache)} judgements are saved in {self.cache_path} and will not be asked again"
        )

    def score(self, requests_: list[ScoreRequest]) -> list[float]:
        scores = []
        for request in requests_:
            key = self._key(request)
            if key in self.cache:
                self.cache_hits += 1
            else:
                self._remember(key, self._ask(request))
            scores.append(self.cache[key])
        return scores
