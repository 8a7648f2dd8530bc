"""Requests per second through `wpo.endpoints` at concurrency 1 vs 16, against a loopback server with a remote API's
fixed latency, in one run: what `max_concurrency` buys when the time is the server's, not ours.

The server is the tests' fake OpenAI-compatible endpoint (tests/judge_server.py), holding every request
`--latency` seconds before it answers; each side asks `--requests` distinct questions with an empty cache.
Target: ≥ 10× at concurrency 16.

Run: python benchmarks/api_throughput.py [--requests 64] [--latency 0.5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

from judge_server import FakeJudge  # noqa: E402

from wpo.config import EndpointConfig  # noqa: E402
from wpo.endpoints import AnswerCache, ChatRequest, Endpoint, message_text  # noqa: E402


def measure(url: str, concurrency: int, count: int) -> float:
    with tempfile.TemporaryDirectory() as directory:
        endpoint = Endpoint(
            EndpointConfig(base_url=url, model="m", max_concurrency=concurrency),
            "bench",
            AnswerCache(Path(directory) / "cache.jsonl"),
        )
        requests = [
            ChatRequest(
                f"{concurrency}-{i}", [{"role": "user", "content": f"question {i}"}], {"max_tokens": 1}, f"q{i}"
            )
            for i in range(count)
        ]
        started = time.perf_counter()
        endpoint.ask_all(requests, message_text, desc=f"concurrency {concurrency}")
        return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.5)
    args = parser.parse_args()
    with FakeJudge(stall_seconds=args.latency) as server:
        one = measure(server.url, 1, args.requests)
        sixteen = measure(server.url, 16, args.requests)
        most = server.most_in_flight
    print(f"{args.requests} requests, {args.latency:.2f} s server latency")
    print(f"concurrency  1: {one:7.2f} requests/s  ({one * 3600:8.0f} per hour)")
    print(f"concurrency 16: {sixteen:7.2f} requests/s  ({sixteen * 3600:8.0f} per hour), {most} in flight at most")
    print(f"ratio: {sixteen / one:.1f}x (target >= 10x)")


if __name__ == "__main__":
    main()
