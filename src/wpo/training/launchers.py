"""What differs between launches, behind one small interface, so the trainer has no backend branches.

- `PlainLauncher`: one process, or plain data parallel (DDP over NCCL or gloo). Weights and Adam state are whole in
  every process.
- `FsdpLauncher`: FSDP2 full sharding. The same steps; weights and Adam state are gathered whole (on the CPU) to be
  saved and scattered back on resume.
- `ZeroLauncher`: DeepSpeed ZeRO-3 (`wpo.training.zero`). The engine owns backward, clipping and the step; checkpoints
  hold its fp32 masters and Adam state whole, by name — the same files the others write, so any launch resumes any
  checkpoint.

Each is created by `make_launcher(accelerator)` and used in this order: `prepare` (once), then per micro-batch
`accumulating` + `backward`, per optimizer step `step`, and `whole_weights` / `whole_optimizer_state` (every process
calls them; the main process keeps the tensors) to save, `restore_optimizer` to resume.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from wpo.config import TrainConfig
from wpo.training import checkpoint, zero


class PlainLauncher:
    sharded = False  # FSDP's subclass gathers and scatters the optimizer state; here every process holds it whole

    def __init__(self, accelerator: Accelerator):
        self.accelerator = accelerator

    def prepare(self, model, optimizer: torch.optim.Optimizer, cfg: TrainConfig, pairs_per_step: int):
        return self.accelerator.prepare(model, optimizer)

    def accumulating(self, model, last: bool) -> AbstractContextManager:
        """Gradients of a micro-batch that is not the step's last stay local (no all-reduce until the last)."""
        return nullcontext() if last else self.accelerator.no_sync(model)

    def backward(self, model, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)  # the loss is already the step's mean: no division by the accumulation

    def step(self, model, optimizer, max_grad_norm: float | None) -> float | None:
        """Clip (when the recipe does), step and zero the gradients; the norm before clipping, or None."""
        norm = self.accelerator.clip_grad_norm_(model.parameters(), max_grad_norm) if max_grad_norm else None
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return None if norm is None else float(norm)

    def whole_weights(self, model) -> dict[str, torch.Tensor]:
        return self.accelerator.get_state_dict(model)

    def whole_optimizer_state(self, model, optimizer) -> dict[str, Any]:
        return checkpoint.gather_optimizer_state(model, optimizer.optimizer, sharded=self.sharded)

    def restore_optimizer(self, model, optimizer, point: checkpoint.ResumePoint) -> None:
        checkpoint.load_optimizer_state(model, optimizer.optimizer, point, sharded=self.sharded)


class FsdpLauncher(PlainLauncher):
    sharded = True


class ZeroLauncher:
    def __init__(self, accelerator: Accelerator):
        self.accelerator = accelerator
        self.group_names: list[list[str]] = []

    def prepare(self, model, optimizer: torch.optim.Optimizer, cfg: TrainConfig, pairs_per_step: int):
        """The recipe sets the engine's batch and clipping; in bf16 the engine would build its fp32 masters from its
        bf16 copy of the weights (rounding them), so the loaded weights are put back as the masters."""
        names = {id(param): name for name, param in model.named_parameters()}
        self.group_names = [[names[id(param)] for param in group["params"]] for group in optimizer.param_groups]
        zero.configure(self.accelerator, cfg, pairs_per_step)
        masters = None
        if zero.computes_in_bf16(self.accelerator):
            masters = {
                name: param.detach().to("cpu", copy=True)
                for name, param in model.named_parameters()
                if param.requires_grad
            }
        model, optimizer = self.accelerator.prepare(model, optimizer)
        if masters is not None:
            zero.set_masters(model, masters)
        return model, optimizer

    def accumulating(self, model, last: bool) -> AbstractContextManager:
        model.set_gradient_accumulation_boundary(last)  # the engine reduces the gradients at the boundary
        return nullcontext()

    def backward(self, model, loss: torch.Tensor) -> None:
        model.backward(loss, scale_wrt_gas=False)  # already the step's mean

    def step(self, model, optimizer, max_grad_norm: float | None) -> float | None:
        norm = zero.step(model)  # clipping is the engine's (configured from the recipe in `prepare`)
        return norm if max_grad_norm else None  # logged as the others log it: only when clipping

    def whole_weights(self, model) -> dict[str, torch.Tensor]:
        return zero.gather_weights(model, keep=self.accelerator.is_main_process)

    def whole_optimizer_state(self, model, optimizer) -> dict[str, Any]:
        return zero.gather_optimizer_state(model, self.group_names, keep=self.accelerator.is_main_process)

    def restore_optimizer(self, model, optimizer, point: checkpoint.ResumePoint) -> None:
        zero.restore_optimizer(model, checkpoint.read_optimizer_state(point), str(point.path))


Launcher = PlainLauncher | FsdpLauncher | ZeroLauncher


def make_launcher(accelerator: Accelerator) -> Launcher:
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return ZeroLauncher(accelerator)
    if accelerator.distributed_type == DistributedType.FSDP:
        return FsdpLauncher(accelerator)
    return PlainLauncher(accelerator)
