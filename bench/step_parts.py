"""Time the parts of a training step (forward, loss, backward, update) on fixed batches.

    python -m bench.step_parts configs/bench_T.yaml --steps 6 --repeat 3

Reports, per part, the sum over the steps of the fastest repeat (robust to other load).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from seq2seq.config import load_config
from seq2seq.data.batching import collate
from seq2seq.data.prepare import prepare_data
from seq2seq.training.distributed import DistInfo
from seq2seq.training.loss import label_smoothed_nll
from seq2seq.training.trainer import Trainer, seed_everything, update_batches


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--flush-denormal", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fused-loss", action="store_true", help="what-if: bench/loss_prototype.py's loss")
    parser.add_argument("--cpu-clock", action="store_true",
                        help="time with this thread's CPU clock (use with --threads 1: immune to other load)")
    args = parser.parse_args()
    global label_smoothed_nll
    if args.fused_loss:
        from bench.loss_prototype import label_smoothed_nll
    if args.flush_denormal:
        torch.set_flush_denormal(True)
    cfg = load_config(args.config, [f"train.threads={args.threads}", *args.set])
    clock = time.thread_time if args.cpu_clock else time.perf_counter
    torch.set_num_threads(cfg.train.threads)
    prepared = prepare_data(cfg, log=lambda m: None)
    seed_everything(cfg.train.seed)
    trainer = Trainer(cfg, prepared, DistInfo(), torch.device("cpu"), log=lambda m: None)
    batches = update_batches(trainer.sampler, trainer.accumulation, trainer.state, None)
    groups = [next(batches) for _ in range(args.warmup + args.steps)]
    model = trainer.model
    parts = ("collate", "forward", "loss", "backward", "update")
    best = {p: [float("inf")] * len(groups) for p in parts}
    tokens = 0
    for r in range(args.repeat + 1):
        for i, group in enumerate(groups):
            model.train()
            t = [clock()]
            batch = collate(trainer.train_data, group[0])
            t.append(clock())
            logits = model(batch.src, batch.tgt_in)
            t.append(clock())
            loss = label_smoothed_nll(logits, batch.tgt_out, cfg.train.label_smoothing)
            t.append(clock())
            loss.loss.backward()
            t.append(clock())
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            torch._foreach_mul_(grads, 1.0 / batch.n_tgt_tokens)
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
            t.append(clock())
            if r == 0:
                continue  # warm-up pass
            for p, a, b in zip(parts, t, t[1:]):
                best[p][i] = min(best[p][i], b - a)
            if r == 1 and i >= args.warmup:
                tokens += batch.n_tgt_tokens
    result = {p: round(sum(best[p][args.warmup:]) / args.steps * 1e3, 1) for p in parts}
    total = sum(sum(best[p][args.warmup:]) for p in parts)
    result["ms_per_step"] = round(total / args.steps * 1e3, 1)
    result["tok_per_s_best"] = round(tokens / total)
    import resource

    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
