"""DeepSpeed ZeRO-3 under the one trainer: the recipe sets the engine's batch and clipping, and checkpoints hold the
fp32 master weights and Adam state whole, keyed by parameter name — the same files one process or FSDP writes.

The engine partitions the model, its fp32 master copy and the Adam moments across the processes, and in bf16 mode it
computes with bf16 copies of the weights. So the weights worth saving are the masters (gathered by name with
`deepspeed.utils.safe_get_full_fp32_param`), and a resumed run must put them back into the partitions: the engine
would otherwise rebuild them from the bf16 copies and round away every update below bf16 resolution.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from wpo.config import TrainConfig
from wpo.errors import ConfigError, WpoError

log = logging.getLogger(__name__)

ADAM_MOMENTS = ("exp_avg", "exp_avg_sq")


def is_deepspeed(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.DEEPSPEED


def computes_in_bf16(accelerator: Accelerator) -> bool:
    return accelerator.state.deepspeed_plugin.deepspeed_config.get("bf16", {}).get("enabled") is True


def configure(accelerator: Accelerator, cfg: TrainConfig, pairs_per_step: int) -> None:
    """Write the recipe's batch, accumulation and clipping into the engine's config (before `prepare`), refusing a
    launcher config that sets them otherwise, or a setup this trainer does not drive."""
    plugin = accelerator.state.deepspeed_plugin
    config = plugin.deepspeed_config
    zero = config.get("zero_optimization", {})
    if zero.get("stage") != 3:
        raise ConfigError(
            f"DeepSpeed ZeRO stage {zero.get('stage')} is not supported: use ZeRO-3 "
            "(recipes/accelerate/zero3.yaml), or plain data parallel (ddp.yaml)"
        )
    if plugin.zero3_init_flag:
        raise ConfigError(
            "the accelerate config sets zero3_init_flag: true, which partitions the weights while "
            "loading; wpo computes the reference log-probs with the whole model before partitioning: "
            "set zero3_init_flag: false"
        )
    for offload in ("offload_optimizer", "offload_param"):
        if zero.get(offload, {}).get("device", "none") not in ("none", None):
            raise ConfigError(
                f"DeepSpeed {offload} is not supported (wpo steps its own torch AdamW on the "
                "accelerator): set offload_optimizer_device and offload_param_device to "
                "none"
            )
    if config.get("fp16", {}).get("enabled") is True:
        raise ConfigError("DeepSpeed fp16 (loss scaling, skipped steps) is not supported: use mixed_precision bf16")
    if "optimizer" in config or "scheduler" in config:
        raise ConfigError(
            "the DeepSpeed config names an optimizer or scheduler: remove them; the recipe's train section decides both"
        )
    wanted = {
        "train_micro_batch_size_per_gpu": cfg.per_device_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "train_batch_size": pairs_per_step,
        "gradient_clipping": float(cfg.max_grad_norm or 0.0),
    }
    for key, value in wanted.items():
        current = config.get(key, "auto")
        if current != "auto" and current != value:
            raise ConfigError(
                f"the DeepSpeed config sets {key}: {current}, but the recipe gives {value}: leave it "
                "'auto' (the recipe's train section decides it)"
            )
        config[key] = value
    accelerator.gradient_accumulation_steps = cfg.gradient_accumulation_steps
    log.info(
        "deepspeed: ZeRO-3, %s, micro-batch %d, accumulation %d, clipping %s (from the recipe)",
        "bf16 compute over fp32 masters" if computes_in_bf16(accelerator) else "fp32",
        cfg.per_device_batch_size,
        cfg.gradient_accumulation_steps,
        cfg.max_grad_norm,
    )


def load_models_whole() -> None:
    """Undo accelerate's registering its DeepSpeed config with transformers, which it does whatever zero3_init_flag
    says. Left registered, `from_pretrained` partitions weights while loading — before the reference pass, which runs
    outside the engine, and in what runs on the main process alone after training (the round-k LoRA merge, eval) — and
    `generate` waits for every process at each token. wpo partitions only in `prepare`."""
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()


def trainable_parameters(engine) -> list[tuple[str, torch.nn.Parameter]]:
    return [(name, param) for name, param in engine.module.named_parameters() if param.requires_grad]


def gather_weights(engine, keep: bool) -> dict[str, torch.Tensor]:
    """The fp32 master of every trainable parameter (full fine-tuning: all of them; LoRA: the adapter), whole, and
    the module's buffers. Every process takes part; only where `keep` are the tensors copied out."""
    from deepspeed.utils import safe_get_full_fp32_param

    state: dict[str, torch.Tensor] = {}
    for name, param in trainable_parameters(engine):
        whole = safe_get_full_fp32_param(param)
        if keep:
            state[name] = whole.cpu()
    if keep:
        buffers = {name for name, _ in engine.module.named_buffers()}
        state.update({name: value.cpu() for name, value in engine.module.state_dict().items() if name in buffers})
    return state


def gather_optimizer_state(engine, group_names: list[list[str]], keep: bool) -> dict[str, Any]:
    """Adam's state whole, keyed by parameter name, in the layout `torch.distributed.checkpoint.state_dict` gives
    for one process — so a checkpoint resumes under any launcher. Every process takes part."""
    from deepspeed.utils import safe_get_full_optimizer_state

    adam = engine.optimizer.optimizer  # the recipe's AdamW, stepping the flat fp32 partitions
    steps = {float(state["step"]) for state in adam.state.values()}
    if len(steps) != 1:
        raise WpoError(f"DeepSpeed's Adam partitions disagree on the step count: {sorted(steps)}")
    step = torch.tensor(steps.pop())
    state: dict[str, dict[str, torch.Tensor]] = {}
    for name, param in trainable_parameters(engine):
        moments = {key: safe_get_full_optimizer_state(param, key) for key in ADAM_MOMENTS}
        if keep:
            state[name] = {"step": step.clone(), **{key: value.cpu() for key, value in moments.items()}}
    groups = [
        {**{key: value for key, value in group.items() if key != "params"}, "params": names}
        for group, names in zip(adam.param_groups, group_names, strict=True)
    ]
    return {"state": state, "param_groups": groups}


def set_masters(engine, masters: dict[str, torch.Tensor]) -> None:
    """Make the fp32 masters the weights as loaded (the base, or a checkpoint's masters), not the engine's bf16
    copies of them. Every process passes the whole tensors and keeps its partition."""
    from deepspeed.utils import safe_set_full_fp32_param

    for name, param in trainable_parameters(engine):
        safe_set_full_fp32_param(param, masters[name].to(param.device))


def restore_optimizer(engine, optimizer_state: dict[str, Any], source: str) -> None:
    """Put a checkpoint's Adam state (whole, by name) into this process's partitions."""
    from deepspeed.utils import safe_set_full_optimizer_state

    adam = engine.optimizer.optimizer
    saved_groups = optimizer_state["param_groups"]
    if len(saved_groups) != len(adam.param_groups):
        raise WpoError(
            f"{source}: {len(saved_groups)} optimizer parameter groups, this run has {len(adam.param_groups)}"
        )
    saved = optimizer_state["state"]
    steps = {float(values["step"]) for values in saved.values()}
    if len(steps) != 1:
        raise WpoError(f"{source}: parameters saved at different Adam steps {sorted(steps)}")
    step_tensor = torch.tensor(steps.pop())
    for group, saved_group in zip(adam.param_groups, saved_groups, strict=True):
        group.update({key: value for key, value in saved_group.items() if key != "params"})
    for flat in engine.optimizer.fp32_partitioned_groups_flat:  # no Adam state before the first step: make room
        adam.state[flat] = {"step": step_tensor.clone(), **{key: torch.zeros_like(flat) for key in ADAM_MOMENTS}}
    for name, param in trainable_parameters(engine):
        if name not in saved:
            raise WpoError(f"{source}: no saved Adam state for parameter {name}")
        for key in ADAM_MOMENTS:
            safe_set_full_optimizer_state(param, saved[name][key].to(param.device), key)


def step(engine) -> float | None:
    """Clip (the config's gradient_clipping), step Adam and zero the gradients, as one engine call; the norm is the
    gradients' before clipping, as `clip_grad_norm_` returns it."""
    engine.step()
    norm = engine.get_global_grad_norm()
    return None if norm is None else float(norm)
