"""The `wpo` command keeps the memory it frees (wpo.allocator): a block freed and allocated again reuses its pages."""

import json
import os
import platform
import subprocess
import sys

import pytest

from wpo import allocator

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc")

# Allocates 64 MiB through malloc, touches it, frees it, and allocates and touches it again: prints glibc's own
# accounting (mallinfo2: `arena` from the heap, `hblkhd` in per-block mmaps) while the block is held and after it is
# freed, and the minor page faults of the second touch.
PROBE = """
import ctypes, json, resource, sys
from wpo import allocator

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = MallInfo2
done = allocator.keep_freed_memory() if sys.argv[1] == "kept" else "default"
size = 64 << 20

def touch():
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    return block

block = touch()
held = libc.mallinfo2()
libc.free(block)
freed = libc.mallinfo2()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = touch()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
libc.free(block)
print(json.dumps({"done": done, "held_mmapped": held.hblkhd, "held_heap": held.arena,
                  "freed_heap": freed.arena, "second_touch_faults": faults}))
"""


def environment_without_malloc_settings() -> dict[str, str]:
    """This environment less what would make `keep_freed_memory` leave malloc alone."""
    return {key: value for key, value in os.environ.items() if key not in allocator.USER_SETTINGS}


def probe(mode: str) -> dict:
    completed = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        capture_output=True,
        text=True,
        env=environment_without_malloc_settings(),
        check=True,
    )
    return json.loads(completed.stdout)


def test_a_freed_block_is_kept_and_its_pages_reused():
    size = 64 << 20
    default = probe("default")
    assert default["held_mmapped"] >= size  # glibc's default: a block this size is its own mmap, unmapped when freed

    kept = probe("kept")
    assert kept["done"] == "malloc serves blocks from its heap and trims it only once 1 GiB lies free at its top"
    assert kept["held_mmapped"] < size and kept["held_heap"] >= size
    assert kept["freed_heap"] >= size  # not trimmed: the pages stay the process's
    assert kept["second_touch_faults"] < 100  # 64 MiB is 16384 pages; reused, they fault no more


@pytest.mark.parametrize(
    "environment, named",
    [
        ({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1048576"}, "GLIBC_TUNABLES"),
        ({"MALLOC_TRIM_THRESHOLD_": "0"}, "MALLOC_TRIM_THRESHOLD_"),
        ({"LD_PRELOAD": "libjemalloc.so.2", "MALLOC_MMAP_MAX_": "0"}, "MALLOC_MMAP_MAX_, LD_PRELOAD"),
    ],
)
def test_malloc_settings_the_environment_makes_are_left_alone(environment, named):
    assert allocator.keep_freed_memory(environment) == f"malloc left as the environment sets it ({named})"


def test_glibc_tunables_of_other_parts_do_not_count_as_malloc_settings(monkeypatch):
    applied = []
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda _: FakeLibc(applied))
    result = allocator.keep_freed_memory({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F"})
    assert result.startswith("malloc serves blocks from its heap")
    assert applied == [(allocator.M_MMAP_MAX, 0), (allocator.M_TRIM_THRESHOLD, allocator.TRIM_ONLY_PAST)]


def test_another_c_library_is_left_alone(monkeypatch):
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("musl", "1.2"))
    assert allocator.keep_freed_memory({}) == "malloc left as is (not glibc)"


def test_the_command_sets_malloc_up_before_it_runs_anything():
    completed = subprocess.run(
        [sys.executable, "-m", "wpo", "--help"],
        capture_output=True,
        text=True,
        env={**environment_without_malloc_settings(), "WPO_LOG_LEVEL": "DEBUG"},
        check=True,
    )
    assert (
        "wpo.cli: malloc serves blocks from its heap and trims it only once 1 GiB lies free at its top"
        in completed.stderr
    )


class FakeLibc:
    def __init__(self, applied: list):
        self.applied = applied

    def mallopt(self, parameter: int, value: int) -> int:
        self.applied.append((parameter, value))
        return 1
