"""The process layout of a launch (`torchrun`, `accelerate launch`, or a plain `wpo` command), through accelerate.

accelerate treats a `torchrun` launch as distributed only on a device it knows, or when told to run on CPU (then over
gloo); without that, each of N processes would silently do the whole job alone. So wpo asks for CPU when the
machine has no accelerator device, and a launch accelerate still does not see as distributed fails.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from accelerate import PartialState

from wpo import machine
from wpo.errors import ConfigError, WpoError


def on_cpu() -> bool:
    return not torch.accelerator.is_available()


def deepspeed_launch() -> bool:
    """`accelerate launch` with a DeepSpeed config (it sets this variable for every process)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def state_options() -> dict[str, Any]:
    """How accelerate should see this launch. It turns DeepSpeed on only off the CPU, so a DeepSpeed launch on a
    machine without an accelerator device names gloo itself and runs DeepSpeed on its CPU accelerator (how the tests
    run ZeRO-3 on two processes)."""
    if deepspeed_launch():
        machine.refuse([machine.deepspeed()])
        return {"cpu": False, "backend": "gloo"} if on_cpu() else {"cpu": False}
    return {"cpu": on_cpu()}


# Stages that split their work across the processes of a launch; the others, and `wpo run`, would only repeat the
# whole job in every process.
MULTI_PROCESS_STAGES = ("sample", "score", "train")


def launched_processes() -> int:
    """How many processes the launcher started (`torchrun` and `accelerate launch` set WORLD_SIZE; 1 without one)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_launch(num_processes: int) -> None:
    launched = launched_processes()
    if launched != num_processes:
        raise WpoError(
            f"launched as {launched} processes (WORLD_SIZE), but accelerate runs {num_processes}: "
            "check the launcher and the accelerate config"
        )


def process_state() -> PartialState:
    """This process's rank among the launch's processes, with barriers between them."""
    state = PartialState(**state_options())
    check_launch(state.num_processes)
    return state


def end_process_group() -> None:
    """The launch's process group torn down by this process before the interpreter exits (registered with atexit by
    the CLI): left to the interpreter's own teardown, its communication threads can abort a process whose work is
    all saved (`terminate called without an active exception`, SIGABRT, seen once under ZeRO-3), failing the launch.
    Local to this process: no collective runs, so a process whose peer already died does not wait for it."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def process_device() -> torch.device:
    """Where this process computes: its own GPU under a multi-GPU launch (cuda:LOCAL_RANK), else the one device."""
    return process_state().device


def refuse_a_launcher(what: str) -> None:
    processes = launched_processes()
    if processes > 1:
        raise ConfigError(
            f"{what} runs in one process, not as {processes}: launch it without torchrun or accelerate "
            f"(only {', '.join(MULTI_PROCESS_STAGES[:-1])} and {MULTI_PROCESS_STAGES[-1]} split across "
            "processes; under a launcher, wpo run runs the others on the main process)"
        )
