"""Keep freed memory in the process instead of handing it back to the OS (glibc).

glibc's ``malloc`` serves a block of more than 128 KiB (a threshold it raises as it
goes) with a fresh ``mmap`` and returns it to the OS when it is freed, and trims the
heap when more than twice that lies free at its top. A network's activations on a CPU
are such blocks, allocated and freed at every forward pass, so each pass page-faults
them into newly zeroed memory: a quarter of the BCCD model's 14 ms forward pass at
320 px on one thread (docs/benchmarks.md). :func:`keep_freed_memory` raises both thresholds,
so freed activations are reused as a caching allocator (jemalloc, tcmalloc, PyTorch's
CUDA allocator) reuses them. Every script calls it at start (:func:`utils.cli.run_command`).

The memory a process holds then stays near its peak, as with those allocators. A user
who sets glibc's own ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or a
``glibc.malloc`` tunable in ``GLIBC_TUNABLES`` keeps those settings; on other C
libraries and systems nothing changes.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

logger = logging.getLogger(__name__)

# mallopt(3) parameters.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# The largest mmap threshold glibc accepts on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX).
MMAP_THRESHOLD = 32 << 20
# Free memory at the top of the heap above this goes back to the OS.
TRIM_THRESHOLD = 1 << 30

USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_freed_memory() -> bool:
    """Set glibc's mmap threshold to 32 MiB and its trim threshold to 1 GiB for this
    process (and the processes it forks). Returns whether they were set: not where the
    user set glibc's malloc settings, nor off Linux, nor on a C library without
    ``mallopt``."""
    if not sys.platform.startswith("linux"):
        return False
    if any(name in os.environ for name in USER_SETTINGS) or "glibc.malloc." in os.environ.get(
        "GLIBC_TUNABLES", ""
    ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    if not done:
        logger.debug("mallopt refused the allocator settings; glibc's defaults stay")
    return done
