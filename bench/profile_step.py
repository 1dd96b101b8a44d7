"""Profile or time training steps of one config on fixed batches.

    python -m bench.profile_step configs/bench_T.yaml --steps 6 --profile   # op table
    python -m bench.profile_step configs/bench_T.yaml --steps 10 --repeat 3 # median tok/s

The same first ``--warmup + --steps`` updates of epoch 0 are used every time, so two code
versions run on identical batches (for A/B runs in the same sitting). ``--forward-only``
times the forward pass and loss without a backward pass or an update.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from seq2seq import kernels
from seq2seq.config import load_config
from seq2seq.data.prepare import prepare_data
from seq2seq.training.distributed import DistInfo
from seq2seq.training.data_order import update_batches
from seq2seq.training.setup import seed_everything
from seq2seq.training.trainer import Trainer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--sort", default="self_cpu_time_total")
    parser.add_argument("--rows", type=int, default=40)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()

    cfg = load_config(args.config, ["train.threads=2", *args.set])
    torch.set_num_threads(cfg.train.threads)
    kernels.configure(cfg.train.cpu_kernels)
    kernels.tune_process()  # as `attn train` does
    prepared = prepare_data(cfg, log=lambda m: None)
    seed_everything(cfg.train.seed)
    trainer = Trainer(cfg, prepared, DistInfo(), torch.device("cpu"), log=lambda m: None)
    batches = update_batches(trainer.sampler, trainer.accumulation, trainer.state, None)
    groups = [next(batches) for _ in range(args.warmup + args.steps)]

    def run(group):
        figures = trainer.optimizer_step(group)
        float(figures["loss"])
        return int(figures["tokens"])

    for group in groups[: args.warmup]:
        run(group)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for group in groups[args.warmup :]:
                run(group)
        print(prof.key_averages().table(sort_by=args.sort, row_limit=args.rows))
        print(prof.key_averages(group_by_input_shape=True).table(sort_by=args.sort, row_limit=args.rows))
        return
    rates, cpu_rates = [], []
    best = [float("inf")] * args.steps  # per update: the fastest of the repeats
    for _ in range(args.repeat):
        tokens, seconds, cpu = 0, 0.0, 0.0
        for i, group in enumerate(groups[args.warmup :]):
            start, cpu_start = time.perf_counter(), time.process_time()
            tokens += run(group)
            best[i] = min(best[i], time.perf_counter() - start)
            seconds += time.perf_counter() - start
            cpu += time.process_time() - cpu_start
        rates.append(tokens / seconds)
        cpu_rates.append(tokens / cpu)
    # tok per CPU-second x 2 cores: what a quiet machine would give with perfect 2-thread
    # scaling; much less sensitive to other processes than the wall clock.
    print(json.dumps({"config": args.config, "tok_per_s": round(statistics.median(rates)),
                      "tok_per_s_best": round(tokens / sum(best)),
                      "tok_per_cpu_s_x2": round(2 * statistics.median(cpu_rates)),
                      "all": [round(r) for r in rates], "all_cpu_x2": [round(2 * r) for r in cpu_rates]}))


if __name__ == "__main__":
    sys.exit(main())
