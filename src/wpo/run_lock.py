"""One launch at a time per `output_dir`: an OS advisory lock (`flock`) held for the whole command.

A second `wpo` on the same directory — another terminal, a scheduler's retry while the first still runs — stops at
once with one line saying who holds it (pid, host, command, since when), or waits when asked to. The lock is the
open file itself, so the OS releases it when its process ends in any way, `kill -9` included: a stale lock never
blocks the next run. Within one `torchrun` / `accelerate launch` the main process (rank 0) holds it for the launch;
if it cannot, it exits and the launcher stops the launch's other processes before any of them writes (they wait
for the main process at the stage's first barrier).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from wpo.errors import WpoError

log = logging.getLogger(__name__)
LOCK_NAME = ".wpo.lock"
_held: dict[Path, int] = {}  # directories this process holds, with how many nested commands hold each


class RunLocked(WpoError):
    """Another launch holds the run directory."""


@contextmanager
def run_lock(output_dir: str | Path, wait: bool = False) -> Iterator[None]:
    """Hold `output_dir`'s lock for the block; re-entrant within a process (a sweep's runs, wpo.run in a notebook)."""
    directory = Path(output_dir).resolve()
    if int(os.environ.get("RANK", "0")) != 0:  # the launch's main process holds it for all of them
        yield
        return
    if directory in _held:
        _held[directory] += 1
        try:
            yield
        finally:
            _held[directory] -= 1
        return
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    handle = path.open("a+", encoding="utf-8")
    try:
        _acquire(handle, path, wait)
        handle.seek(0)
        handle.truncate()
        handle.write(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "command": " ".join(sys.argv),
                    "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                }
            )
            + "\n"
        )
        handle.flush()
        _held[directory] = 1
        try:
            yield
        finally:
            del _held[directory]
    finally:
        handle.close()  # closing the file releases the lock


def _acquire(handle, path: Path, wait: bool) -> None:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        holder = _holder(path)
    if not wait:
        raise RunLocked(
            f"{path.parent} is in use by another wpo launch ({holder}): wait for it to end, or pass "
            "--wait to start when it does"
        )
    log.info("waiting for %s, in use by another wpo launch (%s)", path.parent, holder)
    fcntl.flock(handle, fcntl.LOCK_EX)


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "its details are being written"
    return f"pid {info.get('pid')} on {info.get('host')}, `{info.get('command')}`, since {info.get('since')}"
