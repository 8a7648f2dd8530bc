"""OpenAI-compatible chat endpoints for judges: retries with backoff, and an on-disk answer cache.

Shared by the pointwise scorer (`wpo score`) and the pairwise evaluator (`wpo eval`). Timeouts, connection errors,
408/409/429 and 5xx are retried with exponential backoff and jitter, up to `max_retries`; the final failure says how
many answers are already cached, because those are never asked again. The API key is read from the environment
variable named in the recipe and is written nowhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import requests

from wpo.config import JudgeConfig
from wpo.errors import WpoError

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class AnswerCache:
    """Append-only JSONL of `{key, value}`: every answer is fsynced as soon as it arrives.

    A line torn by a kill is cut off on load (that one answer is asked again), so the next append starts a clean line.
    """

    def __init__(self, path: Path):
        self.path = path
        self.values: dict[str, Any] = {}
        if not path.is_file():
            return
        raw = path.read_bytes()
        complete = raw[: raw.rfind(b"\n") + 1]
        if len(complete) != len(raw):
            with path.open("r+b") as handle:
                handle.truncate(len(complete))
        for line in complete.splitlines():
            try:
                entry = json.loads(line)
                self.values[entry["key"]] = entry["value"]
            except (ValueError, TypeError, KeyError):
                log.warning("judge cache %s: ignoring an unreadable line", path)

    @staticmethod
    def key(*parts: Any) -> str:
        payload = json.dumps(parts, ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def __len__(self) -> int:
        return len(self.values)

    def put(self, key: str, value: Any) -> None:
        self.values[key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"key": key, "value": value}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


class ChatClient:
    def __init__(self, config: JudgeConfig):
        self.config = config
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self.headers = {"Content-Type": "application/json"}
        self._key = ""
        if config.api_key_env:
            self._key = os.environ.get(config.api_key_env, "")
            if not self._key:
                raise WpoError(f"api_key_env names {config.api_key_env}, which is not set")
            self.headers["Authorization"] = f"Bearer {self._key}"
        self.calls = 0

    def _failure(self, problem: str, cache: AnswerCache) -> WpoError:
        """The error that ends a judging run: what went wrong (the key redacted, should a server echo it) and how
        many answers are safe on disk."""
        if self._key:
            problem = problem.replace(self._key, "***")
        return WpoError(f"judge at {self.url} {problem}; {len(cache)} judgements are saved in {cache.path} and will "
                        "not be asked again")  # fmt: skip

    def complete(self, messages: list[dict[str, str]], cache: AnswerCache, **params: Any) -> dict[str, Any]:
        """The first choice of a chat completion; `extra_body` from the config is merged into the request."""
        body = {"model": self.config.model, "messages": messages, **params, **self.config.extra_body}
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
                last_error = type(exc).__name__
                continue
            except requests.RequestException as exc:  # an invalid URL, a bad header: retrying cannot help
                raise self._failure(f"cannot be asked ({type(exc).__name__}: {exc})", cache) from None
            if response.status_code in RETRY_STATUS:
                last_error = f"HTTP {response.status_code}"
                continue
            if response.status_code != 200:
                raise self._failure(f"answered HTTP {response.status_code}: {response.text[:200]!r}", cache)
            try:
                choice = response.json()["choices"][0]
            except (ValueError, KeyError, IndexError, TypeError):
                choice = None
            if not _is_chat_choice(choice):
                raise self._failure(f"answered with no chat completion: {response.text[:200]!r}", cache)
            return choice
        raise self._failure(f"failed after {self.config.max_retries + 1} attempts ({last_error})", cache)


def _is_chat_choice(choice: Any) -> bool:
    """The shape the judges read: `{"message": {"content": str | null}, "logprobs": ...}`."""
    if not isinstance(choice, dict):
        return False
    message = choice.get("message") or {}
    return isinstance(message, dict) and isinstance(message.get("content") or "", str)


def first_token_distribution(choice: dict[str, Any]) -> dict[str, float]:
    """Probabilities of the first generated token's top alternatives (stripped, lower-cased, summed by text)."""
    logprobs = choice.get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(content, list) or not content or not isinstance(content[0], dict):
        return {}
    entries = content[0].get("top_logprobs")
    probs: dict[str, float] = {}
    for entry in entries if isinstance(entries, list) else []:  # malformed entries are ignored, not fatal
        token, logprob = (entry.get("token"), entry.get("logprob")) if isinstance(entry, dict) else (None, None)
        if isinstance(token, str) and isinstance(logprob, int | float) and math.isfinite(logprob):
            key = token.strip().lower()
            probs[key] = probs.get(key, 0.0) + math.exp(min(logprob, 0.0))
    return probs
