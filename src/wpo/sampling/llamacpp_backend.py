"""llama-cpp-python on a GGUF of the policy: the fast CPU path.

The prompt is rendered with the HF tokenizer's chat template (the same text training sees) and passed as tokens;
each completion gets its own seed. llama.cpp's sampler defaults that transformers does not have (min_p 0.05,
repeat penalty) are switched off so both backends sample the same distribution.
"""

from __future__ import annotations

import os
from pathlib import Path

from wpo.config import Recipe
from wpo.errors import ConfigError
from wpo.models import embedded_gguf, load_tokenizer
from wpo.sampling import SampleRequest, cut_at_stop, render_prompt


def policy_gguf(recipe: Recipe) -> Path:
    """The GGUF to sample from: `sample.gguf`, the model itself when it is a GGUF, or the embedded model's file."""
    name = recipe.model.name_or_path
    if recipe.sample.gguf:
        return Path(recipe.sample.gguf)
    if name.endswith(".gguf"):
        return Path(name)
    if name.startswith("embedded:"):
        return embedded_gguf(name)
    raise ConfigError(
        f"sample.backend: llamacpp needs a GGUF of the policy; {name} is an HF model: set sample.gguf to a GGUF "
        "of it (wpo export writes one)"
    )


class LlamaCppSampler:
    def __init__(self, model_path: str, recipe: Recipe):
        from llama_cpp import Llama

        self.config = recipe.sample
        self.tokenizer = load_tokenizer(model_path, recipe.model.trust_remote_code)
        self.llm = Llama(
            model_path=str(policy_gguf(recipe)),
            n_ctx=recipe.sample.context_length,
            n_threads=os.cpu_count(),
            seed=recipe.seed,
            verbose=False,
        )

    def generate(self, requests: list[SampleRequest]) -> list[str]:
        cfg = self.config
        texts = []
        for request in requests:
            prompt = render_prompt(self.tokenizer, request.messages)
            tokens = self.llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
            self.llm.reset()
            completion = self.llm.create_completion(
                tokens,
                max_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                top_k=cfg.top_k,
                min_p=0.0,
                repeat_penalty=1.0,
                stop=cfg.stop or None,
                seed=request.seed,
            )
            texts.append(cut_at_stop(completion["choices"][0]["text"], cfg.stop))
        return texts
