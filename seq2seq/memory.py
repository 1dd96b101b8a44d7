"""Keep freed memory in the process for the next tensor instead of returning it to the OS.

On Linux, glibc serves blocks above a (dynamic) threshold with fresh ``mmap`` pages and gives
them back on free, and trims the heap top above another threshold. A training step allocates
and frees the same multi-megabyte activations every step, so every step would page-fault them
in again: measured on config T (2 cores), 10 % of the step time went to first-touching
fresh pages. Raising both thresholds once keeps those blocks for reuse; peak memory stays
what the step needs (blocks are reused, not added).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's upper limit on 64-bit systems


@functools.cache  # a process-wide setting: trainers and translators may all ask for it
def keep_freed_memory() -> bool:
    """Tell glibc's malloc to reuse freed blocks up to 32 MB; False where that is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
