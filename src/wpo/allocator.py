"""glibc's malloc told to keep the memory a process frees, so training reuses pages instead of faulting in new ones.

By default glibc serves each allocation above its mmap threshold (at most 32 MiB) with fresh pages from the kernel
and hands them back when freed, and it trims the heap's free top too. A training step frees and allocates the same
`[vocabulary, hidden]` buffers every micro-batch (the output layer's gradient and bf16 cast, the tied embedding's
gradient: 56-113 MiB each for SmolLM2), so each is faulted in anew, page by page: about 95 000 minor page faults a
step on the quickstart (bf16, 2-core Xeon). Raising the threshold to its 32 MiB ceiling changed nothing; serving
every block from the heap and trimming it only once 1 GiB lies free at its top brought them to 8 000-30 000
(docs/performance.md, "The allocator").

PyTorch's CPU guide gets the same from swapping in jemalloc or tcmalloc with LD_PRELOAD; glibc's own `mallopt` needs
no other library and no relaunch. It changes where memory comes from, never a value computed.
"""

from __future__ import annotations

import ctypes
import os
import platform

# mallopt's parameters (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
# glibc trims the heap (down to its 128 KiB pad) only once this much lies free at its top; a step's freed
# activations stay below it, so the next step reuses their pages
TRIM_ONLY_PAST = 1 << 30

# what a user sets to tune malloc or to preload another allocator (jemalloc, tcmalloc); then malloc is left alone
USER_SETTINGS = ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_MAX_", "LD_PRELOAD")


def keep_freed_memory(environ: dict[str, str] | None = None) -> str:
    """Serve this process's blocks from glibc's heap (no mmap per block; threads' heaps still map what exceeds their
    64 MiB) and trim it only once TRIM_ONLY_PAST lies free at its top; returns what was done, for the log. Left
    alone where the C library is not glibc or the environment tunes malloc or preloads a library."""
    environ = os.environ if environ is None else environ
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "malloc left as is (not glibc)"
    named = [key for key in USER_SETTINGS if key in environ and (key != "GLIBC_TUNABLES" or "malloc" in environ[key])]
    if named:
        return f"malloc left as the environment sets it ({', '.join(named)})"
    libc = ctypes.CDLL(None)
    if not (libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_ONLY_PAST) == 1):
        return "malloc left as is (mallopt refused)"
    return f"malloc serves blocks from its heap and trims it only once {TRIM_ONLY_PAST >> 30} GiB lies free at its top"
