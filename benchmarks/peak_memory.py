"""Shared by the memory benchmarks: resettable peak RSS, and one measurement per fresh subprocess.

Linux keeps a process's peak resident set (VmHWM) and resets it to the current RSS when "5" is written to
/proc/self/clear_refs, so a benchmark can measure the peak of one phase (a loss, a training step) over what was
resident when the phase began, not over the interpreter's whole life.
"""

from __future__ import annotations

import json
import subprocess
import sys


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak() -> float:
    """Start a new peak window; returns the resident MiB it starts from."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    return _status_mib("VmRSS")


def peak_mib() -> float:
    """The peak resident MiB since the last `reset_peak` (or since the process started)."""
    return _status_mib("VmHWM")


def run_child(script: str, arguments: list[str]) -> dict:
    """Run `script --child ...` in a fresh interpreter, so no allocation of one measurement outlives into the next."""
    completed = subprocess.run([sys.executable, script, *arguments], capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(arguments)} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def ratio(result: dict, base: dict | None, key: str) -> str:
    """`result[key] / base[key]` for the side-by-side tables, or "-" when the baseline variant was not run."""
    return "-" if base is None else f"{result[key] / base[key]:.2f}"
