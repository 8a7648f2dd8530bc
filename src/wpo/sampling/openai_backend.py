"""On-policy sampling through OpenAI-compatible servers (`vllm serve`, SGLang, llama.cpp's server; several behind
their own ports as a `base_url` list): the model behind the server is the policy.

Each sample is one chat completion carrying its own `seed` and the recipe's temperature, top-p and max tokens, sent
concurrently through `wpo.endpoints` and cached as it arrives in `sample/policy_cache.jsonl`, so a killed run asks
again at most what was in flight. Whether a server honours `seed` is the server's business (vLLM does per request).
"""

from __future__ import annotations

from wpo.endpoints import AnswerCache, ChatRequest, Endpoint, answer_with_reason, cached_answer
from wpo.sampling import Generation, Sample, SampleRequest, cut_at_stop

CACHE_FILE = "policy_cache.jsonl"


class OpenAISampler:
    def __init__(self, generation: Generation):
        self.cfg = generation
        self.endpoint = Endpoint(generation.endpoint, "sample.endpoint", AnswerCache(generation.cache_dir / CACHE_FILE))

    def _request(self, request: SampleRequest) -> ChatRequest:
        cfg = self.cfg
        params = {
            "temperature": cfg.temperature,
            "top_p": cfg.top_p,
            "max_tokens": cfg.max_new_tokens,
            "seed": request.seed,
            **({"stop": list(cfg.stop)} if cfg.stop else {}),
        }
        key = AnswerCache.key(cfg.endpoint.model, cfg.endpoint.extra_body, params, request.messages)
        return ChatRequest(key, request.messages, params, f"a sample with seed {request.seed}")

    def generate(self, requests: list[SampleRequest]) -> list[Sample]:
        answers = self.endpoint.ask_all([self._request(r) for r in requests], answer_with_reason, desc="sample: server")
        return [Sample(cut_at_stop(text, self.cfg.stop), reason) for text, reason in map(cached_answer, answers)]
