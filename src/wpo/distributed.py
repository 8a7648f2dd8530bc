"""The process layout of a launch (`torchrun`, `accelerate launch`, or a plain `wpo` command), through accelerate.

accelerate treats a `torchrun` launch as distributed only on a device it knows, or when told to run on CPU (then over
gloo); without that, each of N processes would silently do the whole job alone. So wpo asks for CPU when the
machine has no accelerator device, and a launch accelerate still does not see as distributed fails.
"""

from __future__ import annotations

import os

import torch
from accelerate import PartialState

from wpo.errors import WpoError


def on_cpu() -> bool:
    return not torch.accelerator.is_available()


def check_launch(num_processes: int) -> None:
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != num_processes:
        raise WpoError(f"launched as {launched} processes (WORLD_SIZE), but accelerate runs {num_processes}: "
                       "check the launcher and the accelerate config")  # fmt: skip


def process_state() -> PartialState:
    """This process's rank among the launch's processes, with barriers between them."""
    state = PartialState(cpu=on_cpu())
    check_launch(state.num_processes)
    return state
