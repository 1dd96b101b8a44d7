"""Training throughput of one config: ``python -m bench.train_speed CONFIG --steps N --warmup W``.

Runs the real training step (``Trainer``) on the config's data for W + N updates, times the
last N (after one more update on the epoch's longest sentences, so that the peak memory is the
epoch's), and prints one JSON object: target/source tokens per second, padding ratio, peak RSS
of this process, and model FLOPs per target token with the utilisation they imply. Run as its
own process so the peak RSS belongs to this config alone. ``--save PATH`` writes the weights
reached, so the decoding benchmark has a model to decode with.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from seq2seq import kernels
from seq2seq.config import Config, load_config
from seq2seq.data.prepare import prepare_data
from seq2seq.training.distributed import DistInfo
from seq2seq.training.data_order import update_batches
from seq2seq.training.setup import seed_everything
from seq2seq.training.trainer import Trainer


def training_flops_per_target_token(cfg: Config, src_per_tgt: float, mean_src: float, mean_tgt: float,
                                    vocab: int) -> float:
    """The peers' FLOP model (../shared/bench/peers/scripts/ceiling.py), for any config.

    Training ~ 3 x forward = 6 x (weights each token passes through), plus the attention
    score/context matmuls; biases, norms, softmax and embedding lookups are left out.
    """
    m = cfg.model
    d = m.hidden_dim
    if cfg.is_transformer:
        enc_layer = 4 * d * d + 2 * d * m.ffn_dim
        dec_layer = 8 * d * d + 2 * d * m.ffn_dim
        weights = 6 * (m.encoder_layers * enc_layer * src_per_tgt + m.decoder_layers * dec_layer + d * vocab)
        attention = 3 * (m.encoder_layers * 4 * mean_src * d * src_per_tgt
                         + m.decoder_layers * (4 * mean_tgt * d / 2 + 4 * mean_src * d))
        return weights + attention
    # RNN: per layer 4 (LSTM) / 3 (GRU) / 1 (RNN) gates of input->hidden and hidden->hidden matmuls.
    gates = {"lstm": 4, "gru": 3, "rnn": 1}[m.arch]
    e = m.embed_dim
    enc = sum(gates * ((e if i == 0 else d) * d + (d // 2 if m.bidirectional else d) * d)
              for i in range(m.encoder_layers))
    dec_in = e + (d if m.input_feeding else 0)
    dec = sum(gates * ((dec_in if i == 0 else d) * d + d * d) for i in range(m.decoder_layers))
    attn = 2 * d * d + (d * d if m.attention in ("general", "additive") else 0)  # combine + score weights
    weights = 6 * (enc * src_per_tgt + dec + attn + d * vocab)
    attention = 3 * 4 * mean_src * d  # scores and context over the source, per target token
    return weights + attention


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--save", type=Path)
    args = parser.parse_args()

    cfg = load_config(args.config, args.set)
    torch.set_num_threads(cfg.train.threads or torch.get_num_threads())
    kernels.configure(cfg.train.cpu_kernels)
    kernels.tune_process()  # as `attn train` does
    prepared = prepare_data(cfg, log=lambda m: print(m, file=sys.stderr))
    seed_everything(cfg.train.seed)
    trainer = Trainer(cfg, prepared, DistInfo(), torch.device("cpu"), log=lambda m: None)
    batches = update_batches(trainer.sampler, trainer.accumulation, trainer.state, None)

    # Peak memory is set by the epoch's longest sentences, which the first 45 updates may not
    # meet (the peers' RSS came from runs of a whole epoch): one untimed update on them first.
    data = trainer.train_data
    longest = sorted(trainer.sampler.batches(0),
                     key=lambda b: int(np.maximum(data.src_lengths[b], data.tgt_lengths[b]).max()))
    trainer.optimizer_step(longest[-trainer.accumulation:])

    tgt = src = padded = 0
    seconds = 0.0
    for step in range(args.warmup + args.steps):
        group = next(batches)
        start = time.perf_counter()
        figures = trainer.optimizer_step(group)
        float(figures["loss"])  # wait for the step to finish before stopping the clock
        elapsed = time.perf_counter() - start
        if step >= args.warmup:
            seconds += elapsed
            tgt += int(figures["tokens"])
            src += int(figures["src_tokens"])
            for indices in group:
                padded += len(indices) * int(data.src_lengths[indices].max() + data.tgt_lengths[indices].max() + 2)
    lengths = prepared.dataset("train")
    mean_src, mean_tgt = float(np.mean(lengths.src_lengths)) + 1, float(np.mean(lengths.tgt_lengths)) + 1
    flops = training_flops_per_target_token(cfg, src / max(tgt, 1), mean_src, mean_tgt,
                                            prepared.tokenizer.tgt_vocab_size)
    result = {
        "config": args.config,
        "steps": args.steps,
        "tgt_tokens_per_s": tgt / seconds,
        "src_tokens_per_s": src / seconds,
        "tgt_tokens_per_update": tgt / args.steps,
        "padding_ratio": 1 - (src + tgt) / max(padded, 1),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "flops_per_tgt_token": flops,
        "achieved_gflops": flops * tgt / seconds / 1e9,
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "final_loss": float(figures["loss"]) / max(float(figures["tokens"]), 1),
    }
    if args.save:
        from seq2seq import checkpoint as ckpt

        ckpt.save_atomic(trainer.checkpoint_payload([ckpt.rng_state()]), args.save)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
