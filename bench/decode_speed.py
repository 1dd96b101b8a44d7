"""Decoding speed of one checkpoint: ``python -m bench.decode_speed CKPT --beam 5 [--limit N]``.

Translates the first ``--limit`` lines of the test set (all by default) the way ``bench.run``
does (``bench.run.benchmark_translator``: the checkpoint's decode settings, batches of 64
sentences), and prints
one JSON object: seconds, sentences/s, output pieces/s. ``--profile`` prints torch.profiler's
op table instead. ``--repeat`` runs the translation several times and reports the fastest
(the machine is shared: the fastest run is the least disturbed one). ``--out FILE`` writes
the translations, to compare two versions of the code.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bench.run import CORPUS, benchmark_translator
from seq2seq import kernels


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--engine", choices=["torch", "ctranslate2"], default="torch")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--src", type=Path, default=CORPUS / "test.es")
    parser.add_argument("--cpu-kernels", choices=["auto", "off"], default="auto")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kernels.configure(args.cpu_kernels)
    kernels.tune_process()  # as `attn translate` does
    lines = args.src.read_text(encoding="utf-8").splitlines()[: args.limit]
    with benchmark_translator(args.checkpoint, args.beam, precision=args.precision, workers=args.workers,
                              engine=args.engine) as translator:
        if args.profile:
            from torch.profiler import profile

            with profile(record_shapes=True) as prof:
                translator.translate(lines)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=35))
            return
        best = None
        for _ in range(args.repeat):
            start = time.perf_counter()
            results = translator.translate(lines)
            seconds = time.perf_counter() - start
            best = seconds if best is None else min(best, seconds)
    pieces = sum(len(r[0].tokens) for r in results)
    if args.out:
        args.out.write_text("".join(" ".join(map(str, r[0].tokens)) + f"\t{r[0].score:.4f}\n" for r in results))
    print(json.dumps({"beam": args.beam, "sentences": len(lines), "seconds": round(best, 3),
                      "sentences_per_s": round(len(lines) / best, 1), "tokens_per_s": round(pieces / best),
                      "pieces_per_sentence": round(pieces / len(lines), 1)}))


if __name__ == "__main__":
    main()
