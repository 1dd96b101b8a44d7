"""Benchmark of the data pipeline on the full Bible corpus: tokenize speed and padding waste.

    python -m bench.padding_waste [--corpus DIR] [--batch-tokens 4096]

Runs ``attn tokenize`` (forced, so it really works) into ``bench/out/padding_waste``, then
builds one epoch of token-budget batches and reports how much of the padded tensors is padding
and how fast batches are collated.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from seq2seq.config import load_config
from seq2seq.data.batching import TokenBatchSampler, collate, padding_waste
from seq2seq.data.prepare import prepare_data

from bench.run import CORPUS

OUT_DIR = Path(__file__).resolve().parent / "out" / "padding_waste"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS, help="has {train,valid,test}.{es,en}")
    parser.add_argument("--batch-tokens", type=int, default=4096)
    args = parser.parse_args()

    cfg = load_config(None, [
        f"data.train={args.corpus / 'train'}",
        f"data.valid={args.corpus / 'valid'}",
        f"data.test={args.corpus / 'test'}",
        f"data.prepared_dir={OUT_DIR}",
    ])

    started = time.perf_counter()
    prepared = prepare_data(cfg, force=True)
    stage_s = time.perf_counter() - started
    splits = prepared.report["splits"]
    pairs = sum(stats["pairs_read"] for stats in splits.values())

    train = prepared.dataset("train")
    sampler = TokenBatchSampler(train.src_lengths, train.tgt_lengths, args.batch_tokens, seed=0)
    started = time.perf_counter()
    batches = sampler.batches(epoch=0)
    sample_s = time.perf_counter() - started
    started = time.perf_counter()
    for indices in batches:
        collate(train, indices)
    collate_s = time.perf_counter() - started

    costs = [len(b) * (max(train.src_lengths[b].max(), train.tgt_lengths[b].max()) + 1) for b in batches]
    print()
    print(f"corpus            {args.corpus} ({pairs} pairs in all splits)")
    print(f"tokenize stage    {stage_s:.1f} s, {pairs / stage_s:,.0f} pairs/s overall "
          f"(encoding alone {prepared.report['time']['pairs_per_s']:,} pairs/s)")
    print(f"batches           {len(batches)} for {len(train)} training pairs, "
          f"{len(train) / len(batches):.1f} pairs each, budget {args.batch_tokens}")
    print(f"budget use        mean {np.mean(costs) / args.batch_tokens:.1%}, max cost {max(costs)}")
    print(f"padding waste     {padding_waste(batches, train.src_lengths, train.tgt_lengths):.2%} "
          "of the padded source and target tokens")
    print(f"batch order       {sample_s * 1000:.0f} ms per epoch")
    print(f"collate           {collate_s * 1000:.0f} ms per epoch, {collate_s / len(batches) * 1e6:.0f} us per batch")


if __name__ == "__main__":
    main()
