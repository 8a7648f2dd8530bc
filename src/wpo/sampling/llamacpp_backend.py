"""llama.cpp on a GGUF of the policy, many samples per decode call: the fast CPU path.

The prompt is rendered with the HF tokenizer's chat template (the same text training sees) and tokenized by llama.cpp.
Up to `sample.parallel_sequences` samples (by default a whole stage batch) decode together, one llama.cpp sequence
each, one token of each per `llama_decode` call: the weights are read once per call for all of them, and where
llama.cpp has matrix-matrix kernels for the weights' type (F16, Q8_0, Q4_0 on AVX2; not Q4_1) a call of 32 rows costs
far less than 32 calls.
The samples of a prompt share it: it is decoded once and its KV copied to each sample's sequence. A finished sample
(end-of-turn token, stop string or `max_new_tokens`) frees its sequence for the next waiting request.

Each sample draws from its own seeded sampler chain and its own KV stream (`kv_unified` off); a prompt is decoded
alone; the running samples stay in sequences 0..k-1, so a call is always one micro-batch; a lone sample gets a
padding row (llama.cpp multiplies one row with another kernel than several, and splits a lone query's attention by
thread). What holds on every CPU: the text is fixed by the seed, the GGUF, the CPU, and what decodes together
(`sample.batch_size`, `parallel_sequences`, `threads`), so the same recipe on the same machine — a rerun, a resumed
stage — gives the same candidates. On AVX2 the text also came out the same for 1, 4 and 16 sequences; on AVX512
llama.cpp's kernels change their rounding with the number of rows in more ways than the padding row pins, and it
does not (docs/performance.md).

The chain applies temperature, then top-k, then top-p on the tempered distribution, then draws (temperature 0:
greedy), as the transformers backend does; llama.cpp's extras (min_p, repeat penalty) are left out.

Uses llama-cpp-python's low-level API as of 0.3.36 (`llama_memory_*`, which replaced `llama_kv_self_*` /
`llama_kv_cache_*`; llama.cpp's split of a batch over KV streams); pyproject pins that version.
"""

from __future__ import annotations

import ctypes
import logging
import os
import weakref
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp

from wpo.config import ModelConfig
from wpo.errors import ConfigError, WpoError
from wpo.layout import cache_root, converted_policy_path
from wpo.llamacpp import crash_reported_llama, model_params
from wpo.models import load_tokenizer, resolve_model_path
from wpo.sampling import Generation, Sample, SampleRequest, cut_at_stop, render_prompt

log = logging.getLogger(__name__)

# A sequence's KV stream is sized in steps of this many tokens, so similar batches reuse one context.
CONTEXT_STEP = 256
MAX_SEQUENCES = 256  # llama.cpp's LLAMA_MAX_SEQ


def gguf_to_sample(model: ModelConfig, gguf: str | None, model_dir: Path | None, cache: Path) -> Path:
    """The GGUF to sample from: `gguf` when given, the model itself when it is a GGUF, or — for the embedded model
    and an HF model directory such as round k's policy — an F16 conversion (`converted_policy`, cached under `cache`,
    the run's `gguf/`). The embedded model is trained from its GGUF's dequantized weights; their F16 copy is what
    training starts from, and samples ~1.6× faster batched than the shipped Q4_1, which has no matrix-matrix kernel
    on AVX2."""
    name = model.name_or_path
    if gguf:
        return Path(gguf)
    if name.endswith(".gguf"):
        return Path(name)
    if name.startswith("embedded:"):
        return converted_policy(Path(resolve_model_path(name)), cache_root() / "gguf", model.trust_remote_code)
    if model_dir is not None and any((model_dir / f).is_file() for f in ("config.json", "adapter_config.json")):
        return converted_policy(model_dir, cache, model.trust_remote_code)
    raise ConfigError(
        f"sample.backend: llamacpp needs a GGUF of the policy; {name} is neither a GGUF nor a local HF model "
        "directory: set sample.gguf to a GGUF of it (wpo export writes one)"
    )


def converted_policy(model_dir: Path, cache: Path, trust_remote_code: bool = False) -> Path:
    """An F16 GGUF of an HF model directory (a LoRA adapter merged first), converted once and cached under `cache`
    by the sha256 of its weights and config: round k's policy is converted when its sampling starts, and a rerun, or
    the eval of the same weights, finds it. F16 keeps the weights as trained (a quantized policy would sample another
    distribution) and is the type llama.cpp batches fastest on AVX2."""
    from wpo.exporting.convert import export_gguf
    from wpo.models import merged_model_dir

    whole = merged_model_dir(model_dir, cache, trust_remote_code)
    target = converted_policy_path(whole, cache)
    if not target.is_file():
        log.info("llama.cpp: converting %s to an F16 GGUF (%s)", model_dir, target)
        export_gguf(whole, target.parent, "policy", ["F16"])
    return target


@dataclass
class _Sample:
    """One request being decoded: its sampler chain, the text so far, and the token to feed next."""

    request: int
    chain: llama_cpp.llama_sampler_p
    position: int  # of `token` in the sequence: the prompt's last token, then each drawn token's
    token: int = -1
    n_generated: int = 0
    text: bytearray = field(default_factory=bytearray)
    finish_reason: str = "stop"  # "length" once max_new_tokens ends it


@dataclass
class _PromptGroup:
    """Requests with the same prompt tokens, in request order, not yet decoding."""

    tokens: list[int]
    requests: deque[int]


class LlamaCppSampler:
    def __init__(self, model_path: str, model: ModelConfig, generation: Generation):
        cfg = self.config = generation
        self.parallel = cfg.parallel_sequences or min(max(cfg.batch_size * cfg.samples_per_prompt, 1), MAX_SEQUENCES)
        self.stop = [s for s in cfg.stop if s]  # checked after every token, so built once
        self.tokenizer = load_tokenizer(model_path, model.trust_remote_code)
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # llama.cpp's load and context chatter
        llama_cpp.llama_backend_init()
        gguf = self.gguf = gguf_to_sample(model, cfg.gguf, Path(model_path), cfg.conversions)
        self.model = llama_cpp.llama_model_load_from_file(str(gguf).encode(), model_params())
        if not self.model:
            raise WpoError(f"llama.cpp could not load {gguf}")
        weakref.finalize(self, llama_cpp.llama_model_free, self.model)
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.release_context: weakref.finalize | None = None
        self.sequence_capacity = 0  # tokens per sequence of the current context; 0 before the first

    def tokenize(self, text: str) -> list[int]:
        """llama.cpp's tokens for a rendered prompt: special tokens parsed, no BOS added (the template has its own)."""
        data = text.encode("utf-8")
        buffer = (llama_cpp.llama_token * (len(data) + 8))()
        count = llama_cpp.llama_tokenize(self.vocab, data, len(data), buffer, len(buffer), False, True)
        if count < 0:
            raise WpoError(f"llama.cpp could not tokenize a prompt of {len(data)} bytes")
        return list(buffer[:count])

    def piece(self, token: int, size: int = 64) -> bytes:
        """The token's text as bytes (a piece may end inside a UTF-8 character); special tokens render empty."""
        buffer = ctypes.create_string_buffer(size)
        length = llama_cpp.llama_token_to_piece(self.vocab, token, buffer, size, 0, False)
        return buffer.raw[:length] if length >= 0 else self.piece(token, -length)

    def _ensure_context(self, longest_prompt: int) -> None:
        """A context with a KV stream per sequence, each long enough for the longest prompt plus `max_new_tokens`;
        rebuilt only when a batch needs longer streams (KV memory is streams x length). A lone running sample needs
        a second stream for its padding row, hence at least 2."""
        cfg = self.config
        needed = longest_prompt + cfg.max_new_tokens
        if needed > cfg.context_length:
            raise ConfigError(
                f"a prompt of {longest_prompt} tokens plus sample.max_new_tokens {cfg.max_new_tokens} "
                f"exceeds sample.context_length {cfg.context_length}"
            )
        if needed <= self.sequence_capacity:
            return
        if self.release_context:
            self.release_context()
        length = min(-(-needed // CONTEXT_STEP) * CONTEXT_STEP, cfg.context_length)
        streams = max(self.parallel, 2)
        params = llama_cpp.llama_context_default_params()
        params.n_seq_max = streams
        params.n_ctx = length * streams
        params.n_batch = max(length, streams)  # a whole prompt, or one token of every sequence
        params.n_outputs_max = streams
        params.n_threads = params.n_threads_batch = cfg.threads or os.cpu_count() or 1
        params.kv_unified = False  # a stream per sequence: a sample's attention never sees its batch-mates' cells
        # llama.cpp's default, about 10% faster here than plain attention. Its CPU kernel depends on the shape only
        # for one query row over one KV stream of 512+ cells (split by thread); the padding row rules that out.
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
        params.no_perf = True
        context = llama_cpp.llama_init_from_model(self.model, params)
        if not context:
            raise WpoError(f"llama.cpp could not create a context of {streams} x {length} tokens")
        batch = llama_cpp.llama_batch_init(params.n_batch, 0, 1)
        # finalizers run newest first, so the context goes before the model it was made from
        self.release_context = weakref.finalize(self, _release, context, batch)
        self.context, self.batch = context, batch
        self.memory = llama_cpp.llama_get_memory(context)
        self.sequence_capacity = llama_cpp.llama_n_ctx_seq(context)

    def _sampler_chain(self, seed: int) -> llama_cpp.llama_sampler_p:
        cfg = self.config
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        if cfg.temperature == 0.0:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
            return chain
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_temp(cfg.temperature))
        if cfg.top_k > 0:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_k(cfg.top_k))
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_p(cfg.top_p, 1))
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(seed))
        return chain

    def generate(self, requests: list[SampleRequest]) -> list[Sample]:
        if not requests:
            return []
        groups: dict[tuple[int, ...], _PromptGroup] = {}
        for index, request in enumerate(requests):
            tokens = self.tokenize(render_prompt(self.tokenizer, request.messages))
            groups.setdefault(tuple(tokens), _PromptGroup(tokens, deque())).requests.append(index)
        self._ensure_context(max(len(tokens) for tokens in groups))
        llama_cpp.llama_memory_clear(self.memory, False)
        texts: list[Sample] = [Sample("", "stop")] * len(requests)
        waiting = deque(groups.values())
        active: list[_Sample] = []  # active[i] decodes in llama.cpp sequence i
        with crash_reported_llama(f"sampling from {self.gguf}"):
            try:
                while waiting or active:
                    while waiting and len(active) < self.parallel:
                        self._admit(waiting, requests, active, texts)
                    if active:
                        self._decode_step(active, texts)
            finally:
                for sample in active:
                    llama_cpp.llama_sampler_free(sample.chain)
        return texts

    def _admit(
        self, waiting: deque[_PromptGroup], requests: list[SampleRequest], active: list[_Sample], texts: list[Sample]
    ) -> None:
        """Start the next waiting requests of one prompt, as many as there are free sequences: decode the prompt
        alone (its arithmetic then never depends on what else is decoding), draw each sample's first token from its
        logits, and copy the prompt's KV to the sequence of every sample that goes on."""
        group = waiting[0]
        count = min(len(group.requests), self.parallel - len(active))
        members = [group.requests.popleft() for _ in range(count)]
        if not group.requests:
            waiting.popleft()
        first = len(active)
        self._batch_clear()
        for position, token in enumerate(group.tokens):
            self._batch_add(token, position, first, logits=position == len(group.tokens) - 1)
        self._decode()
        for request in members:
            sample = _Sample(request, self._sampler_chain(requests[request].seed), position=len(group.tokens) - 1)
            if self._draw(sample, len(group.tokens) - 1):
                self._finish(sample, texts)
                continue
            if len(active) != first:
                llama_cpp.llama_memory_seq_cp(self.memory, first, len(active), -1, -1)
            active.append(sample)
        if len(active) == first:  # every sample ended at its first token
            llama_cpp.llama_memory_seq_rm(self.memory, first, -1, -1)

    def _decode_step(self, active: list[_Sample], texts: list[Sample]) -> None:
        """One token for every running sample in one call, then the finished ones leave. The running samples stay
        in sequences 0..k-1: llama.cpp splits a call over separate KV streams into one micro-batch only for
        consecutive sequence ids, and one micro-batch is both the fast path and a fixed shape. A lone sample gets a
        padding row in the next sequence, since a one-row matmul takes another kernel (other rounding) than
        several rows."""
        self._batch_clear()
        for sequence, sample in enumerate(active):
            self._batch_add(sample.token, sample.position, sequence, logits=True)
        if len(active) == 1:
            self._batch_add(active[0].token, 0, 1, logits=False)
        self._decode()
        if len(active) == 1:
            llama_cpp.llama_memory_seq_rm(self.memory, 1, -1, -1)
        finished = [sequence for sequence, sample in enumerate(active) if self._draw(sample, sequence)]
        if not finished:
            return
        for sequence in finished:
            self._finish(active[sequence], texts)
            llama_cpp.llama_memory_seq_rm(self.memory, sequence, -1, -1)
        running = len(active) - len(finished)
        holes = [sequence for sequence in finished if sequence < running]
        movers = [sequence for sequence in range(running, len(active)) if sequence not in finished]
        for hole, mover in zip(holes, movers, strict=True):  # a mover is never a hole: no copy waits on another
            llama_cpp.llama_memory_seq_cp(self.memory, mover, hole, -1, -1)
            llama_cpp.llama_memory_seq_rm(self.memory, mover, -1, -1)
            active[hole] = active[mover]
        del active[running:]

    def _draw(self, sample: _Sample, logits_index: int) -> bool:
        """Draw the sample's next token from the logits at `logits_index` of the last call; True when it is done."""
        token = llama_cpp.llama_sampler_sample(sample.chain, self.context, logits_index)
        if llama_cpp.llama_vocab_is_eog(self.vocab, token):
            return True
        sample.text += self.piece(token)
        sample.n_generated += 1
        sample.token = token
        sample.position += 1
        if self.stop and any(s in sample.text.decode("utf-8", errors="ignore") for s in self.stop):
            return True
        if sample.n_generated >= self.config.max_new_tokens:
            sample.finish_reason = "length"
            return True
        return False

    def _finish(self, sample: _Sample, texts: list[Sample]) -> None:
        text = cut_at_stop(sample.text.decode("utf-8", errors="ignore"), self.config.stop)
        texts[sample.request] = Sample(text, sample.finish_reason)
        llama_cpp.llama_sampler_free(sample.chain)

    def _batch_clear(self) -> None:
        self.batch.n_tokens = 0

    def _batch_add(self, token: int, position: int, sequence: int, logits: bool) -> None:
        index = self.batch.n_tokens
        self.batch.token[index] = token
        self.batch.pos[index] = position
        self.batch.n_seq_id[index] = 1
        self.batch.seq_id[index][0] = sequence
        self.batch.logits[index] = logits
        self.batch.n_tokens = index + 1

    def _decode(self) -> None:
        status = llama_cpp.llama_decode(self.context, self.batch)
        if status != 0:
            raise WpoError(f"llama_decode failed with status {status} on a batch of {self.batch.n_tokens} tokens")


def _release(context: llama_cpp.llama_context_p, batch: llama_cpp.llama_batch) -> None:
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(context)
