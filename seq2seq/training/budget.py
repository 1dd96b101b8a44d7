"""train.max_minutes: the wall clock of a whole run (resumed sessions added up) and what is left."""

from __future__ import annotations

import math
import time


class TimeBudget:
    """The run's clock. ``reserve``: seconds kept at the end for the final validation."""

    def __init__(self, minutes: float | None) -> None:
        self.minutes = minutes
        self.reserve = 0.0
        self.restart(0.0)

    def restart(self, seconds_before: float) -> None:
        """Start this session's clock; ``seconds_before``: the sessions before a resume."""
        self.started, self.before = time.perf_counter(), seconds_before

    def seconds(self) -> float:
        """Wall clock of the whole run: earlier (resumed) sessions plus this one."""
        return self.before + time.perf_counter() - self.started

    def left(self) -> float:
        """Seconds still to go (inf without a budget)."""
        return math.inf if self.minutes is None else 60 * self.minutes - self.seconds()

    def capped(self, reserve: float) -> float:
        """A reserve for the final validation of at most half the budget: an estimate that errs
        long must not end the run before it has trained."""
        return reserve if self.minutes is None else min(reserve, 30 * self.minutes)

    def out_of_time(self) -> bool:
        """Past the budget less the reserve: time to stop and validate the final model."""
        return self.left() <= self.reserve
