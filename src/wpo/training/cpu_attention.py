"""Attention under CPU autocast, in whichever precision PyTorch's CPU flash kernel runs faster.

Every linear layer runs ~9x faster in bf16 on a CPU with AMX, but the flash kernel does not: on short rows it is
slower in bf16 than in fp32 (`attention_in_fp32`). Installed only for bf16 on CPU (`precision.make_accelerator`), so
fp32 trainings compute exactly as before; with autocast off (and on a GPU) it is transformers' function unchanged.
"""

from __future__ import annotations

import torch

from wpo.training import auto_precision

# the row length from which PyTorch's CPU flash attention runs at least as fast in bf16 as in fp32 on a CPU with AMX
# (benchmarks/cpu_attention.py: SmolLM2's heads, 4 rows, forward + backward, 2 threads, bf16/fp32 with a shared-prompt
# mask: 158 tokens 1.75, 192 1.45, 224 1.01, 256 0.98, 384 0.84, 768 0.68); below it the small bf16 blocks lose
BF16_ATTENTION_FROM = 256


def attention_in_fp32(query_length: int, amx: bool) -> bool:
    """Under CPU autocast, whether attention over `query_length` queries computes in fp32 rather than bf16: below
    BF16_ATTENTION_FROM, and at every length on a CPU without AMX, where bf16 attention was not measured faster."""
    return not amx or query_length < BF16_ATTENTION_FROM


def how_attention_computes(mixed_precision: str, device_type: str) -> str:
    """What the reference cache key records of the attention: in another precision its log-probs differ in their
    last bits."""
    if mixed_precision != "bf16" or device_type != "cpu":
        return "the model's own"
    if _has_amx():
        return f"fp32 below {BF16_ATTENTION_FROM} tokens a row, bf16 from there"
    return "fp32"


@torch.compiler.assume_constant_result  # a compiled layer (train.compile) reads it once, not through the lru_cache
def _has_amx() -> bool:
    return auto_precision.this_machine().amx


def sdpa_for_cpu_autocast(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention, computed in fp32 under CPU autocast where bf16 would be slower
    (`attention_in_fp32`); elsewhere (long rows with AMX, no autocast, a GPU) transformers' function unchanged."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cpu_autocast = query.device.type == "cpu" and torch.is_autocast_enabled("cpu")
    if not cpu_autocast or not attention_in_fp32(query.shape[2], _has_amx()):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if attention_mask is not None and attention_mask.is_floating_point():  # an additive mask, in the inputs' dtype
        attention_mask = attention_mask.float()
    with torch.autocast("cpu", enabled=False):
        return sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask, **kwargs)


def use_cpu_autocast_attention() -> None:
    """Route the "sdpa" attention of every model in this process through `sdpa_for_cpu_autocast`."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    ALL_ATTENTION_FUNCTIONS["sdpa"] = sdpa_for_cpu_autocast
