"""On-policy sampling behind one interface, with a seed per sample.

Every sample's randomness comes from its own seed, `sample_seed(run seed, prompt id, sample index)`, never from
global state, so a rerun — or a resumed run — gives the same text for the same backend, and a sample does not depend
on which other prompts share its batch (the transformers backend draws each row from its own `torch.Generator`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

from wpo import machine
from wpo.config import Recipe


@dataclass(frozen=True)
class SampleRequest:
    messages: list[dict[str, str]]
    seed: int


@dataclass(frozen=True)
class Sample:
    """A completion and why it ended, as every backend and server reports it: `stop` (the end-of-turn token or a
    stop string) or `length` (cut off at `max_new_tokens`); a server may report others (`content_filter`)."""

    text: str
    finish_reason: str | None


class Sampler(Protocol):
    def generate(self, requests: list[SampleRequest]) -> list[Sample]:
        """One completion per request, in request order."""
        ...


def sample_seed(run_seed: int, prompt_id: str, index: int) -> int:
    """A 31-bit seed from (run seed, prompt id, sample index): stable across runs, machines and batchings."""
    digest = hashlib.sha256(f"{run_seed}\x1f{prompt_id}\x1f{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def make_sampler(recipe: Recipe, model_path: str, key: str = "sample.backend") -> Sampler:
    """The recipe's backend (`key` names the setting it came from), once this machine has what it needs."""
    backend = recipe.sample.backend
    machine.refuse(machine.generation_backend(backend, key, recipe.sample.tensor_parallel_size))
    if backend == "transformers":
        from wpo.sampling.transformers_backend import TransformersSampler

        return TransformersSampler(model_path, recipe)
    if backend == "llamacpp":
        from wpo.sampling.llamacpp_backend import LlamaCppSampler

        return LlamaCppSampler(model_path, recipe)
    if backend == "openai":
        from wpo.sampling.openai_backend import OpenAISampler

        return OpenAISampler(recipe)
    from wpo.sampling.vllm_backend import VllmSampler

    return VllmSampler(model_path, recipe)


def cut_at_stop(text: str, stop: list[str]) -> str:
    """The text up to (not including) the first stop string, as every backend returns it."""
    positions = [text.find(s) for s in stop if s and s in text]
    return text[: min(positions)] if positions else text


def render_prompt(tokenizer, messages: list[dict[str, str]]) -> str:
    """The prompt exactly as training sees it: the chat template with the generation prompt."""
    from wpo.models import apply_chat_template

    return apply_chat_template(tokenizer, messages, add_generation_prompt=True, tokenize=False)
