"""The optimizer a training steps with, and the two memory options of full fine-tuning.

A full fine-tuning step holds fp32 weights (4 bytes a parameter), their gradients (4) and AdamW's two moments (8):
- `train.optimizer: adamw_8bit` keeps the moments in 8 bits (bitsandbytes' blockwise-quantized AdamW8bit, which runs
  on CPUs too; `pip install 'wpo[lowbit]'`): 2 bytes a parameter instead of 8. Tensors under 4096 elements keep
  fp32 moments, as bitsandbytes does.
- `train.optimizer_in_backward: true` steps each parameter as soon as backward has its whole gradient and frees the
  gradient at once (torch's `register_post_accumulate_grad_hook`, the pattern of torchtune's optimizer-in-backward),
  so the step never holds every gradient together. The optimizer stays one object over every parameter (its state,
  checkpoints, learning-rate schedule are the usual ones): each hook calls its `step()` while only that parameter
  has a gradient, and a step skips parameters without one. There is then no global gradient norm before the step,
  so it needs `train.max_grad_norm: null`, and one backward per step (`train.gradient_accumulation_steps: 1`) in
  one process (the config and the trainer refuse the rest).
"""

from __future__ import annotations

import torch

from wpo import machine
from wpo.config import TrainConfig


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, fused: bool = False) -> torch.optim.Optimizer:
    """AdamW (or bitsandbytes' AdamW8bit); like HF Trainer, biases and norm weights (1-D parameters) get no weight
    decay. `fused`: torch's fused AdamW, one pass over each weight's state where the default makes about eight (on
    the quickstart's CPU 0.13 s a step against 0.33 s). Its updates differ from the default's in the last bits, so
    bf16 trainings take it and fp32 trainings keep the default: every fp32 result stays bit for bit."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]
    settings = {"lr": cfg.learning_rate, "betas": (cfg.adam_beta1, cfg.adam_beta2), "eps": cfg.adam_epsilon}
    groups = [group for group in groups if group["params"]]
    if cfg.optimizer == "adamw_8bit":
        machine.refuse([machine.bitsandbytes()])
        from bitsandbytes.optim import AdamW8bit

        return AdamW8bit(groups, **settings)
    return torch.optim.AdamW(groups, **settings, fused=fused or None)


def step_in_backward(optimizer: torch.optim.Optimizer) -> list[torch.utils.hooks.RemovableHandle]:
    """Hook every trainable parameter so backward steps it (and drops its gradient) as soon as its gradient is
    whole; the optimizer's own `step()` after backward then finds no gradient and does nothing."""

    def step_one(param: torch.Tensor) -> None:
        optimizer.step()  # every other parameter's gradient is None here: stepped already, or not computed yet
        param.grad = None

    return [
        param.register_post_accumulate_grad_hook(step_one)
        for group in optimizer.param_groups
        for param in group["params"]
    ]
