"""Sampling throughput on the quickstart's prompts and settings: transformers fp32 vs llama.cpp, one sequence at a
time and batched, in one run.

Every configuration samples the same requests: the first `--prompts` prompts of recipes/quickstart.yaml's prompts
file x its sample.n, with its seeds, temperature, top_p and max_new_tokens, in the sample stage's batches of
sample.batch_size prompts (one `generate` call each). Generated tokens are counted with the policy's HF tokenizer for
every configuration, so the ratios compare like with like.
- transformers fp32: the previous quickstart sampler (the embedded model dequantized to fp32); transformers bf16
  too where the CPU has bf16 units.
- llamacpp one at a time: `Llama.create_completion` per request, which is what the llamacpp backend did before it
  batched; kept here only as the reference. On the embedded Q4_1 GGUF.
- llamacpp batched: the llamacpp backend, a whole stage batch (or `--parallel-sequences` samples) per decode call,
  on the embedded Q4_1 GGUF and on the backend's default, an F16 conversion of the dequantized weights (the same
  weights). On AVX2, llama.cpp multiplies several rows at once with matrix-matrix kernels for F16 (and Q8_0, Q4_0)
  but takes Q4_1 one dot product at a time, so batching pays off far more in F16; an F16 GGUF is also what a trained
  policy is exported to.

llama.cpp's threads spin at every layer's barrier: on a machine shared with other work, --threads below the core
count can be many times faster (the load average is printed before and after). --threads applies to torch too.

Run: python benchmarks/sampling_throughput.py [--prompts 16] [--threads N] [--parallel-sequences N]
"""

from __future__ import annotations

import argparse
import gc
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from wpo.config import Recipe, load_recipe
from wpo.data.io import BadRecordPolicy
from wpo.models import embedded_gguf, load_tokenizer, resolve_model_path
from wpo.sampling import (
    Generation,
    Sample,
    Sampler,
    SampleRequest,
    cut_at_stop,
    make_sampler,
    render_prompt,
    sample_seed,
)
from wpo.sampling.stage import batch_plan, load_prompts
from wpo.training.precision import cpu_has_bf16_units

QUICKSTART = Path(__file__).resolve().parent.parent / "recipes" / "quickstart.yaml"
SIMD_LEVELS = [("avx512_bf16", "AVX512-BF16"), ("avx512f", "AVX512"), ("avx2", "AVX2")]  # /proc/cpuinfo flag, name


class OneSequenceAtATime:
    """The llamacpp backend as it was before batching: one `create_completion` per request."""

    def __init__(self, model_path: str, recipe: Recipe, threads: int):
        from wpo.llamacpp import open_llama

        self.config = recipe.sample
        self.tokenizer = load_tokenizer(model_path)
        self.llm = open_llama(
            embedded_gguf(recipe.model.name_or_path),
            n_ctx=recipe.sample.context_length,
            n_threads=threads,
            n_threads_batch=threads,
            seed=recipe.seed,
            verbose=False,
        )

    def generate(self, requests: list[SampleRequest]) -> list[Sample]:
        cfg = self.config
        samples = []
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
            choice = completion["choices"][0]
            samples.append(Sample(cut_at_stop(choice["text"], cfg.stop), choice["finish_reason"]))
        return samples


def cpu_name() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    simd = next((name for flag, name in SIMD_LEVELS if flag in flags), "no AVX2")
    return f"{names[0] if names else 'unknown CPU'}, {os.cpu_count()} cores, {simd}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--parallel-sequences", type=int, help="default: the backend's, a whole stage batch")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipe = load_recipe(str(QUICKSTART), [])
    cfg = recipe.sample
    model_path = resolve_model_path(recipe.model.name_or_path)
    tokenizer = load_tokenizer(model_path)
    prompts = load_prompts(recipe.sample, BadRecordPolicy())[: args.prompts]
    batches = [
        [SampleRequest(p.messages, sample_seed(recipe.seed, p.id, k)) for p in batch for k in range(cfg.n)]
        for batch in batch_plan(prompts, cfg.batch_size)
    ]
    parallel = args.parallel_sequences or cfg.batch_size * cfg.n
    llamacpp = ["sample.backend=llamacpp", f"sample.threads={args.threads}", f"sample.parallel_sequences={parallel}"]
    load_before = os.getloadavg()[0]
    fp32 = load_recipe(str(QUICKSTART), ["sample.backend=transformers", "model.dtype=float32"])
    bf16 = load_recipe(
        str(QUICKSTART), ["sample.backend=transformers", "model.dtype=bfloat16", "train.low_precision_weights=true"]
    )  # only sampled here, never trained
    q4_1 = load_recipe(str(QUICKSTART), [*llamacpp, f"sample.gguf={embedded_gguf(recipe.model.name_or_path)}"])
    f16 = load_recipe(str(QUICKSTART), llamacpp)  # the backend's default: an F16 conversion of the policy
    configurations: dict[str, Callable[[], Sampler]] = {
        "transformers fp32": lambda: make_sampler(
            model_path, fp32.model, Generation.for_sampling(fp32.sample, fp32.seed, fp32.output_dir)
        ),
        "llamacpp Q4_1, one at a time": lambda: OneSequenceAtATime(model_path, recipe, args.threads),
        "llamacpp Q4_1, batched": lambda: make_sampler(
            model_path, q4_1.model, Generation.for_sampling(q4_1.sample, q4_1.seed, q4_1.output_dir)
        ),
        "llamacpp F16, batched": lambda: make_sampler(
            model_path, f16.model, Generation.for_sampling(f16.sample, f16.seed, f16.output_dir)
        ),
    }
    if cpu_has_bf16_units():  # the check the trainer makes before bf16 compute
        configurations["transformers bf16"] = lambda: make_sampler(
            model_path, bf16.model, Generation.for_sampling(bf16.sample, bf16.seed, bf16.output_dir)
        )
    else:  # bf16 matmuls are emulated without the units, ~100x slower than fp32 (benchmarks/matmul_peak.py)
        print("transformers bf16: skipped, this CPU has no bf16 instructions (AVX512-BF16)")
    results = {}
    for name, build in configurations.items():
        sampler = build()
        started = time.perf_counter()
        texts = [sample.text for batch in batches for sample in sampler.generate(batch)]
        seconds = time.perf_counter() - started
        tokens = sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts)
        results[name] = (tokens, seconds)
        del sampler
        gc.collect()
        print(f"{name}: {tokens} tokens in {seconds:.1f} s", flush=True)
    base_tokens, base_seconds = results["transformers fp32"]
    print(
        f"\nSmolLM2-135M-Instruct, {len(prompts)} quickstart prompts x {cfg.n} samples, T {cfg.temperature}, "
        f"top_p {cfg.top_p}, max_new_tokens {cfg.max_new_tokens}, {cfg.batch_size} prompts per call; "
        f"{args.threads} threads, llama.cpp parallel_sequences {parallel}"
    )
    print(f"{cpu_name()}; load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    print(f"{'configuration':<30} {'tokens':>7} {'seconds':>8} {'tokens/s':>9} {'x transformers fp32':>20}")
    for name, (tokens, seconds) in results.items():
        speed = tokens / seconds
        print(f"{name:<30} {tokens:>7} {seconds:>8.1f} {speed:>9.1f} {speed / (base_tokens / base_seconds):>20.2f}")


if __name__ == "__main__":
    main()
