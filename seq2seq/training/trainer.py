"""The training loop, read top to bottom (run.py's ``train`` sets it up and starts it).

Trainer.run()                loop over optimizer updates:
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
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from seq2seq.config import Config
from seq2seq.data.batching import TokenBatchSampler, collate
from seq2seq.data.prepare import PreparedData
from seq2seq.data.special import PAD_ID
from seq2seq.errors import TrainingStopped, UserError
from seq2seq.host_copies import DelayedCopy
from seq2seq.kernels.optim import step_unless
from seq2seq.models.builder import build_model
from seq2seq.run_folder import METRICS_FILE, read_metrics
from seq2seq import checkpoint as ckpt
from seq2seq import run_folder
from seq2seq.training.budget import TimeBudget
from seq2seq.training.data_order import accumulation_steps, uneven_update_warning, update_batches
from seq2seq.training.distributed import DistInfo, all_gather_objects, all_reduce_sum, broadcast_from_main
from seq2seq.training.objective import batch_loss
from seq2seq.training.progress import Progress, Window
from seq2seq.training.records import MetricsLog, trim_metrics
from seq2seq.training.run_state import RunState, TrainSummary
from seq2seq.training.schedule import Plateau, lr_at
from seq2seq.training.setup import autocast_context, build_optimizer


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
        self.budget = TimeBudget(cfg.train.max_minutes)
        self.records = MetricsLog(self.out, info.is_main)
        self.saved_step = -1  # the step of the newest checkpoint this run wrote or resumed from
        self.validated_step = -1
        self.interrupt_flags = DelayedCopy()  # DDP on a GPU: see stop_requested

    # --- checkpoints ------------------------------------------------------------

    def checkpoint_payload(self, rng_states: list[dict[str, Any]]) -> dict[str, Any]:
        return ckpt.run_payload(self.cfg.to_dict(), self.model, self.optimizer, self.scaler, self.plateau,
                                asdict(self.state), rng_states, self.prepared.tokenizer.to_bytes())

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
        ckpt.save_atomic(payload, run_folder.step_checkpoint_path(self.out, self.state.step))
        if best:
            ckpt.save_atomic(payload, run_folder.checkpoint_dir(self.out) / run_folder.BEST_NAME)
        ckpt.prune_step_checkpoints(self.out, self.cfg.train.keep_last)

    def resume(self) -> None:
        """Load the newest checkpoint that loads; an unreadable newest one falls back to the one before."""
        path, payload = ckpt.newest_resumable(self.out, self.log)
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
        if run_folder.last_validated_step(self.out) == self.state.step:  # the final note must not lie
            self.validated_step = self.state.step
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
            host_lengths = (batch.src != PAD_ID).sum(dim=1)  # an RNN packs by them on a GPU
            src, tgt_in, real, target = (self.to_device(t) for t in (batch.src, batch.tgt_in, real,
                                                                     batch.tgt_out.flatten()[real]))
            # DDP all-reduces the gradients in the last backward of the update only.
            last = i == len(group) - 1
            sync = self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()
            with sync:
                with autocast_context(cfg, self.device):
                    loss = batch_loss(model, self.model.output_layer, src, tgt_in, real, target, cfg,
                                      host_lengths)
                self.scaler.scale(loss.objective).backward()
            sums += torch.stack([loss.loss.detach(), loss.nll.detach(), loss.correct.float()])
            tgt_tokens += batch.n_tgt_tokens
            src_tokens += batch.n_src_tokens

        # One all-reduce for every figure; the Ctrl-C flag rides along so all ranks stop together.
        # torch.full launches a fill on the device: no host-to-device copy to wait for.
        # The budget's end is rank 0's call: only it knows how long its final validation takes.
        stop = self.interrupted or (self.info.is_main and self.budget.out_of_time())
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
            return self.interrupted or self.budget.out_of_time()
        if self.device.type != "cuda":
            return bool(figures["interrupt"] > 0)
        previous = self.interrupt_flags.swap(figures["interrupt"])
        return previous is not None and bool(previous > 0)

    def estimate_validation(self) -> None:
        """With a time budget, keep the final validation's length at its end: the last one's
        (this run's, or one on record from before a resume), else a short timed slice's estimate.
        Rank 0's: the other ranks stop when it does, as the stop flag is summed."""
        if self.cfg.train.max_minutes is None or not self.info.is_main:
            return
        timed = [r["valid_seconds"] for r in read_metrics(self.out / METRICS_FILE) if "valid_seconds" in r]
        if timed:
            self.budget.reserve = self.budget.capped(timed[-1])
            return
        from seq2seq.training.validation import estimate_validation_seconds

        self.budget.reserve = self.budget.capped(
            estimate_validation_seconds(self.model, self.prepared, self.cfg, self.device))

    # --- the run ------------------------------------------------------------------

    def run(self, progress: Progress) -> TrainSummary:
        cfg = self.cfg
        metric = cfg.train.early_stopping_metric
        save_every = cfg.train.save_every or cfg.train.valid_every
        window = Window()
        stopped_because = f"reached train.max_steps ({cfg.train.max_steps})"
        batches = update_batches(self.sampler, self.accumulation, self.state, cfg.train.max_epochs)
        start = time.perf_counter()
        start_step = self.state.step
        self.budget.restart(self.state.wall_seconds)
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
            self.state.wall_seconds = self.budget.seconds()
            step = self.state.step
            log_now = step % cfg.train.log_every == 0 or step == cfg.train.max_steps
            # Reading device counters is free on the CPU; on a GPU it waits, so only when logging.
            read_device = self.device.type == "cpu" or log_now
            if read_device:
                self.check_non_finite()
            progress.tick(step, self.state.epoch, time.perf_counter() - start, step - start_step, self.budget.left())

            if log_now:
                record = window.record(step, self.state.epoch, self.skipped)
                # Learning curves against time (bench/parity.py) read it: validation included, over resumes.
                record["wall_seconds"] = round(self.state.wall_seconds, 3)
                self.state.train_seconds += window.seconds
                self.records.write(record)
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
                (out_of_time,) = broadcast_from_main([self.budget.out_of_time() and not self.interrupted], self.info,
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
            unvalidated = run_folder.step_checkpoint_path(self.out, self.state.step)
        return TrainSummary(self.out, self.state.step, self.state.best_step, self.state.best_score,
                            metric, stopped_because, interrupted=self.interrupted, is_main=self.info.is_main,
                            unvalidated=unvalidated)

    def validate_and_track(self, metric: str, progress: Progress) -> tuple[bool, bool]:
        """Validate on rank 0, log it, and decide (for every rank) whether this is the best so far."""
        improved = validated = False
        if self.info.is_main:
            from seq2seq.training.validation import validate

            try:
                result = validate(self.model, self.prepared, self.cfg, self.device, abandon=lambda: self.interrupted)
                validated = result is not None
                if validated:
                    improved = self.track(result, metric, progress)
            except Exception:
                # Whatever broke the validation or its records, the updates before it are not lost.
                if self.saved_step != self.state.step:
                    self.save(alone=True)
                self.log(f"validation at step {self.state.step} failed; the model of that step is saved in "
                         f"{run_folder.step_checkpoint_path(self.out, self.state.step)}")
                raise
            if result is None:
                self.log(f"validation at step {self.state.step} abandoned: stopping")
            elif self.cfg.train.max_minutes is not None:  # the next one will take about as long
                self.budget.reserve = self.budget.capped(result["valid_seconds"])
        patience = self.cfg.train.patience
        stop = patience is not None and self.state.validations_without_improvement >= patience
        # Only rank 0 validated: every rank takes its decisions and its plateau scale.
        improved, stop, validated, self.plateau.scale = broadcast_from_main(
            [improved, stop, validated, self.plateau.scale], self.info, self.device)
        if validated:
            self.validated_step = self.state.step
        return bool(improved), bool(stop)

    def track(self, result: dict[str, float], metric: str, progress: Progress) -> bool:
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
        self.records.write(record)
        progress.validation(record, metric)
        self.records.plot()
        return improved
