"""Where a run is (saved in every checkpoint, so --resume continues the same run) and how it ended."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class RunState:
    """Where the run is: saved in every checkpoint so --resume continues the same run."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of this epoch already consumed (each rank)
    world_size: int = 1  # processes the data position above refers to
    best_score: float | None = None
    best_step: int = 0
    validations_without_improvement: int = 0
    train_seconds: float = 0.0
    wall_seconds: float = 0.0  # wall clock of the run so far, validation included (train.max_minutes)
    target_tokens: int = 0  # of every rank, up to the last checkpoint


@dataclass
class TrainSummary:
    output_dir: Path
    steps: int
    best_step: int
    best_score: float | None
    metric: str
    stopped_because: str
    interrupted: bool = False  # Ctrl-C/SIGTERM: saved, but not finished
    is_main: bool = True  # rank 0 (or a single process): the one that validated
    unvalidated: Path | None = None  # the final checkpoint, where it was never validated
