"""A crash inside a native library (llama.cpp) never ends a command in silence.

A fatal signal (SIGILL, SIGSEGV) kills the process before Python can print anything, so the line is written from
outside it. Where the native code runs in a child process (export verification), the parent reads the child's exit
signal (`signal_name`). Where it runs in this process for speed (sampling, chat), `crash_reported` arms Python's
`faulthandler` to write into a pipe that a small reporter process reads: on a crash the reporter prints what was
running in one or two lines (the whole trace under `WPO_DEBUG=1`); when the block ends normally the pipe closes empty
and the reporter exits without a word.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

# Reads the faulthandler dump from stdin; argv: what was running, the fix, "1" to print the whole trace.
_REPORTER = """
import sys
dump = sys.stdin.buffer.read().decode("utf-8", "replace")
if dump.strip():
    what, fix, debug = sys.argv[1:4]
    lines = dump.strip().splitlines()
    fault = lines[0].removeprefix("Fatal Python error: ").strip()
    sys.stderr.write(f"wpo: fatal error: {fault} inside {what}\\n")
    sys.stderr.write(f"wpo: {fix}" + ("\\n" if debug == "1" else " (WPO_DEBUG=1 shows the trace)\\n"))
    if debug == "1":
        sys.stderr.write(dump)
    sys.stderr.flush()
"""


def debug_enabled() -> bool:
    return bool(os.environ.get("WPO_DEBUG"))


@contextlib.contextmanager
def crash_reported(what: str, fix: str) -> Iterator[None]:
    """Inside this block a fatal signal ends the command with `wpo: fatal error: <signal> inside <what>` and the fix,
    written by a reporter process (this one is dying); the faulthandler setting before the block is restored after."""
    read_end, write_end = os.pipe()
    try:
        reporter = subprocess.Popen(
            [sys.executable, "-I", "-c", _REPORTER, what, fix, "1" if debug_enabled() else "0"],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
        )
    finally:
        os.close(read_end)
    was_enabled = faulthandler.is_enabled()
    faulthandler.enable(file=write_end, all_threads=True)
    try:
        yield
    finally:
        faulthandler.disable()
        if was_enabled:  # back to stderr, where a stderr without a file descriptor (a notebook's) allows it
            with contextlib.suppress(RuntimeError, ValueError, OSError, AttributeError):
                faulthandler.enable()
        os.close(write_end)
        reporter.wait()


def signal_name(returncode: int) -> str | None:
    """`SIGILL (illegal instruction)` for a process killed by a signal (a negative return code), else None."""
    if returncode >= 0:
        return None
    number = -returncode
    try:
        name = signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
    description = signal.strsignal(number) or ""
    return f"{name} ({description.lower()})" if description else name
