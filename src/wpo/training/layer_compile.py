"""`train.compile`: each decoder layer compiled in place by torch.compile (inductor), for long runs.

A training step at the quickstart's shapes spends about half its time outside the matmuls: norms, rotary embeddings,
the activation, the residual adds and, under bf16 autocast, the casts around every linear layer, each a separate pass
over memory. Inductor fuses them. Every layer runs the same code, so what is compiled once serves them all (in three
graphs: transformers' output-capturing hooks cut a layer at its attention and at its end); shapes are compiled dynamic
from the start, as every micro-batch has its own length.

Compiled in place (`Module.compile`), the layers keep their parameters and names: checkpoints, LoRA adapters and
the saved model are the same files. Only the float rounding of the fused ops differs from eager.
"""

from __future__ import annotations

import torch
from accelerate.utils import DistributedType

from wpo.errors import ConfigError


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated blocks, as transformers names them for device placement (`_no_split_modules`), found
    through any wrapper (PEFT, DDP)."""
    block_names = set()
    for module in model.modules():
        block_names.update(getattr(module, "_no_split_modules", None) or ())
    layers = [module for module in model.modules() if type(module).__name__ in block_names]
    if not layers:
        raise ConfigError(
            f"{type(model).__name__} names no decoder layer class (_no_split_modules) for train.compile to compile: "
            "set train.compile: false"
        )
    return layers


def compile_decoder_layers(model: torch.nn.Module, distributed_type: DistributedType) -> str:
    """Compile every decoder layer in place, dynamic shapes from the first call; returns what was done, for the log.
    The compile itself happens at the first calls, in the reference pass and the first step. Not under DeepSpeed or
    FSDP, whose hooks gather each layer's sharded weights around its call."""
    if distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
        raise ConfigError(
            f"train.compile is for one process or plain data parallel; this launch shards the weights "
            f"({distributed_type.value}): set train.compile: false"
        )
    layers = decoder_layers(model)
    for layer in layers:
        layer.compile(dynamic=True)
    kinds = sorted({type(layer).__name__ for layer in layers})
    return (
        f"train.compile: {len(layers)} decoder layers ({', '.join(kinds)}) compiled by torch.compile (inductor): "
        "the first batches wait for the compile"
    )
