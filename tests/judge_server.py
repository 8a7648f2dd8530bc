"""A fake OpenAI-compatible chat endpoint on loopback, for judge tests that need to count, fail, stall or hang calls.

It answers the pointwise scorer's prompt with a digit and the pairwise judge's prompt with a letter, each with
`top_logprobs`, both derived from a hash of the prompt: the same question always gets the same answer, in any run.
Every request is recorded (its prompt and `Authorization` header); `answered` lists only the prompts that got a
response, so a request cut off by a kill is not counted as answered.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def digit_for(prompt: str) -> int:
    return hashlib.sha256(prompt.encode("utf-8")).digest()[0] % 10


def letter_probability_b(prompt: str) -> float:
    """P(b) in {0.1, 0.2, ..., 0.9}: deterministic per prompt, varied across prompts."""
    return (hashlib.sha256(prompt.encode("utf-8")).digest()[1] % 9 + 1) / 10


def completion_for(prompt: str) -> dict:
    """A chat completion whose first token's top logprobs the judges read."""
    if "Best Model Identifier" in prompt:  # alpaca_eval's weighted annotator: "m" (output_1) or "M" (output_2)
        p_m = letter_probability_b(prompt)
        top = [
            {"token": "m", "logprob": math.log(0.9 * p_m)},
            {"token": "M", "logprob": math.log(0.9 * (1 - p_m))},
            {"token": "The", "logprob": math.log(0.1)},
        ]
        text = "m" if p_m >= 0.5 else "M"
    elif "a or b" in prompt:
        p_b = letter_probability_b(prompt)
        top = [{"token": "b", "logprob": math.log(p_b)}, {"token": "a", "logprob": math.log(1 - p_b)}]
        text = "b" if p_b >= 0.5 else "a"
    else:
        digit = digit_for(prompt)
        top = [
            {"token": str(digit), "logprob": math.log(0.75)},
            {"token": str((digit + 1) % 10), "logprob": math.log(0.25)},
        ]
        text = str(digit)
    return {
        "id": "c",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": text},
                "logprobs": {
                    "content": [
                        {
                            "token": text,
                            "logprob": top[0]["logprob"],
                            "bytes": None,
                            "top_logprobs": [{**t, "bytes": None} for t in top],
                        }
                    ]
                },
            }
        ],
        "usage": {
            "prompt_tokens": len(prompt.split()),
            "completion_tokens": 1,
            "total_tokens": len(prompt.split()) + 1,
        },
    }


class FakeJudge:
    """Start with `with FakeJudge(...) as judge:`; `judge.url` is the base URL (`.../v1`).

    - `hang_at=n`: the n-th request (1-based) is received but never answered; `hung` is set when it arrives, and
      `release()` lets the handler go (without answering).
    - `fail_status=code`: every request from the `fail_from`-th on gets that HTTP status, with `fail_body`.
      `fail_until=n` stops failing from the n-th request on; `retry_after` is sent as the `Retry-After` header.
    - `stall_seconds=s`: every request waits s seconds before answering (to trip the client's timeout, or to stand
      for a remote API's latency); `most_in_flight` is the most requests it held at once.
    - `body`: a fixed raw response body (status 200) instead of a completion.
    Every request's JSON body is kept in `bodies`.
    """

    def __init__(
        self,
        *,
        hang_at: int | None = None,
        fail_status: int | None = None,
        fail_from: int = 1,
        fail_until: int | None = None,
        fail_body: str = "",
        retry_after: str | None = "0.001",
        stall_seconds: float = 0.0,
        body: bytes | None = None,
    ):
        self.hang_at, self.fail_status, self.fail_from, self.fail_body = hang_at, fail_status, fail_from, fail_body
        self.fail_until, self.retry_after = fail_until, retry_after
        self.stall_seconds, self.body = stall_seconds, body
        self.bodies: list[dict] = []
        self.in_flight = self.most_in_flight = 0
        self.received = 0
        self.answered: list[str] = []
        self.authorizations: list[str | None] = []
        self.hung = threading.Event()
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def release(self) -> None:
        self._release.set()

    def __enter__(self) -> FakeJudge:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = request["messages"][-1]["content"]
                with judge._lock:
                    judge.received += 1
                    number = judge.received
                    judge.authorizations.append(self.headers.get("Authorization"))
                    judge.bodies.append(request)
                    judge.in_flight += 1
                    judge.most_in_flight = max(judge.most_in_flight, judge.in_flight)
                try:
                    self._answer(number, prompt)
                finally:
                    with judge._lock:
                        judge.in_flight -= 1

            def _answer(self, number: int, prompt: str) -> None:
                if number == judge.hang_at:
                    judge.hung.set()
                    judge._release.wait()
                    return  # no response: the client was killed while waiting for it
                time.sleep(judge.stall_seconds)
                failing = judge.fail_status is not None and number >= judge.fail_from
                if failing and (judge.fail_until is None or number < judge.fail_until):
                    self._send(judge.fail_status, judge.fail_body.encode(), retry_after=judge.retry_after)
                    return
                self._send(200, judge.body if judge.body is not None else json.dumps(completion_for(prompt)).encode())
                with judge._lock:
                    judge.answered.append(prompt)

            def _send(self, status: int, payload: bytes, retry_after: str | None = None) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    if retry_after is not None:
                        self.send_header("Retry-After", retry_after)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its timeout) before the answer came

            def log_message(self, *args):
                pass

        return Handler
