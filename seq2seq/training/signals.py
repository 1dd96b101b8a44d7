"""Ctrl-C and SIGTERM during training: finish the step, save, stop."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
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
        for sig, old in previous.items():
            signal.signal(sig, old if first_at is None else _after_stop(old, first_at))


def _after_stop(old: Any, first_at: float) -> Callable[[int, Any], None]:
    """The handler left in place once a stop was asked for: the copy of that signal may still
    be on its way (the run can save and return within milliseconds) and must not reach the
    command line's handler as a second request, which aborts. Later signals get ``old``'s answer."""

    def handle(signum: int, frame: Any) -> None:
        if time.monotonic() - first_at <= REPEATED_SIGNAL_SECONDS:
            return
        signal.signal(signum, old)
        if callable(old):
            old(signum, frame)
        elif old == signal.SIG_DFL:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)

    return handle
