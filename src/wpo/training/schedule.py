"""Which pairs each optimizer step trains on, and which of them each process takes in each micro-batch. Pure.

The schedule is a function of (seed, epoch) only, so a resumed run sees exactly the pairs the uninterrupted run would
have, and its fingerprint (pairs per step, total steps) is what a checkpoint must match to resume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from wpo.config import TrainConfig
from wpo.errors import ConfigError, DataError


@dataclass(frozen=True)
class Schedule:
    """A seeded permutation of the pairs per epoch, cut into steps of `pairs_per_step`."""

    pair_count: int
    pairs_per_step: int
    steps_per_epoch: int
    total_steps: int
    seed: int
    num_processes: int

    def step_indices(self, step: int) -> list[int]:
        epoch, within = divmod(step, self.steps_per_epoch)
        generator = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(self.pair_count, generator=generator).tolist()
        return order[within * self.pairs_per_step : (within + 1) * self.pairs_per_step]

    def fingerprint(self) -> dict[str, int]:
        """What a checkpoint must match to resume exactly (the global batch and the step count), and the process
        count it came from, for the message when it does not."""
        return {
            "global_batch_pairs": self.pairs_per_step,
            "total_steps": self.total_steps,
            "num_processes": self.num_processes,
        }


def build_schedule(pair_count: int, cfg: TrainConfig, seed: int, num_processes: int) -> Schedule:
    per_step = cfg.per_device_batch_size * cfg.gradient_accumulation_steps * num_processes
    if cfg.global_batch_size is not None and cfg.global_batch_size != per_step:
        raise ConfigError(
            f"train.global_batch_size is {cfg.global_batch_size}, but per_device_batch_size "
            f"{cfg.per_device_batch_size} x gradient_accumulation_steps {cfg.gradient_accumulation_steps} x "
            f"{num_processes} processes = {per_step}; launch with the intended number of processes "
            "(accelerate launch --config_file ...) or change the accumulation"
        )
    if num_processes > 1:
        steps_per_epoch = pair_count // per_step  # every process must see full micro-batches
    else:
        steps_per_epoch = math.ceil(pair_count / per_step)  # the last step of an epoch may be smaller
    if steps_per_epoch == 0:
        raise DataError(f"{pair_count} pairs are fewer than one optimizer step's {per_step} pairs")
    total = cfg.max_steps or steps_per_epoch * cfg.num_epochs
    return Schedule(pair_count, per_step, steps_per_epoch, total, seed, num_processes)


def micro_batches(step_pairs: list[int], per_device: int, accumulation: int, world: int, rank: int) -> list[list[int]]:
    """This process's micro-batches of one step's pairs: micro-batch k of process r holds the pairs at
    `(k * world + r) * per_device` onwards, so the processes take turns within each micro-batch round and a short last
    step of an epoch drops only the empty tail."""
    batches = []
    for k in range(accumulation):
        begin = (k * world + rank) * per_device
        if step_pairs[begin : begin + per_device]:
            batches.append(step_pairs[begin : begin + per_device])
    return batches
