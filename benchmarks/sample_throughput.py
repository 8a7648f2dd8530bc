"""Generated tokens per second: transformers vs llama.cpp backends on the embedded SmolLM2-135M, same prompts.

Both backends get the same 8 prompts x N samples with the same per-sample seeds; generated tokens are counted with
the policy's HF tokenizer for both, so the ratio compares like with like. transformers runs the dequantized fp32
weights batched (`--batch-size` prompts per call); llama.cpp runs the Q4_1 GGUF one completion at a time.

Run: python benchmarks/sample_throughput.py [--n 2] [--max-new-tokens 64] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import time

from wpo.config import load_recipe
from wpo.models import load_tokenizer, resolve_model_path
from wpo.sampling import SampleRequest, make_sampler, sample_seed

QUESTIONS = [
    "What is the capital of France?", "Write a haiku about autumn.", "Explain photosynthesis in two sentences.",
    "Give three tips for learning to cook.", "What does a compiler do?", "Describe the water cycle briefly.",
    "Why is the sky blue?", "Suggest a name for a grey cat.",
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    model_path = resolve_model_path("embedded:smollm2-135m-instruct")
    tokenizer = load_tokenizer(model_path)
    requests = [SampleRequest([{"role": "user", "content": q}], sample_seed(1, f"q{i}", k))
                for i, q in enumerate(QUESTIONS) for k in range(args.n)]  # fmt: skip
    results = {}
    for backend in ("transformers", "llamacpp"):
        recipe = load_recipe(None, [f"sample.backend={backend}", f"sample.max_new_tokens={args.max_new_tokens}",
                                    f"sample.n={args.n}"])  # fmt: skip
        sampler = make_sampler(recipe, model_path)
        chunk = args.batch_size * args.n if backend == "transformers" else len(requests)
        started = time.perf_counter()
        texts = []
        for start in range(0, len(requests), chunk):
            texts += sampler.generate(requests[start : start + chunk])
        seconds = time.perf_counter() - started
        tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
        results[backend] = (tokens, seconds)
        del sampler
    base_tokens, base_seconds = results["transformers"]
    print(f"SmolLM2-135M, {len(QUESTIONS)} prompts x {args.n} samples, max_new_tokens {args.max_new_tokens}")
    print(f"{'backend':<14} {'tokens':>7} {'seconds':>8} {'tokens/s':>9} {'x transformers':>15}")
    for backend, (tokens, seconds) in results.items():
        speed = tokens / seconds
        print(f"{backend:<14} {tokens:>7} {seconds:>8.1f} {speed:>9.1f} {speed / (base_tokens / base_seconds):>15.2f}")


if __name__ == "__main__":
    main()
