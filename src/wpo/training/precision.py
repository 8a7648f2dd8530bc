"""The precision a training computes in (`compute_precision`, `make_accelerator`), and bf16 master weights that move
the forward as far as the update, not further (`benchmarks/bf16_update.py`).

Under bf16 autocast the forward computes with each fp32 master weight of a linear layer rounded to bf16. Weights
converted from a finer format (fp16, a dequantized GGUF such as the embedded SmolLM2: 8.1% of its weights) can sit
exactly halfway between two bf16 values, where any update, however small, flips the rounding: AdamW's first step at
lr 1e-6 then moves the forward ~12x further along the gradient than fp32 does. Rounding those tie weights to the
bf16 value the forward already uses (so step 0 computes the same) removes that; every other weight keeps its value,
and an update reaches the forward once it crosses a rounding boundary, as often as its size says.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs

from wpo.distributed import check_launch, state_options
from wpo.training import auto_precision, cpu_attention, zero

log = logging.getLogger(__name__)

_LOW_HALF = 0xFFFF  # the fp32 mantissa bits bf16 drops
_TIE = 0x8000  # exactly halfway between two bf16 values


def dropped_bits(tensor: torch.Tensor) -> torch.Tensor:
    """The low 16 bits of each fp32 value: what rounding to bf16 drops (0: already a bf16 value)."""
    return tensor.detach().float().contiguous().view(torch.int32) & _LOW_HALF


def on_bf16_tie(tensor: torch.Tensor) -> torch.Tensor:
    """Which fp32 values sit exactly halfway between two bf16 values."""
    return dropped_bits(tensor) == _TIE


def bf16_grid_counts(tensors: Iterable[torch.Tensor]) -> tuple[int, int, int]:
    """(weights, on a bf16 tie, already a bf16 value) over fp32 tensors."""
    total = ties = on_grid = 0
    for tensor in tensors:
        dropped = dropped_bits(tensor)
        total += dropped.numel()
        ties += int((dropped == _TIE).sum())
        on_grid += int((dropped == 0).sum())
    return total, ties, on_grid


@torch.no_grad()
def round_bf16_ties(model: torch.nn.Module) -> tuple[int, int]:
    """Round the trainable fp32 weights and biases of the linear layers that bf16 autocast computes in bf16, those
    exactly halfway between two bf16 values, to the bf16 value the forward computes with; returns (weights, ties
    rounded). Left as they are: every other weight, embeddings and norms, which the forward uses in fp32, and the
    output layer: often tied to the embedding, whose lookup would change, and its ties move the first step within
    noise (docs/performance.md)."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    total = rounded = 0
    for module in model.modules():
        if not isinstance(module, torch.nn.Linear) or module is output:
            continue
        for param in module.parameters(recurse=False):
            if param.requires_grad and param.dtype == torch.float32:
                ties = on_bf16_tie(param)
                total += param.numel()
                rounded += int(ties.sum())
                param.copy_(torch.where(ties, param.to(torch.bfloat16).float(), param))
    return total, rounded


def cpu_has_bf16_units() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16; every CPU with AMX has it too): without it a bf16
    matmul runs a slow reference kernel, with the same numerics."""
    return torch.cpu._is_avx512_bf16_supported()


def compute_precision(wanted: str, on_cpu: bool) -> str:
    """The autocast precision this training runs in: `train.mixed_precision: bf16` (fp32 on a CPU without bf16 units,
    with one line), else the launcher's choice (`accelerate launch --mixed_precision`, which sets
    ACCELERATE_MIXED_PRECISION), else none. `auto` is first resolved to bf16 or no (`wpo.training.auto_precision`,
    one line saying why) and is then exactly that value, as the run config that keys checkpoints hashes it."""
    if wanted == "auto":
        wanted, reason = auto_precision.auto_mixed_precision(auto_precision.this_machine())
        log.info("train.mixed_precision: auto -> %s (%s)", wanted, reason)
    if wanted == "no":
        return os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if on_cpu and not cpu_has_bf16_units():
        log.warning(
            "train.mixed_precision: bf16, but this CPU has no bf16 instructions (AVX512-BF16): training in fp32"
        )
        return "no"
    return "bf16"


def make_accelerator(mixed_precision: str) -> Accelerator:
    """accelerate's Accelerator, on CPU (gloo) when the machine has no accelerator device (`wpo.distributed`), in the
    precision `mixed_precision` (`train.mixed_precision`) asks for. accelerate keeps one process-wide state and
    refuses to change its precision, so a second training in the process (a notebook, a sweep over
    train.mixed_precision) drops that state first; the process group, kept in accelerate's PartialState, stays."""
    from accelerate.state import AcceleratorState

    options = state_options()
    precision = compute_precision(mixed_precision, options.get("cpu", False))
    earlier = AcceleratorState._shared_state.get("_mixed_precision")  # set once the state is initialized
    if earlier is not None and earlier != precision:
        AcceleratorState._reset_state(reset_partial_state=False)
    backend = options.pop("backend", None)
    accelerator = Accelerator(
        **options,
        mixed_precision=precision,
        kwargs_handlers=[InitProcessGroupKwargs(backend=backend)] if backend else [],
    )
    check_launch(accelerator.num_processes)
    if accelerator.mixed_precision == "bf16" and accelerator.device.type == "cpu":
        cpu_attention.use_cpu_autocast_attention()
    if zero.is_deepspeed(accelerator):
        zero.load_models_whole()
    log.info(
        "accelerate: %s, %d process(es) on %s, mixed precision: %s",
        accelerator.distributed_type.value,
        accelerator.num_processes,
        accelerator.device.type,
        accelerator.mixed_precision,
    )
    return accelerator
