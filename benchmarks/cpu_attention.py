"""PyTorch's CPU flash attention in fp32 against bf16, forward and backward, at SmolLM2's heads and the row lengths
training has, side by side in one run: where bf16 is faster is where `wpo.training.cpu_attention` lets attention
compute in bf16 under CPU autocast (from BF16_ATTENTION_FROM tokens a row, on a CPU with AMX), and this measures that
rule on any CPU.

Each row length is timed with the mask a shared-prompt row has (prompt, chosen and rejected thirds; an answer sees
the prompt and itself) and with plain causal attention, over 4 rows of 9 query heads and 3 key/value heads of 64,
called as transformers calls it: with a mask its 3 key/value heads are repeated to 9 first (`repeat_kv`), without
one the kernel shares them (`enable_gqa`).
Printed per length: each precision's milliseconds, bf16 over fp32, and which precision the rule picks on this CPU.
Needs only torch (no wpo install), so it runs wherever a CPU with the units is at hand.

Run: python benchmarks/cpu_attention.py [--lengths 128 158 192 224 256 320 384 768] [--threads N] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

BF16_ATTENTION_FROM = 256  # wpo.training.cpu_attention's, repeated so this script needs torch alone
ROWS, HEADS, KV_HEADS, HEAD_DIM = 4, 9, 3, 64  # SmolLM2-135M's attention, the quickstart's batch


def shared_prompt_mask(length: int) -> torch.Tensor:
    """`[ROWS, 1, L, L]`: thirds of prompt, chosen and rejected; an answer sees the prompt and its own earlier tokens."""
    third = length // 3
    segment = torch.tensor([0] * third + [1] * third + [2] * (length - 2 * third))
    sees = (segment[:, None] == segment[None, :]) | (segment[None, :] == 0)
    sees &= torch.ones(length, length, dtype=torch.bool).tril()
    return sees[None, None].expand(ROWS, 1, length, length)


def milliseconds(length: int, dtype: torch.dtype, mask: torch.Tensor | None, repeats: int) -> float:
    """One forward and backward of the attention, the median of `repeats` after two warm-ups."""
    q = torch.randn(ROWS, HEADS, length, HEAD_DIM, dtype=dtype, requires_grad=True)
    k, v = (torch.randn(ROWS, KV_HEADS, length, HEAD_DIM, dtype=dtype, requires_grad=True) for _ in range(2))
    times = []
    for attempt in range(repeats + 2):
        started = time.perf_counter()
        if mask is None:
            output = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            groups = HEADS // KV_HEADS
            keys, values = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
            output = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        output.sum().backward()
        if attempt >= 2:
            times.append(time.perf_counter() - started)
    return 1e3 * sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 158, 192, 224, 256, 320, 384, 768])
    parser.add_argument("--threads", type=int, help="torch's intra-op threads (default: torch's own choice)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    amx, avx512_bf16 = torch.cpu._is_amx_tile_supported(), torch.cpu._is_avx512_bf16_supported()
    print(
        f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, AMX: {amx}, "
        f"AVX512-BF16: {avx512_bf16}, threads {torch.get_num_threads()}"
    )
    if not avx512_bf16:
        print("no bf16 units: bf16 runs PyTorch's reference kernels here, and wpo trains in fp32")
    print(f"{'tokens':>6} {'mask':<14} {'fp32 ms':>8} {'bf16 ms':>8} {'bf16/fp32':>9}  wpo computes")
    for length in args.lengths:
        for name, mask in (("shared prompt", shared_prompt_mask(length)), ("causal", None)):
            fp32 = milliseconds(length, torch.float32, mask, args.repeats)
            bf16 = milliseconds(length, torch.bfloat16, mask, args.repeats)
            picks = "bf16" if amx and length >= BF16_ATTENTION_FROM else "fp32"
            print(f"{length:>6} {name:<14} {fp32:>8.1f} {bf16:>8.1f} {bf16 / fp32:>9.2f}  {picks}")


if __name__ == "__main__":
    main()
