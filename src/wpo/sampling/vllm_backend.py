"""vLLM on GPUs (installed separately, imported only when chosen): one request per sample, each with its seed.

vLLM's `n` shares one seed across a prompt's samples; one request per sample keeps every sample reproducible from
its own seed, and prefix caching shares the prompt's KV cache across them, so the cost stays close to `n`.

Not exercised by the CPU test suite: this workplace's CI has no GPU.
"""

from __future__ import annotations

from wpo.config import ModelConfig
from wpo.models import load_tokenizer, resolve_dtype
from wpo.sampling import Generation, Sample, SampleRequest, cut_at_stop, render_prompt


class VllmSampler:
    def __init__(self, model_path: str, model: ModelConfig, generation: Generation):
        from vllm import LLM

        self.config = generation
        self.tokenizer = load_tokenizer(model_path, model.trust_remote_code)
        self.llm = LLM(
            model=model_path,
            tensor_parallel_size=generation.tensor_parallel_size,
            dtype=str(resolve_dtype(model.dtype)).removeprefix("torch."),
            trust_remote_code=model.trust_remote_code,
            seed=generation.seed,
            enable_prefix_caching=True,
        )

    def generate(self, requests: list[SampleRequest]) -> list[Sample]:
        from vllm import SamplingParams, TokensPrompt

        cfg = self.config
        prompts = [
            TokensPrompt(
                prompt_token_ids=self.tokenizer(render_prompt(self.tokenizer, r.messages), add_special_tokens=False)[
                    "input_ids"
                ]
            )
            for r in requests
        ]
        params = [
            SamplingParams(
                n=1,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                top_k=cfg.top_k if cfg.top_k > 0 else -1,
                max_tokens=cfg.max_new_tokens,
                stop=list(cfg.stop) or None,
                seed=r.seed,
            )
            for r in requests
        ]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [
            Sample(cut_at_stop(output.outputs[0].text, cfg.stop), output.outputs[0].finish_reason) for output in outputs
        ]
