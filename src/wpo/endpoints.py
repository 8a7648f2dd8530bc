"""The one client for OpenAI-compatible chat endpoints: off-policy answers, on-policy sampling through a server, the
judge scorer and the eval judge all call models through `Endpoint`.

It is the official `openai` client (timeouts; retries of timeouts, 408/409/429 and 5xx with exponential backoff that
honours `Retry-After`; `extra_body` for server extensions) with what a pipeline needs around it:
- requests run concurrently, at most `max_concurrency` in flight, and results come back in input order;
- every answer is appended (fsynced) to an `AnswerCache` as it arrives, so a rerun asks nothing again and a run
  killed with SIGKILL asks again at most what was in flight;
- usage is counted per endpoint (requests, retries, prompt and completion tokens, cache hits) for the manifest;
- a request that still fails names the prompt, the endpoint and how many answers are saved; a refused API key
  (401/403) stops at once. The key is read from the variable named by `api_key_env` and written nowhere.
`base_url` may be a list: requests are spread over the servers in turn (several `vllm serve` behind their ports).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from wpo.config import EndpointConfig
from wpo.data.io import writing
from wpo.errors import WpoError

log = logging.getLogger(__name__)
CACHE_FILE = "judge_cache.jsonl"  # the judges' answers, in the stage directory (score/ or eval/)
# Waits between attempts at a broken answer, as the client waits between attempts at an error status.
BACKOFF_SECONDS, MAX_BACKOFF_SECONDS = 0.5, 8.0


class AnswerCache:
    """Append-only JSONL of `{key, value, usage}`: every answer is fsynced as soon as it arrives (thread-safe), with
    what it cost (requests, tokens), so a stage reports what its answers cost in all, each paid once, across killed
    and resumed runs.

    A line torn by a kill is cut off on load (that one answer is asked again), so the next append starts a clean line.
    """

    def __init__(self, path: Path):
        self.path = path
        self.values: dict[str, Any] = {}
        self.costs: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()
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
                if isinstance(entry.get("usage"), dict):
                    self.costs[entry["key"]] = entry["usage"]
            except (ValueError, TypeError, KeyError):
                log.warning("answer cache %s: ignoring an unreadable line", path)

    @staticmethod
    def key(*parts: Any) -> str:
        payload = json.dumps(parts, ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def cost_of(self, keys) -> dict[str, int]:
        """How many of these answers the cache holds, and what they cost in all (each paid once, whichever run asked;
        answers cached before costs were kept count in `answers` only)."""
        held = [key for key in keys if key in self.values]
        costs = [self.costs[key] for key in held if key in self.costs]
        totals = {
            f"all_answers_{name}": sum(cost.get(name, 0) for cost in costs)
            for name in ("requests", "prompt_tokens", "completion_tokens")
        }
        return {"answers": len(held), **totals}

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def __len__(self) -> int:
        return len(self.values)

    def put(self, key: str, value: Any, cost: dict[str, int] | None = None) -> None:
        with self._lock:
            self.values[key] = value
            if cost is not None:
                self.costs[key] = cost
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with writing(self.path), self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"key": key, "value": value, "usage": cost}) + "\n")
                handle.flush()
                os.fsync(handle.fileno())


@dataclass
class Usage:
    """What one endpoint cost in a stage: for the manifest."""

    requests: int = 0  # HTTP requests sent, retries included
    completions: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_hits: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict[str, int]:
        return {
            name: getattr(self, name)
            for name in ("requests", "completions", "retries", "prompt_tokens", "completion_tokens", "cache_hits")
        }


class KeyRefused(WpoError):
    """The endpoint refused the API key (401/403): every other request would fail the same way, so nothing skips it."""


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion to ask for: `key` names it in the cache, `label` names it in an error (a prompt id)."""

    key: str
    messages: list[dict[str, str]]
    params: dict[str, Any]
    label: str


class Endpoint:
    def __init__(self, config: EndpointConfig, name: str, cache: AnswerCache):
        import openai

        self.config, self.name, self.cache = config, name, cache
        self.usage = Usage()
        self._key = ""
        if config.api_key_env:
            self._key = os.environ.get(config.api_key_env, "")
            if not self._key:
                raise WpoError(f"{name}: api_key_env names {config.api_key_env}, which is not set")
        urls = config.base_url if isinstance(config.base_url, list) else [config.base_url]

        self._sent = threading.local()  # requests this thread sent for its current call: the client sends from it

        def counted(_request) -> None:
            self.usage.add(requests=1)
            self._sent.count = getattr(self._sent, "count", 0) + 1

        self._clients = [
            openai.OpenAI(
                base_url=url,
                api_key=self._key or "not-needed",
                timeout=config.timeout,
                max_retries=config.max_retries,
                http_client=openai.DefaultHttpxClient(event_hooks={"request": [counted]}),
            )
            for url in urls
        ]
        self._next = 0
        self._turn = threading.Lock()
        self.keys_asked: set[str] = set()  # every answer this invocation needed, cached or asked

    def usage_report(self) -> dict[str, int]:
        """This invocation's requests and tokens, beside what the answers it needed cost in all (each paid once,
        whichever run asked; answers cached before costs were kept count in `answers` only)."""
        return {**self.usage.as_dict(), **self.cache.cost_of(self.keys_asked)}

    def _client(self):
        with self._turn:
            client = self._clients[self._next % len(self._clients)]
            self._next += 1
            return client

    def _redacted(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _failure(self, request: ChatRequest, problem: str) -> WpoError:
        return WpoError(
            self._redacted(
                f"{self.name} ({self.config.model} at {self.config.base_url}) {problem} for {request.label}; "
                f"{len(self.cache)} answers are saved in {self.cache.path} and will not be asked again"
            )
        )

    def ask(self, request: ChatRequest) -> tuple[dict[str, Any], dict[str, int]]:
        """One chat completion's first choice as JSON (`message`, `logprobs`, `finish_reason`). The client retries
        timeouts and error statuses; an answer whose body is not a chat completion (a proxy's HTML page, JSON cut
        mid-way, no choices) is retried here with the same backoff, then fails naming what came back. Also returns
        what the answer cost: HTTP requests (retries included) and tokens."""
        attempts = self.config.max_retries + 1
        sent = 0
        for attempt in range(attempts):
            completion, body = self._ask_once(request)
            sent += self._sent.count
            if completion is not None:
                break
            if attempt + 1 < attempts:
                self.usage.add(retries=1)
                time.sleep(min(BACKOFF_SECONDS * 2**attempt, MAX_BACKOFF_SECONDS))
        else:
            shown = " ".join(body.split())[:80]
            raise self._failure(
                request,
                f"answered HTTP 200 with a body that is not a chat completion after {attempts} attempts ({shown!r})",
            )
        usage = completion.usage
        cost = {
            "requests": sent,
            "prompt_tokens": getattr(usage, "prompt_tokens", 0) or 0,
            "completion_tokens": getattr(usage, "completion_tokens", 0) or 0,
        }
        self.usage.add(completions=1, prompt_tokens=cost["prompt_tokens"], completion_tokens=cost["completion_tokens"])
        return completion.choices[0].model_dump(mode="json", exclude_none=True), cost

    def _ask_once(self, request: ChatRequest):
        """One request (with the client's own retries): the completion, or None and the body that was not one."""
        import openai
        from openai.types.chat import ChatCompletion

        self._sent.count = 0
        try:
            raw = self._client().chat.completions.with_raw_response.create(
                model=self.config.model,
                messages=request.messages,
                extra_body=self.config.extra_body or None,
                **request.params,
            )
            try:
                completion = raw.parse()
            except ValueError:  # JSON cut mid-way, or not JSON at all
                completion = None
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise KeyRefused(
                self._redacted(
                    f"{self.name} at {self.config.base_url} refused the API key (HTTP "
                    f"{exc.status_code}): check {self.config.api_key_env or 'api_key_env'}"
                )
            )
        except openai.APIStatusError as exc:
            raise self._failure(
                request, f"answered HTTP {exc.status_code} after {self.config.max_retries + 1} attempts"
            ) from None
        except openai.APIError as exc:  # timeouts, refused connections: the client retried them
            raise self._failure(
                request, f"failed after {self.config.max_retries + 1} attempts ({type(exc).__name__})"
            ) from None
        finally:
            self.usage.add(retries=max(0, self._sent.count - 1))
        if isinstance(completion, ChatCompletion) and completion.choices:
            return completion, ""
        return None, raw.http_response.text

    def ask_all(
        self,
        requests: list[ChatRequest],
        parse: Callable[[dict[str, Any]], Any],
        *,
        on_failure: Callable[[ChatRequest, WpoError], None] | None = None,
        desc: str = "api",
    ) -> list[Any]:
        """`parse(choice)` of every request, in input order: cached ones without asking, the rest concurrently (at
        most `max_concurrency` in flight), each parsed value cached as it arrives. `on_failure` (given, with
        `on_bad_record: skip`) counts a failed request and leaves None in its place instead of stopping."""
        missing = list({r.key: r for r in requests if r.key not in self.cache}.values())
        self.usage.add(cache_hits=len(requests) - len(missing))
        self.keys_asked.update(r.key for r in requests)

        stop = threading.Event()  # set by the first failure: no request starts after it

        def one(request: ChatRequest) -> None:
            if stop.is_set():
                return
            try:
                choice, cost = self.ask(request)
                try:
                    value = parse(choice)
                except EmptyAnswer as exc:  # named like any failure: the endpoint, the prompt, what is saved
                    raise EmptyAnswer(str(self._failure(request, str(exc)))) from None
                self.cache.put(request.key, value, cost)
            except WpoError as exc:
                if on_failure is None or isinstance(exc, KeyRefused):
                    stop.set()
                    raise
                on_failure(request, exc)

        if missing:
            pool = ThreadPoolExecutor(max_workers=self.config.max_concurrency)
            try:
                futures = [pool.submit(one, request) for request in missing]
                for future in tqdm(as_completed(futures), total=len(futures), desc=desc, unit="request"):
                    future.result()
            except BaseException:  # the first failure stops the stage: what is in flight finishes (and is saved)
                pool.shutdown(wait=True, cancel_futures=True)
                raise
            pool.shutdown()
        return [self.cache[r.key] if r.key in self.cache else None for r in requests]


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


class EmptyAnswer(WpoError):
    """An answer with no text (`content: null` from a content filter or a refusal, or only whitespace)."""


def message_text(choice: dict[str, Any]) -> str:
    return (choice.get("message") or {}).get("content") or ""


def answer_with_reason(choice: dict[str, Any]) -> dict[str, Any]:
    """The answer's text and why it ended (`finish_reason`: `stop`, `length` when cut off at max_tokens), as cached."""
    return {"text": message_text(choice), "finish_reason": choice.get("finish_reason")}


def nonempty_answer(choice: dict[str, Any]) -> dict[str, Any]:
    """`answer_with_reason`, never empty: an empty answer must not join the candidates as if it were one."""
    if not message_text(choice).strip():
        raise EmptyAnswer(f"answered with no content (finish_reason: {choice.get('finish_reason', 'unknown')})")
    return answer_with_reason(choice)


def cached_answer(value: str | dict[str, Any]) -> tuple[str, str | None]:
    """(text, finish_reason) of a cached answer; caches written before finish reasons were kept hold the text."""
    return (value, None) if isinstance(value, str) else (value["text"], value.get("finish_reason"))
