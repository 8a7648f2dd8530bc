"""A pointwise LLM judge on any OpenAI-compatible chat endpoint (vLLM, llama.cpp's server, a hosted API).

The judge answers one digit, 0–9. When the endpoint returns `top_logprobs`, the score is the expected digit under
the judge's distribution over digit tokens (smoother than the argmax, as G-Eval and AlpacaEval 2 do); otherwise the
first digit of its answer. Answers are cached on disk (`wpo.api.AnswerCache`), keyed by endpoint, judge model,
`extra_body`, prompt and response, so a rerun pays nothing twice.

Small judges do not follow the one-digit instruction; `score.judge.extra_body` passes a server's own constraint
through (llama.cpp: `{grammar: "root ::= [0-9]"}`; vLLM: `{guided_choice: ["0", ..., "9"]}`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from wpo.api import AnswerCache, ChatClient, first_token_distribution
from wpo.config import JudgeConfig
from wpo.errors import WpoError
from wpo.scoring import ScoreRequest

JUDGE_SYSTEM = "You are a strict, fair grader of assistant responses."
JUDGE_TEMPLATE = (
    "Grade the response to the conversation below for helpfulness, correctness and following the instructions.\n\n"
    "[Conversation]\n{conversation}\n\n[Response]\n{response}\n\n"
    "Answer with a single digit from 0 (useless) to 9 (excellent), and nothing else."
)
CACHE_FILE = "judge_cache.jsonl"


def judge_messages(request: ScoreRequest) -> list[dict[str, str]]:
    conversation = "\n".join(f"{m['role']}: {m['content']}" for m in request.messages)
    return [
        {"role": "system", "content": JUDGE_SYSTEM},
        {"role": "user", "content": JUDGE_TEMPLATE.format(conversation=conversation, response=request.response)},
    ]


def score_from_answer(choice: dict[str, Any]) -> float | None:
    """Expected digit under the first token's top logprobs, else the first digit in the text, else None."""
    digits = {int(t): p for t, p in first_token_distribution(choice).items() if len(t) == 1 and t.isdigit()}
    if digits:
        return sum(digit * p for digit, p in digits.items()) / sum(digits.values())
    match = re.search(r"\d", (choice.get("message") or {}).get("content") or "")
    return float(match.group()) if match else None


class JudgeScorer:
    def __init__(self, config: JudgeConfig, cache_dir: Path):
        self.config = config
        self.client = ChatClient(config)
        self.cache = AnswerCache(cache_dir / CACHE_FILE)
        self.cache_hits = 0

    @property
    def calls(self) -> int:
        return self.client.calls

    def score(self, requests: list[ScoreRequest]) -> list[float]:
        scores = []
        for request in requests:
            key = AnswerCache.key(self.config.base_url, self.config.model, self.config.extra_body, JUDGE_TEMPLATE,
                                  request.messages, request.response)  # fmt: skip
            if key in self.cache:
                self.cache_hits += 1
            else:
                choice = self.client.complete(judge_messages(request), self.cache, max_tokens=2, temperature=0.0,
                                              logprobs=True, top_logprobs=20)  # fmt: skip
                score = score_from_answer(choice)
                if score is None:
                    content = (choice.get("message") or {}).get("content")
                    raise WpoError(f"judge answered {content!r}, which holds no digit")
                self.cache.put(key, score)
            scores.append(self.cache[key])
        return scores
