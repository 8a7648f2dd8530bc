"""On-policy sampling behind one interface, with a seed per sample.

Every sample's randomness comes from its own seed, `sample_seed(run seed, prompt id, sample index)`, never from
global state, so a rerun — or a resumed run — gives the same text for the same backend, and a sample does not depend
on which other prompts share its batch (the transformers backend draws each row from its own `torch.Generator`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from wpo import machine
from wpo.config import EndpointConfig, EvalConfig, ModelConfig, SampleConfig
from wpo.layout import gguf_cache


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


@dataclass(frozen=True)
class Generation:
    """How to generate, whichever section asks — the sample stage's policy samples or eval's answers: the settings
    the backends read, and nothing of the recipe besides. `key` names the setting the backend came from."""

    backend: str
    key: str
    temperature: float
    top_p: float
    max_new_tokens: int
    batch_size: int  # requests handed to `generate` at once
    seed: int  # the run's (vLLM's engine seed; each sample has its own)
    cache_dir: Path  # the stage's directory, where a server's answers are cached
    conversions: Path  # the run's `gguf/`, where llamacpp keeps the F16 GGUFs it converts
    top_k: int = 0
    stop: tuple[str, ...] = ()
    samples_per_prompt: int = 1
    parallel_sequences: int | None = None  # llamacpp: sequences decoding together (default: a whole batch)
    gguf: str | None = None  # llamacpp: a GGUF of the model to sample from, instead of converting it
    threads: int | None = None
    context_length: int = 4096
    tensor_parallel_size: int = 1
    endpoint: EndpointConfig | None = None  # openai: the server whose model is the policy

    @classmethod
    def for_sampling(cls, cfg: SampleConfig, seed: int, output_dir: str | Path) -> Generation:
        """The sample stage's policy samples (`cfg.n` per prompt) for the run under `output_dir`."""
        return cls(
            backend=cfg.backend,
            key="sample.backend",
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            max_new_tokens=cfg.max_new_tokens,
            batch_size=cfg.batch_size,
            seed=seed,
            cache_dir=Path(output_dir) / "sample",
            conversions=gguf_cache(output_dir),
            top_k=cfg.top_k,
            stop=tuple(cfg.stop),
            samples_per_prompt=cfg.n,
            parallel_sequences=cfg.parallel_sequences,
            gguf=cfg.gguf,
            threads=cfg.threads,
            context_length=cfg.context_length,
            tensor_parallel_size=cfg.tensor_parallel_size,
            endpoint=cfg.endpoint,
        )

    @classmethod
    def for_eval(cls, cfg: EvalConfig, sample: SampleConfig, seed: int, output_dir: str | Path) -> Generation:
        """Eval's answers: one per prompt, a whole eval batch decoding together, from the GGUF of the model evaluated
        (never `sample.gguf`, the policy's), with `sample`'s machine settings (threads, context, GPUs)."""
        return cls(
            backend=cfg.backend,
            key="eval.backend",
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            max_new_tokens=cfg.max_new_tokens,
            batch_size=cfg.batch_size,
            seed=seed,
            cache_dir=Path(output_dir) / "eval",
            conversions=gguf_cache(output_dir),
            threads=sample.threads,
            context_length=sample.context_length,
            tensor_parallel_size=sample.tensor_parallel_size,
        )


def make_sampler(model_path: str, model: ModelConfig, generation: Generation) -> Sampler:
    """The backend `generation` names, once this machine has what it needs."""
    backend = generation.backend
    machine.refuse(machine.generation_backend(backend, generation.key, generation.tensor_parallel_size))
    if backend == "transformers":
        from wpo.sampling.transformers_backend import TransformersSampler

        return TransformersSampler(model_path, model, generation)
    if backend == "llamacpp":
        from wpo.sampling.llamacpp_backend import LlamaCppSampler

        return LlamaCppSampler(model_path, model, generation)
    if backend == "openai":
        from wpo.sampling.openai_backend import OpenAISampler

        return OpenAISampler(generation)
    from wpo.sampling.vllm_backend import VllmSampler

    return VllmSampler(model_path, model, generation)


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """The text up to (not including) the first stop string, as every backend returns it."""
    positions = [text.find(s) for s in stop if s and s in text]
    return text[: min(positions)] if positions else text


def render_prompt(tokenizer, messages: list[dict[str, str]]) -> str:
    """The prompt exactly as training sees it: the chat template with the generation prompt."""
    from wpo.models import apply_chat_template

    return apply_chat_template(tokenizer, messages, add_generation_prompt=True, tokenize=False)
