"""The machine's matmul peak in fp32 and bf16, side by side in one run, and what `train.mixed_precision: bf16` will
do here: bf16 pays only where the CPU has bf16 instructions (AVX512-BF16 or AMX); without them PyTorch runs a
reference kernel two orders of magnitude slower than fp32, which is why wpo falls back to fp32 there.

Run: python benchmarks/matmul_peak.py [--size 1024] [--repeats 10]
"""

from __future__ import annotations

import argparse
import time

import torch


def gflops(size: int, repeats: int, dtype: torch.dtype, shape: tuple[int, int, int] | None = None) -> float:
    """GFLOP/s of `repeats` products of (m x k) @ (k x n): `shape` = (m, k, n), square `size` by default."""
    m, k, n = shape or (size, size, size)
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    a @ b  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * m * k * n * repeats / (time.perf_counter() - started) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    supported = torch.cpu._is_avx512_bf16_supported()
    print(
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, AVX512-BF16: {supported}, "
        f"threads {torch.get_num_threads()}"
    )
    fp32 = gflops(args.size, args.repeats, torch.float32)
    bf16 = gflops(args.size, max(1, args.repeats // 10) if not supported else args.repeats, torch.bfloat16)
    print(
        f"{args.size}x{args.size} matmul: fp32 {fp32:.1f} GFLOP/s, bf16 {bf16:.1f} GFLOP/s, bf16/fp32 {bf16 / fp32:.2f}x"
    )
    print("train.mixed_precision: bf16 here:", "bf16 compute" if supported else "falls back to fp32 (one line)")


if __name__ == "__main__":
    main()
