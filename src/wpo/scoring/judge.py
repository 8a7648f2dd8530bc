"""A pointwise LLM judge on any OpenAI-compatible chat endpoint (vLLM, llama.cpp's server, a hosted API).

The judge answers one digit, 0–9. When the endpoint returns `top_logprobs`, the score is the expected digit under
the judge's distribution over digit tokens (smoother than the argmax, as G-Eval and AlpacaEval 2 do); otherwise the
first digit of its answer. Requests run concurrently through `wpo.endpoints` (up to `max_concurrency`); answers are
cached on disk as they arrive, keyed by judge model, `extra_body`, prompt and response, so a rerun pays nothing
twice.

Small judges do not follow the one-digit instruction; `score.judge.extra_body` passes a server's own constraint
through (llama.cpp: `{grammar: "root ::= [0-9]"}`; vLLM: `{guided_choice: ["0", ..., "9"]}`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from wpo.config import EndpointConfig
from wpo.endpoints import CACHE_FILE, AnswerCache, ChatRequest, Endpoint, first_token_distribution, message_text
from wpo.errors import WpoError
from wpo.scoring import ScoreRequest

JUDGE_SYSTEM = "You are a strict, fair grader of assistant responses."
JUDGE_TEMPLATE = (
    "Grade the response to the conversation below for helpfulness, correctness and following the instructions.\n\n"
    "[Conversation]\n{conversation}\n\n[Response]\n{response}\n\n"
    "Answer with a single digit from 0 (useless) to 9 (excellent), and nothing else."
)


def judge_messages(request: ScoreRequest) -> list[dict[str, str]]:
    conversation = "\n".join(f"{m['role']}: {m['content']}" for m in request.messages)
    return [
        {"role": "system", "content": JUDGE_SYSTEM},
        {"role": "user", "content": JUDGE_TEMPLATE.format(conversation=conversation, response=request.response)},
    ]


def score_from_answer(choice: dict[str, Any]) -> float:
    """Expected digit under the first token's top logprobs, else the first digit in the text."""
    digits = {int(t): p for t, p in first_token_distribution(choice).items() if len(t) == 1 and t.isdigit()}
    if digits:
        return sum(digit * p for digit, p in digits.items()) / sum(digits.values())
    match = re.search(r"\d", message_text(choice))
    if match is None:
        raise WpoError(f"judge answered {message_text(choice)!r}, which holds no digit")
    return float(match.group())


class JudgeScorer:
    def __init__(self, config: EndpointConfig, cache_dir: Path):
        self.config = config
        self.endpoint = Endpoint(config, "score.judge", AnswerCache(cache_dir / CACHE_FILE))

    @property
    def usage(self) -> dict[str, int]:
        """Requests sent (retries included), retries, completions, tokens and cache hits, for the manifest."""
        return self.endpoint.usage_report()

    def score(self, requests: list[ScoreRequest]) -> list[float]:
        asks = [
            ChatRequest(
                key=AnswerCache.key(self.config.model, self.config.extra_body, JUDGE_TEMPLATE, r.messages, r.response),
                messages=judge_messages(r),
                params={"max_tokens": 2, "temperature": 0.0, "logprobs": True, "top_logprobs": 20},
                label=f"the prompt {r.messages[-1]['content'][:60]!r}",
            )
            for r in requests
        ]
        return self.endpoint.ask_all(asks, score_from_answer, desc="score: judge")
