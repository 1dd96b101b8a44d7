"""Ctrl-C and SIGTERM during training: finish the step, save, stop."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from typing import Any


# A second signal within this many seconds of the first is taken for a copy of it.
REPEATED_SIGNAL_SECONDS = 1.0


@contextlib.contextmanager
def interrupt_handler(trainer: Any) -> Iterator[None]:
    """First Ctrl-C/SIGTERM: finish the current step, save, stop. A second Ctrl-C: stop now.

    Only a Ctrl-C that comes a moment after the first aborts. A repeated SIGTERM, or a
    signal that arrives twice at once, is the same request: torchrun forwards to its workers
    what it receives, so a signal sent to the whole job (a cancelled SLURM job) reaches each
    worker twice within milliseconds, and aborting then would lose the checkpoint.
    """
    first_at: float | None = None

    def handle(signum, frame):
        nonlocal first_at
        if first_at is None:
            first_at = time.monotonic()
            trainer.interrupted = True
            trainer.log("\nstopping after this step (a checkpoint will be written); press Ctrl-C again to abort")
        elif signum == signal.SIGINT and time.monotonic() - first_at > REPEATED_SIGNAL_SECONDS:
            raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        # After a stop was asked for, the copy of that signal may still be on its way (the run
        # can save and return within milliseconds): keep answering as above, or the copy would
        # reach the command line's handler and abort what is a clean stop.
        if first_at is None:
            for sig, old in previous.items():
                signal.signal(sig, old)
