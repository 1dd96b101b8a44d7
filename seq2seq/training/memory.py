"""The training process's peak resident memory (RSS), since its run started.

Linux keeps the peak as VmHWM in /proc/self/status and lets a process reset it (writing 5 to
/proc/self/clear_refs), so every run of a sweep, which trains its points one after another in
one process, reports its own peak. Elsewhere the peak is the process's whole life
(getrusage), and where even that is missing, None.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

STATUS, CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def reset_peak_rss() -> None:
    """Start counting the peak from now (Linux; elsewhere nothing happens). The peak restarts
    at the current RSS, so heap memory that earlier work freed but glibc kept is handed back
    first: otherwise a sweep point would inherit the previous point's peak."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        pass


def peak_rss_mib() -> float | None:
    """The peak RSS in MiB since the last reset (Linux) or since the process started."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere
