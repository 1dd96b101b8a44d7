"""``attn train``'s entry point: set up the process and the run folder, train, clean up.

train(cfg)
  set_up_process()     device, CPU kernels, precision checks, process group (setup.py)
  prepare_run()        the output folder checked, the data prepared (setup.py)
  Trainer(...)         model, optimizer, data order; --resume loads the newest checkpoint
  trainer.run()        the loop (trainer.py), inside the Ctrl-C/SIGTERM handler (signals.py)
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch

from seq2seq.config import Config, dump_config
from seq2seq.errors import TrainingStopped, UserError
from seq2seq.files import missing_folders, removed_if_failed, write_text_atomic
from seq2seq.models.builder import describe_model
from seq2seq.run_folder import CONFIG_FILE, TENSORBOARD_DIR
from seq2seq.training.distributed import DistInfo, cleanup, dist_info
from seq2seq.training.progress import Progress
from seq2seq.training.memory import reset_peak_rss
from seq2seq.training.run_state import TrainSummary
from seq2seq.training.setup import clear_earlier_run, prepare_run, seed_everything, set_up_process
from seq2seq.training.signals import interrupt_handler
from seq2seq.training.trainer import Trainer


def train(cfg: Config, resume: bool = False, overwrite: bool = False,
          log: Callable[[str], None] = lambda m: print(m, file=sys.stderr), quiet: bool = False) -> TrainSummary:
    """Run (or continue) the training described by ``cfg``; returns where it ended."""
    info = dist_info()
    # A run refused before it wrote anything leaves no empty output_dir behind it.
    created = missing_folders(Path(cfg.output_dir)) if info.is_main else []
    try:
        with removed_if_failed(created):
            return _train_in_group(cfg, info, resume, overwrite, log, quiet)
    finally:
        cleanup(info)


def _train_in_group(cfg: Config, info: DistInfo, resume: bool, overwrite: bool, log: Callable[[str], None],
                    quiet: bool) -> TrainSummary:
    """``train`` within the process group (under torchrun) and the folder clean-up."""
    main_log = log if info.is_main else (lambda m: None)
    reset_peak_rss()  # the log lines' peak_rss_mib is this run's, not an earlier sweep point's
    device = set_up_process(cfg, info, main_log)
    out, prepared, writer = prepare_run(cfg, info, resume, overwrite, main_log)
    seed_everything(cfg.train.seed)
    trainer = Trainer(cfg, prepared, info, device, main_log)
    if resume:
        trainer.resume()
    # Only now that this run surely starts does the output folder change.
    if info.is_main:
        if overwrite:  # (with --resume it was refused above)
            clear_earlier_run(out)
        write_text_atomic(out / CONFIG_FILE, dump_config(cfg))
        if writer is not None:
            trainer.records.tensorboard = writer(log_dir=str(out / TENSORBOARD_DIR))
    main_log(f"model: {describe_model(trainer.model)}")
    main_log(f"training on {device} x{info.world_size}: {len(trainer.train_data):,} pairs, "
             f"{trainer.accumulation} micro-batch(es) of <= {cfg.train.batch_tokens} tokens per update "
             f"and rank, up to {cfg.train.max_steps} updates"
             + (f" or {cfg.train.max_minutes:g} minutes" if cfg.train.max_minutes else "")
             + f" -> {cfg.output_dir}")
    progress = Progress(cfg.train.max_steps, enabled=info.is_main and not quiet)
    with interrupt_handler(trainer):
        try:
            summary = trainer.run(progress)
        except TrainingStopped:
            trainer.save()
            raise
        except torch.OutOfMemoryError:
            raise UserError(
                f"out of memory at step {trainer.state.step} with train.batch_tokens="
                f"{cfg.train.batch_tokens}; lower train.batch_tokens (raise train.update_tokens to keep "
                "the update size)") from None
        finally:
            progress.finish()  # before a summary or an error line
    if info.is_main:
        trainer.records.plot()
        if trainer.records.tensorboard is not None:
            trainer.records.tensorboard.close()
    return summary
