"""``attn train``: the training loop, read top to bottom.

train()                      set up, then loop over optimizer updates:
  update_batches()           the micro-batches of one update, from the length-bucketed sampler
  optimizer_step()
    accumulate_gradients()   forward/backward each micro-batch; leave in .grad the gradient of
                             the update's loss per target token (all micro-batches and ranks)
    apply_update()           clip, step; a non-finite update is skipped inside the fused
                             optimizer, without waiting on the device
  log / validate / save      at their intervals; Ctrl-C and SIGTERM stop after a checkpoint

The loss of an update is the sum over its real target tokens divided by their number across
every micro-batch and rank, so accumulation and world size never change the gradient. Device
counters (loss sums, skipped updates) are read at log intervals only: on a GPU the loop never
waits for the device in between; on the CPU reading them is free, so it happens every step.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from seq2seq import CHECKPOINT_FORMAT, __version__, kernels
from seq2seq.config import Config, dump_config
from seq2seq.data.batching import TokenBatchSampler, collate
from seq2seq.data.prepare import PreparedData, prepare_data
from seq2seq.data.special import PAD_ID
from seq2seq.errors import TrainingStopped, UserError
from seq2seq.files import missing_folders, removed_if_failed, write_text_atomic
from seq2seq.kernels.optim import step_unless
from seq2seq.models.builder import build_model, describe_model
from seq2seq.run_folder import (CONFIG_FILE, CURVE_FILE, METRICS_FILE, REPORT_DIR, RESULTS_CSV,  # noqa: F401
                                TENSORBOARD_DIR, read_metrics)
from seq2seq.training import checkpoint as ckpt
from seq2seq.training.distributed import (DistInfo, all_gather_objects, all_reduce_sum, broadcast_from_main,
                                          cleanup, dist_info, join_group, stop_all_if_main_failed)
from seq2seq.training.loss import projected_smoothed_nll
from seq2seq.training.schedule import Plateau, lr_at



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


# ------------------------------------------------------------------------- set-up


def pick_device(cfg: Config, info: DistInfo) -> torch.device:
    if cfg.train.device == "cpu" or (cfg.train.device == "auto" and not torch.cuda.is_available()):
        if cfg.train.precision == "fp16":  # device cpu is refused at load time; auto found no GPU
            raise UserError("train.precision: fp16 needs a GPU and none is visible; use bf16 or fp32 on the CPU")
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError("train.device: cuda was asked for but no GPU is visible; use auto or cpu")
    return torch.device("cuda", local_cuda_index(info.local_rank, torch.cuda.device_count()))


def local_cuda_index(local_rank: int, visible: int) -> int:
    """The GPU this process trains on: its LOCAL_RANK among the GPUs it sees, or the only one it
    sees (a scheduler that sets CUDA_VISIBLE_DEVICES per rank gives each process one GPU, cuda:0)."""
    if visible == 1:
        return 0
    if local_rank < visible:
        return local_rank
    raise UserError(f"LOCAL_RANK {local_rank} but this process sees {visible} GPUs; give each process one GPU "
                    "(CUDA_VISIBLE_DEVICES) or at least as many as ranks per node")


def check_precisions(cfg: Config, device: torch.device, log: Callable[[str], None]) -> None:
    """bf16 in train.precision or decode.precision (which validation uses): refused before
    anything is written where it cannot run on this CPU, a warning where it is emulated."""
    for key, value in (("train.precision", cfg.train.precision), ("decode.precision", cfg.decode.precision)):
        if value == "bf16" and (warning := kernels.check_bf16(device, key)):
            log(f"warning: {warning}")


def make_deterministic() -> None:
    """train.deterministic: the same algorithms every run, so a resumed GPU run repeats the
    uninterrupted one bit for bit (cuBLAS needs its workspace fixed before its first use)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_output_dir(cfg: Config, resume: bool, overwrite: bool) -> Path:
    """Refuse to clobber another run; make sure we can write before spending any compute.
    Nothing of an earlier run is deleted here: see ``clear_earlier_run``."""
    out = Path(cfg.output_dir)
    if resume and overwrite:
        raise UserError("--resume continues the run in output_dir and --overwrite deletes it; pass one of them")
    if out.exists() and not out.is_dir():
        raise UserError(f"output_dir: {out} exists and is a file; choose a directory path")
    # A run that trained (metrics or checkpoints); a config.yaml alone is a run that failed early.
    has_run = (out / METRICS_FILE).exists() or bool(ckpt.step_checkpoints(out))
    if resume and not ckpt.step_checkpoints(out):
        instead = "start over with --overwrite" if has_run else "run without --resume"
        raise UserError(f"output_dir: {out} has no checkpoint to resume from; {instead}")
    if has_run and not resume and not overwrite:
        raise UserError(
            f"output_dir: {out} already holds a run; pass --resume to continue it, "
            "--overwrite to start over, or choose another output_dir"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"output_dir: cannot write to {out} ({exc.strerror or exc}); choose a writable directory") from None
    ckpt.remove_temp_files(out)  # half-written checkpoints of a run that was killed
    return out


def clear_earlier_run(out: Path) -> None:
    """--overwrite: delete what the earlier run wrote (checkpoints, records, its evaluations:
    they describe a model that is gone), once the new run is known to start (its data, model and
    optimizer built), so that bad input never costs the old run. The prepared data stays."""
    for folder in (ckpt.checkpoint_dir(out), out / TENSORBOARD_DIR, out / REPORT_DIR):
        shutil.rmtree(folder, ignore_errors=True)
    for name in (METRICS_FILE, CURVE_FILE, CONFIG_FILE, RESULTS_CSV):
        (out / name).unlink(missing_ok=True)


def build_optimizer(model: nn.Module, cfg: Config, device: torch.device) -> torch.optim.Optimizer:
    t = cfg.train
    opt_class = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    # Fused Adam is one kernel for all parameters, on CPU and GPU alike, and it can skip a
    # non-finite update on its own (found_inf), so the loop never waits on the device.
    return opt_class(model.parameters(), lr=t.lr, betas=t.betas, weight_decay=t.weight_decay, fused=True)


def autocast_context(cfg: Config, device: torch.device) -> contextlib.AbstractContextManager:
    if cfg.train.precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if cfg.train.precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


# ------------------------------------------------------------------------- data order


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


# ------------------------------------------------------------------------- the loop


class Trainer:
    def __init__(self, cfg: Config, prepared: PreparedData, info: DistInfo, device: torch.device,
                 log: Callable[[str], None]) -> None:
        self.cfg, self.prepared, self.info, self.device, self.log = cfg, prepared, info, device, log
        self.out = Path(cfg.output_dir)
        tok = prepared.tokenizer
        self.model = build_model(cfg.model, tok.src_vocab_size, tok.tgt_vocab_size).to(device)
        self.forward_model: nn.Module = self.model
        self.ddp: nn.parallel.DistributedDataParallel | None = None
        if info.enabled:
            self.ddp = self.forward_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        if cfg.train.compile and (device.type != "cuda" or not cfg.is_transformer):
            # Dynamo does not trace nn.RNN/GRU/LSTM (and would recompile for every batch length);
            # on the CPU, inductor stops with an assertion in its oneDNN lowering (torch 2.13).
            log("warning: train.compile applies to a Transformer on a GPU; this run is not compiled")
        elif cfg.train.compile:
            self.forward_model = torch.compile(self.forward_model, dynamic=True)
        self.optimizer = build_optimizer(self.model, cfg, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.precision == "fp16")
        self.plateau = Plateau(cfg.train)
        self.state = RunState(world_size=info.world_size)
        self.train_data = prepared.dataset("train")
        self.sampler = TokenBatchSampler(
            self.train_data.src_lengths, self.train_data.tgt_lengths, cfg.train.batch_tokens,
            seed=cfg.train.seed, shuffle=True, rank=info.rank, world_size=info.world_size)
        self.accumulation = accumulation_steps(cfg, info.world_size)
        if (warning := uneven_update_warning(cfg, info.world_size)) is not None:
            log(f"warning: {warning}")
        if cfg.train.warmup_steps >= cfg.train.max_steps:
            log(f"warning: train.warmup_steps ({cfg.train.warmup_steps}) is not below train.max_steps "
                f"({cfg.train.max_steps}): the learning rate never reaches train.lr")
        # Device-side counters: read only at log time, so the step never waits on the device.
        self.bad_run = torch.zeros((), device=device)
        self.skipped = torch.zeros((), device=device)
        self.tokens_since_save = torch.zeros((), dtype=torch.float64, device=device)  # all ranks' targets
        self.skipped_logged = 0
        self.interrupted = False  # set by the Ctrl-C/SIGTERM handler
        self.wall_start, self.wall_before = time.perf_counter(), 0.0  # see wall_seconds
        self.tensorboard = None  # a SummaryWriter, opened by train() once the output folder is ready
        self.saved_step = -1  # the step of the newest checkpoint this run wrote or resumed from
        self.validated_step = -1
        self.validation_reserve = 0.0  # seconds of train.max_minutes kept for the final validation
        self.pending_interrupt: tuple[torch.Tensor, Any] | None = None  # DDP on GPU: see stop_requested

    # --- checkpoints ------------------------------------------------------------

    def checkpoint_payload(self, rng_states: list[dict[str, Any]]) -> dict[str, Any]:
        src_bytes, tgt_bytes = self.prepared.tokenizer.to_bytes()
        return {
            "format": CHECKPOINT_FORMAT,
            "attn_version": __version__,
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "plateau": self.plateau.state_dict(),
            "run_state": asdict(self.state),
            # Rank 0's RNG states, and under DDP every rank's (dropout differs per rank).
            "rng": rng_states[0],
            **({"rng_ranks": rng_states} if len(rng_states) > 1 else {}),
            "tokenizer": {"src": ckpt.bytes_to_tensor(src_bytes),
                          "tgt": ckpt.bytes_to_tensor(tgt_bytes) if tgt_bytes is not None else None},
        }

    def save(self, best: bool = False, alone: bool = False) -> None:
        """Write the step checkpoint (and best.pt); every rank calls it, rank 0 writes.
        ``alone``: rank 0 writes without the other ranks' RNG states (it is failing on its own)."""
        own = ckpt.rng_state(self.device)
        rng_states = [own] if alone else all_gather_objects(own, self.info)
        self.saved_step = self.state.step
        self.state.target_tokens += int(self.tokens_since_save)
        self.tokens_since_save.zero_()
        if not self.info.is_main:
            return
        payload = self.checkpoint_payload(rng_states)
        ckpt.save_atomic(payload, ckpt.step_checkpoint_path(self.out, self.state.step))
        if best:
            ckpt.save_atomic(payload, ckpt.checkpoint_dir(self.out) / ckpt.BEST_NAME)
        ckpt.prune_step_checkpoints(self.out, self.cfg.train.keep_last)

    def resume(self) -> None:
        """Load the newest checkpoint that loads; an unreadable newest one falls back to the one before."""
        candidates = ckpt.step_checkpoints(self.out)
        for path in reversed(candidates):
            try:
                payload = ckpt.load_checkpoint(path)
            except UserError as exc:
                self.log(f"warning: skipping {exc}")
                continue
            if "optimizer" in payload:
                break
            self.log(f"warning: skipping {path}: no optimizer state to resume from (an averaged checkpoint?)")
        else:
            raise UserError(f"output_dir: no loadable checkpoint in {ckpt.checkpoint_dir(self.out)}")
        try:
            self.model.load_state_dict(payload["model"])
        except RuntimeError:
            raise UserError(
                f"{path}: its model does not match this config (model or vocabulary changed); "
                "resume with the config the run started with, or use --overwrite"
            ) from None
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scaler.load_state_dict(payload["scaler"])
        self.plateau.load_state_dict(payload["plateau"])
        self.state = RunState(**payload["run_state"])
        rng_states = payload.get("rng_ranks") or [payload["rng"]]
        world_size = self.info.world_size
        if self.state.world_size != world_size:
            # Same epoch order, but the batches are dealt to another number of ranks: keep the
            # share of the epoch already seen. Exact resuming needs the same world size.
            self.log(f"warning: {path} was written by {self.state.world_size} process(es), resuming with "
                     f"{world_size}: the data position and dropout noise continue approximately")
            self.state.batch_in_epoch = self.state.batch_in_epoch * self.state.world_size // world_size
            self.state.world_size = world_size
        ckpt.set_rng_state(rng_states[self.info.rank] if len(rng_states) == world_size else rng_states[0], self.device)
        self.saved_step = self.state.step
        if self.info.is_main:
            trim_metrics(self.out / METRICS_FILE, self.state.step)
        self.log(f"resumed from {path} at step {self.state.step} (epoch {self.state.epoch + 1})")

    # --- one update ---------------------------------------------------------------

    def optimizer_step(self, group: list[np.ndarray]) -> dict[str, Any]:
        """One update from the micro-batches in ``group``; returns its figures (see below)."""
        return self.apply_update(self.accumulate_gradients(group))

    def accumulate_gradients(self, group: list[np.ndarray]) -> dict[str, Any]:
        """Forward and backward every micro-batch of one update.

        Leaves in ``.grad`` the gradient of the update's loss: the label-smoothed loss summed
        over every real target token of the update (all micro-batches, all ranks) divided by
        their number; unscaled (fp16) and not yet clipped. So k micro-batches, or k ranks, give
        the gradient of one big batch. Returns the update's figures summed over ranks (device
        tensors: loss, nll, correct, tokens, src_tokens, interrupt), never waiting on the device.
        """
        model, cfg = self.forward_model, self.cfg
        model.train()
        sums = torch.zeros(3, device=self.device)  # loss, nll, correct
        tgt_tokens = src_tokens = 0
        for i, indices in enumerate(group):
            batch = collate(self.train_data, indices)
            # Only real target positions reach the vocabulary projection; found on the host,
            # so the device never has to report how many there are.
            real = (batch.tgt_out.flatten() != PAD_ID).nonzero().squeeze(1)
            src, tgt_in, real, target = (self.to_device(t) for t in (batch.src, batch.tgt_in, real,
                                                                     batch.tgt_out.flatten()[real]))
            # DDP all-reduces the gradients in the last backward of the update only.
            last = i == len(group) - 1
            sync = self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()
            with sync:
                with autocast_context(cfg, self.device):
                    features = model(src, tgt_in, features_only=True).flatten(0, 1).index_select(0, real)
                    loss = projected_smoothed_nll(features, self.model.output_layer, target,
                                                  cfg.train.label_smoothing)
                self.scaler.scale(loss.loss).backward()
            sums += torch.stack([loss.loss.detach(), loss.nll.detach(), loss.correct.float()])
            tgt_tokens += batch.n_tgt_tokens
            src_tokens += batch.n_src_tokens

        # One all-reduce for every figure; the Ctrl-C flag rides along so all ranks stop together.
        # torch.full launches a fill on the device: no host-to-device copy to wait for.
        stop = self.interrupted or self.out_of_time()
        scalars = [torch.full((), float(x), device=self.device) for x in (tgt_tokens, src_tokens, stop)]
        totals = all_reduce_sum(torch.cat([sums, torch.stack(scalars)]), self.info)
        figures = dict(zip(("loss", "nll", "correct", "tokens", "src_tokens", "interrupt"), totals.unbind()))

        # The gradients hold sums over this rank's tokens, averaged over ranks by DDP: turn them
        # into the mean over every target token of the update.
        self.scaler.unscale_(self.optimizer)
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        torch._foreach_mul_(grads, self.info.world_size / figures["tokens"].clamp(min=1))
        self.tokens_since_save += figures["tokens"]
        return figures

    def apply_update(self, figures: dict[str, Any]) -> dict[str, Any]:
        """Clip and step with the gradients ``accumulate_gradients`` left; count the update.

        A non-finite loss or gradient norm skips the update inside the fused optimizer
        (``found_inf``, see kernels/optim.py): parameters and Adam moments stay as they were,
        and nothing waits on the device. Skipped updates still count as steps; ``check_non_finite`` reads the counters.
        """
        cfg = self.cfg.train
        max_norm = cfg.clip_norm if cfg.clip_norm > 0 else math.inf
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), max_norm, foreach=True)
        loss_finite = torch.isfinite(figures["loss"])
        finite = torch.isfinite(grad_norm) & loss_finite
        lr = lr_at(self.state.step + 1, cfg, self.plateau.scale)
        for param_group in self.optimizer.param_groups:
            param_group["lr"] = lr
        if self.scaler.is_enabled():
            self.scaler.step(self.optimizer)  # skips overflowing steps itself, also without a sync
            self.scaler.update()
            bad = ~loss_finite  # fp16 gradient overflow is routine: the scaler lowers its scale
        else:
            step_unless(self.optimizer, ~finite)
            bad = ~finite
        self.optimizer.zero_grad(set_to_none=True)
        self.bad_run = (self.bad_run + 1) * bad
        self.skipped += (~finite).float()
        self.state.step += 1
        return {**figures, "lr": lr, "grad_norm": grad_norm}

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor

    def check_non_finite(self) -> None:
        """Stop after train.max_bad_steps non-finite updates in a row (they were skipped)."""
        bad_run = int(self.bad_run.item())
        if bad_run >= self.cfg.train.max_bad_steps:
            raise TrainingStopped(
                f"training stopped at step {self.state.step}: {bad_run} non-finite losses or gradients in a row "
                "(skipped); lower train.lr, set train.clip_norm, or use fp32 — the last checkpoint is usable"
            )

    def stop_requested(self, figures: dict[str, Any]) -> bool:
        """Ctrl-C/SIGTERM seen by this process or, under DDP, by any rank: all stop together.

        Under DDP the flags were summed over ranks with the update's figures. On a GPU the sum
        of the previous update is read, from a host copy made when it was computed: waiting for
        it never waits for the update the device is working on now.
        """
        if not self.info.enabled:
            return self.interrupted or self.out_of_time()
        if self.device.type != "cuda":
            return bool(figures["interrupt"] > 0)
        previous = self.pending_interrupt
        host = torch.empty((), pin_memory=True)
        host.copy_(figures["interrupt"], non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        self.pending_interrupt = (host, done)
        if previous is None:
            return False
        previous[1].synchronize()
        return bool(previous[0] > 0)

    def wall_seconds(self) -> float:
        """Wall clock of the whole run: earlier (resumed) sessions plus this one."""
        return self.wall_before + time.perf_counter() - self.wall_start

    def budget_left(self) -> float:
        """Seconds of train.max_minutes still to go (inf without a budget)."""
        budget = self.cfg.train.max_minutes
        return math.inf if budget is None else 60 * budget - self.wall_seconds()

    def out_of_time(self) -> bool:
        """Past train.max_minutes, less the time the final validation will take (rank 0's
        estimate; the other ranks stop when rank 0 does, as the stop flag is summed)."""
        return self.budget_left() <= self.validation_reserve

    def estimate_validation(self) -> None:
        """With a time budget, how long the final validation will take: the last one's length
        (this run's, or one on record from before a resume), else a short timed slice."""
        if self.cfg.train.max_minutes is None or not self.info.is_main:
            return
        timed = [r["valid_seconds"] for r in read_metrics(self.out / METRICS_FILE) if "valid_seconds" in r]
        if timed:
            self.validation_reserve = timed[-1]
            return
        from seq2seq.training.validation import estimate_validation_seconds

        self.validation_reserve = estimate_validation_seconds(self.model, self.prepared, self.cfg, self.device)

    # --- the run ------------------------------------------------------------------

    def run(self, progress: "Progress") -> TrainSummary:
        cfg = self.cfg
        metric = cfg.train.early_stopping_metric
        save_every = cfg.train.save_every or cfg.train.valid_every
        window = Window()
        stopped_because = f"reached train.max_steps ({cfg.train.max_steps})"
        batches = update_batches(self.sampler, self.accumulation, self.state, cfg.train.max_epochs)
        start = time.perf_counter()
        start_step = self.state.step
        self.wall_start, self.wall_before = start, self.state.wall_seconds
        self.estimate_validation()
        while self.state.step < cfg.train.max_steps:
            group = next(batches, None)
            if group is None:
                stopped_because = f"reached train.max_epochs ({cfg.train.max_epochs})"
                if self.state.step and self.validated_step != self.state.step:  # the final model's score
                    improved, _ = self.validate_and_track(metric, progress)
                    self.save(best=improved)
                break
            t0 = time.perf_counter()
            figures = self.optimizer_step(group)
            window.add(figures, time.perf_counter() - t0)
            self.state.wall_seconds = self.wall_seconds()
            step = self.state.step
            log_now = step % cfg.train.log_every == 0 or step == cfg.train.max_steps
            # Reading device counters is free on the CPU; on a GPU it waits, so only when logging.
            read_device = self.device.type == "cpu" or log_now
            if read_device:
                self.check_non_finite()
            progress.tick(step, self.state.epoch, time.perf_counter() - start, step - start_step, self.budget_left())

            if log_now:
                record = window.record(step, self.state.epoch, self.skipped)
                self.state.train_seconds += window.seconds
                self.write_metrics(record)
                progress.line(record)
                if record["skipped_steps"] > self.skipped_logged:
                    self.log(f"warning: skipped {record['skipped_steps'] - self.skipped_logged} update(s) with a "
                             f"non-finite loss or gradient by step {step} ({record['skipped_steps']} in all)")
                    self.skipped_logged = record["skipped_steps"]
                window = Window()

            stop = False
            if step % cfg.train.valid_every == 0 or step == cfg.train.max_steps:
                improved, stop = self.validate_and_track(metric, progress)
                if improved or step % save_every == 0 or step == cfg.train.max_steps or stop:
                    self.save(best=improved)
                if stop:
                    stopped_because = (f"early stopping: no {metric} improvement in "
                                       f"{cfg.train.patience} validations")
            elif step % save_every == 0:
                self.save()
            if self.stop_requested(figures):
                # Every rank takes rank 0's view: all of them must take part in a validation.
                took = ""
                (out_of_time,) = broadcast_from_main([self.out_of_time() and not self.interrupted], self.info,
                                                     self.device)
                if out_of_time and self.validated_step != step:  # the final model's score, as at max_steps
                    validation_start = time.perf_counter()
                    improved, _ = self.validate_and_track(metric, progress)
                    self.save(best=improved)
                    took = f"; the final validation took {time.perf_counter() - validation_start:.0f} s"
                elif self.saved_step != step:
                    self.save()
                stopped_because = (f"reached train.max_minutes ({cfg.train.max_minutes:g}){took}" if out_of_time
                                   else f"interrupted at step {step}; continue with --resume")
                break
            if stop:
                break
        if self.state.step and self.saved_step != self.state.step:
            self.save()
        unvalidated = None
        if self.state.step and self.validated_step != self.state.step:
            unvalidated = ckpt.step_checkpoint_path(self.out, self.state.step)
        return TrainSummary(self.out, self.state.step, self.state.best_step, self.state.best_score,
                            metric, stopped_because, interrupted=self.interrupted, is_main=self.info.is_main,
                            unvalidated=unvalidated)

    def validate_and_track(self, metric: str, progress: "Progress") -> tuple[bool, bool]:
        """Validate on rank 0, log it, and decide (for every rank) whether this is the best so far."""
        improved = False
        self.validated_step = self.state.step
        if self.info.is_main:
            from seq2seq.training.validation import validate

            try:
                result = validate(self.model, self.prepared, self.cfg, self.device, abandon=lambda: self.interrupted)
            except Exception:
                # Whatever broke the validation, the updates before it are not lost.
                if self.saved_step != self.state.step:
                    self.save(alone=True)
                self.log(f"validation at step {self.state.step} failed; the model of that step is saved in "
                         f"{ckpt.step_checkpoint_path(self.out, self.state.step)}")
                raise
            if result is None:
                self.log(f"validation at step {self.state.step} abandoned: stopping")
            else:
                improved = self.track(result, metric, progress)
                if self.cfg.train.max_minutes is not None:  # the next one will take about as long
                    self.validation_reserve = result["valid_seconds"]
        patience = self.cfg.train.patience
        stop = patience is not None and self.state.validations_without_improvement >= patience
        # Only rank 0 validated: every rank takes its decisions and its plateau scale.
        improved, stop, self.plateau.scale = broadcast_from_main(
            [improved, stop, self.plateau.scale], self.info, self.device)
        return bool(improved), bool(stop)

    def track(self, result: dict[str, float], metric: str, progress: "Progress") -> bool:
        """Record a validation's figures (metrics, progress, plot, plateau); whether it is the best."""
        score = {"bleu": result["valid_bleu"], "chrf": result["valid_chrf"], "loss": result["valid_loss"]}[metric]
        higher_is_better = metric != "loss"
        best = self.state.best_score
        improved = best is None or (score > best if higher_is_better else score < best)
        if improved:
            self.state.best_score, self.state.best_step = score, self.state.step
            self.state.validations_without_improvement = 0
        else:
            self.state.validations_without_improvement += 1
        if self.cfg.train.schedule == "plateau":
            self.plateau.update(score, higher_is_better)
        record = {"step": self.state.step, **result, "best_step": self.state.best_step,
                  f"best_{metric}": self.state.best_score}
        self.write_metrics(record)
        progress.validation(record, metric)
        self.plot_curve()
        return improved

    def write_metrics(self, record: dict[str, Any]) -> None:
        if not self.info.is_main:
            return
        if self.tensorboard is not None:
            group = "valid" if "valid_loss" in record else "train"
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(f"{group}/{key}", value, record["step"])
        try:
            with open(self.out / METRICS_FILE, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as exc:
            raise UserError(f"{self.out / METRICS_FILE}: cannot append ({exc.strerror or exc}); "
                            "free disk space, then continue with --resume") from None

    def plot_curve(self) -> None:
        from seq2seq.plots import learning_curve

        records = read_metrics(self.out / METRICS_FILE)
        if records:
            learning_curve(self.out / CURVE_FILE, records)


def tensorboard_writer(cfg: Config) -> type | None:
    """TensorBoard's SummaryWriter when train.tensorboard is on (imported at start-up, so that
    a missing package is an error before anything is written)."""
    if not cfg.train.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("train.tensorboard: true needs the tensorboard package; "
                        "pip install 'attn[tensorboard]' or set it to false") from None
    return SummaryWriter


class Window:
    """Figures accumulated between two log lines (kept on the device until read)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.seconds = 0.0
        self.steps = 0
        self.last_lr = 0.0

    def add(self, figures: dict[str, Any], seconds: float) -> None:
        for key in ("loss", "nll", "correct", "tokens", "src_tokens"):
            self.sums[key] = self.sums.get(key, 0) + figures[key]
        self.last_lr = figures["lr"]
        self.seconds += seconds
        self.steps += 1

    def record(self, step: int, epoch: int, skipped: torch.Tensor) -> dict[str, Any]:
        t0 = time.perf_counter()
        s = {k: float(v) for k, v in self.sums.items()}  # the one host sync per log interval
        skipped_steps = int(skipped.item())
        # The wait above is the device finishing the window's queued work: part of its time.
        self.seconds += time.perf_counter() - t0
        tokens = max(s["tokens"], 1.0)
        seconds = max(self.seconds, 1e-9)
        return {
            "step": step, "epoch": epoch + 1,
            "loss": s["loss"] / tokens,
            "nll": s["nll"] / tokens,
            "ppl": math.exp(min(s["nll"] / tokens, 50.0)),
            "accuracy": s["correct"] / tokens,
            "lr": float(self.last_lr),
            # Target and source tokens per second of the whole job (all ranks).
            "tokens_per_s": s["tokens"] / seconds,
            "src_tokens_per_s": s["src_tokens"] / seconds,
            "skipped_steps": skipped_steps,
        }


def trim_metrics(path: Path, step: int) -> None:
    """Drop lines logged after the checkpoint we resume from; they will be logged again."""
    if path.exists():
        records = [r for r in read_metrics(path) if r.get("step", 0) <= step]
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))


class Progress:
    """A live status line on a terminal, plus one plain line per log interval (also for CI logs)."""

    def __init__(self, max_steps: int, enabled: bool, stream=sys.stderr) -> None:
        self.max_steps = max_steps
        self.enabled = enabled
        self.stream = stream
        self.live = enabled and stream.isatty()
        self.tokens_per_s = 0.0
        # A log line first returns the cursor over the live status line it replaces.
        self.clear = "\r" if self.live else ""
        self.status_shown = False  # a live status line is on screen, not yet replaced by a log line

    def tick(self, step: int, epoch: int, elapsed: float, steps_done: int, budget_left: float = math.inf) -> None:
        if not self.live:
            return
        eta = min(elapsed / max(steps_done, 1) * (self.max_steps - step), budget_left)
        bar = "#" * int(20 * step / self.max_steps)
        speed = f"{self.tokens_per_s:,.0f} tok/s " if self.tokens_per_s else ""  # known from the first log line
        self.stream.write(f"\r[{bar:<20}] step {step}/{self.max_steps} ep {epoch + 1} "
                          f"{speed}ETA {format_seconds(eta)}   ")
        self.stream.flush()
        self.status_shown = True

    def finish(self) -> None:
        """End the live status line, so that what is printed next starts on a line of its own."""
        if self.status_shown:
            self.stream.write("\n")
            self.stream.flush()
            self.status_shown = False

    def line(self, r: dict[str, Any]) -> None:
        self.tokens_per_s = r["tokens_per_s"]
        if not self.enabled:
            return
        skipped = f" | skipped {r['skipped_steps']} non-finite" if r["skipped_steps"] else ""
        self.stream.write(
            f"{self.clear}step {r['step']:>6}/{self.max_steps} | ep {r['epoch']} | loss {r['loss']:.3f}"
            f" | ppl {r['ppl']:.1f} | acc {r['accuracy']:.1%} | lr {r['lr']:.2e}"
            f" | {r['tokens_per_s']:,.0f} tgt tok/s{skipped}\n")
        self.stream.flush()
        self.status_shown = False

    def validation(self, r: dict[str, Any], metric: str) -> None:
        if self.enabled:
            self.stream.write(
                f"{self.clear}valid @ {r['step']} | loss {r['valid_loss']:.3f} | ppl {r['valid_ppl']:.1f}"
                f" | BLEU {r['valid_bleu']:.2f} | chrF {r['valid_chrf']:.2f}"
                f" | best {metric} {r[f'best_{metric}']:.2f} @ {r['best_step']}\n")
            self.stream.flush()
            self.status_shown = False


def format_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


# ------------------------------------------------------------------------- entry point


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
    device = pick_device(cfg, info)
    kernels.configure(cfg.train.cpu_kernels)
    check_precisions(cfg, device, log if info.is_main else (lambda m: None))
    if cfg.train.deterministic:
        make_deterministic()
    join_group(info, device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    main_log = log if info.is_main else (lambda m: None)
    refused = None
    if info.is_main:
        try:
            writer = tensorboard_writer(cfg)
            out = check_output_dir(cfg, resume, overwrite)
            keep_built = ("--resume goes on with the data the run was trained on: restore its config and "
                          "corpus, or start over with --overwrite") if resume else None
            prepared = prepare_data(cfg, log=main_log, keep_built=keep_built)
        except UserError as exc:
            refused = exc
    stop_all_if_main_failed(refused, info)
    if not info.is_main:
        prepared = prepare_data(cfg, log=main_log)  # up to date now: only loads
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
            trainer.tensorboard = writer(log_dir=str(out / TENSORBOARD_DIR))
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
        trainer.plot_curve()
        if trainer.tensorboard is not None:
            trainer.tensorboard.close()
    return summary


# A second signal within this many seconds of the first is taken for a copy of it.
REPEATED_SIGNAL_SECONDS = 1.0


@contextlib.contextmanager
def interrupt_handler(trainer: Trainer) -> Iterator[None]:
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
            signal.signal(sig, old)
