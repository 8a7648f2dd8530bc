"""The process layout of a launch (`torchrun`, `accelerate launch`, or a plain `wpo` command), through accelerate.

accelerate treats a `torchrun` launch as distributed only on a device it knows, or when told to run on CPU (then over
gloo); without that, each of N processes would silently do the whole job alone. So wpo asks for CPU when the
machine has no accelerator device, and a launch accelerate still does not see as distributed fails.
"""

from __future__ import annotations

import os

import torch
from accelerate import PartialState

from wpo.errors import ConfigError, WpoError


def on_cpu() -> bool:
    return not torch.accelerator.is_available()


# Stages that split their work across the processes of a launch; the others, and `wpo run`, would only repeat the
# whole job in every process.
MULTI_PROCESS_STAGES = ("sample", "score", "train")


def launched_processes() -> int:
    """How many processes the launcher started (`torchrun` and `accelerate launch` set WORLD_SIZE; 1 without one)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_launch(num_processes: int) -> None:
    launched = launched_processes()
    if launched != num_processes:
        raise WpoError(f"launched as {launched} processes (WORLD_SIZE), but accelerate runs {num_processes}: "
                       "check the launcher and the accelerate config")  # fmt: skip


def process_state() -> PartialState:
    """This process's rank among the launch's processes, with barriers between them."""
    state = PartialState(cpu=on_cpu())
    check_launch(state.num_processes)
    return state


def process_device() -> torch.device:
    """Where this process computes: its own GPU under a multi-GPU launch (cuda:LOCAL_RANK), else the one device."""
    return process_state().device


def refuse_a_launcher(what: str) -> None:
    processes = launched_processes()
    if processes > 1:
        raise ConfigError(f"{what} runs in one process, not as {processes}: launch it without torchrun or accelerate "
                          f"(only {', '.join(MULTI_PROCESS_STAGES[:-1])} and {MULTI_PROCESS_STAGES[-1]} split across "
                          "processes; under a launcher, wpo run runs the others on the main process)")  # fmt: skip
