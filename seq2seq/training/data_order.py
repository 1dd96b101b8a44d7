"""The order of the data: the micro-batches of each update, resumable from (epoch, position)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from seq2seq.config import Config
from seq2seq.data.batching import TokenBatchSampler
from seq2seq.training.run_state import RunState


def update_batches(sampler: TokenBatchSampler, accumulation: int, state: RunState,
                   max_epochs: int | None) -> Iterator[list[np.ndarray]]:
    """Yield the micro-batches of each update, starting where ``state`` says the run is.

    The order of an epoch depends only on (seed, epoch), so resuming needs nothing but the
    epoch and the number of micro-batches already consumed.
    """
    while max_epochs is None or state.epoch < max_epochs:
        batches = sampler.batches(state.epoch)
        while state.batch_in_epoch < len(batches):
            group = batches[state.batch_in_epoch: state.batch_in_epoch + accumulation]
            state.batch_in_epoch += len(group)
            yield group
        state.epoch += 1
        state.batch_in_epoch = 0


def accumulation_steps(cfg: Config, world_size: int) -> int:
    """Micro-batches per rank and update, so the global update size does not depend on the world size."""
    return max(1, round(cfg.effective_update_tokens / (cfg.train.batch_tokens * world_size)))


def uneven_update_warning(cfg: Config, world_size: int) -> str | None:
    """Why updates will not hold ``train.update_tokens`` tokens with ``world_size`` processes, if so."""
    update = accumulation_steps(cfg, world_size) * cfg.train.batch_tokens * world_size
    if update == cfg.effective_update_tokens:
        return None
    return (f"train.update_tokens={cfg.effective_update_tokens} is not a multiple of train.batch_tokens x processes "
            f"({cfg.train.batch_tokens} x {world_size}): updates hold up to {update} tokens; make it one so that "
            "runs with other process counts take the same updates")
