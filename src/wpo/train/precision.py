"""bf16 master weights that move the forward as far as the update, not further (`benchmarks/bf16_update.py`).

Under bf16 autocast the forward computes with each fp32 master weight rounded to bf16. Weights converted from a
finer format (fp16, a dequantized GGUF such as the embedded SmolLM2: 8.1% of its weights) can sit exactly halfway
between two bf16 values, where any update, however small, flips the rounding: AdamW's first step at lr 1e-6 then
moves the forward ~12x further along the gradient than the update itself. Starting the masters on the bf16 grid (the
values the bf16 forward already uses, so step 0 computes the same) leaves no weight on a tie; from there an update
reaches the forward once it has added up to half an ulp, as when training a checkpoint saved in bf16.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

_LOW_HALF = 0xFFFF  # the fp32 mantissa bits bf16 drops
_TIE = 0x8000  # exactly halfway between two bf16 values


def bf16_grid_counts(tensors: Iterable[torch.Tensor]) -> tuple[int, int, int]:
    """(weights, on a bf16 tie, already a bf16 value) over fp32 tensors."""
    total = ties = on_grid = 0
    for tensor in tensors:
        dropped = tensor.detach().float().contiguous().view(torch.int32) & _LOW_HALF
        total += dropped.numel()
        ties += int((dropped == _TIE).sum())
        on_grid += int((dropped == 0).sum())
    return total, ties, on_grid


@torch.no_grad()
def start_masters_on_bf16_grid(model: torch.nn.Module) -> tuple[int, int]:
    """Round the trainable fp32 weights and biases of the linear layers that bf16 autocast always computes in bf16
    to those bf16 values; returns (weights, weights that changed). Left as they are, since the forward uses them in
    fp32: embeddings (looked up), norms (elementwise) and the output layer (wpo.train.chunked_loss upcasts it)."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    total = changed = 0
    for module in model.modules():
        if not isinstance(module, torch.nn.Linear) or module is output:
            continue
        for param in module.parameters(recurse=False):
            if param.requires_grad and param.dtype == torch.float32:
                rounded = param.to(torch.bfloat16).float()
                total += param.numel()
                changed += int((rounded != param).sum())
                param.copy_(rounded)
    return total, changed
