"""SIGTERM and SIGINT during training (a cluster preempting the job, `docker stop`, a spot instance, Ctrl-C): the
step in flight finishes, a checkpoint is saved at that step boundary, and training stops with the shell's exit
code (143, 130), so the rerun resumes exactly. A second Ctrl-C interrupts at once.

Under a launcher every process must take part in the checkpoint, so the processes agree after each step on whether
any of them was signalled (one tiny all-reduce).
"""

from __future__ import annotations

import logging
import signal
import threading

import torch

log = logging.getLogger(__name__)
EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}


class StopSignals:
    """While active, SIGTERM and SIGINT only ask for a stop; `requested()` says whether any process was asked."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # Python delivers signals to the main thread only
            for number in EXIT_CODES:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _handle(self, number: int, _frame) -> None:
        if self.received is not None and number == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now
        self.received = number
        log.warning("training: %s received; stopping after this step, with a checkpoint", signal.Signals(number).name)

    def requested(self, accelerator) -> int | None:
        """The signal any process of the launch received, or None."""
        if accelerator.num_processes == 1:
            return self.received
        flag = torch.tensor([self.received or 0], device=accelerator.device)
        agreed = int(accelerator.reduce(flag, reduction="max").item())
        return agreed or None
