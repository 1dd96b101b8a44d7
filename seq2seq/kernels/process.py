"""Process-wide settings that make attn faster on the CPU, applied only when the CLI asks.

Two things, both for a process that trains or translates for a while:

- oneDNN's and ideep's caches keep about 0.5 MB for every input shape they have seen, 1,024
  shapes each by default. Training sees a new row count with nearly every batch, so without a
  cap the peak memory grows step after step. The caps are read when oneDNN first runs, so they
  are set before any model exists; a value already in the environment is kept.
- glibc's malloc gives multi-megabyte blocks back to the OS on free and maps them afresh on
  the next allocation; a training step allocates and frees the same activations every step, so
  every step would page-fault them in again. Raising two thresholds keeps those blocks for
  reuse; peak memory stays what the step needs.

The measurements behind the numbers are in the README's benchmark section.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

from seq2seq.kernels import probe

CACHE_CAPS = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "32", "LRU_CACHE_CAPACITY": "16"}
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's upper limit on 64-bit systems


def tune_process() -> dict[str, bool]:
    """Apply both settings unless the cpu kernels are off; what was applied."""
    if probe.mode() == "off":
        return {"cache_caps": False, "keep_freed_memory": False}
    for name, value in CACHE_CAPS.items():
        os.environ.setdefault(name, value)
    return {"cache_caps": True, "keep_freed_memory": keep_freed_memory()}


@functools.cache  # process-wide: asked once
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
