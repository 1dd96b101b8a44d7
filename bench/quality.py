"""``make bench-quality``: quality after a fixed wall-clock budget, as the peers measured it.

Trains config T (``configs/bench_T.yaml``) for 12 minutes of wall clock on the full corpus
(no validation during the run, like OpenNMT-py's and fairseq's runs, which only computed
dev loss), then translates the whole test set greedy and with beam 5, and prints BLEU/chrF
(sacrebleu) and decoding speed next to the peers' figures (../shared/bench/peers/results.md).
Writes ``bench/out/quality.json``. About 15 minutes on 2 cores; run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch

from bench.run import CORPUS, OUT, ROOT, decode_speed, markdown_table

PEERS = {  # ../shared/bench/peers/results.md: 720 s of training T, full test set
    "OpenNMT-py": {"bleu1": 0.52, "chrf1": 11.14, "bleu5": 1.22, "chrf5": 10.80, "tok1": 5494, "tok5": 1322},
    "fairseq": {"bleu1": 1.44, "chrf1": 14.99, "bleu5": 2.77, "chrf5": 16.62, "tok1": 3316, "tok5": 1079},
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="training precision (bf16: autocast, on CPUs with AVX512-BF16 or AMX)")
    parser.add_argument("--skip-train", action="store_true", help="decode the run already in bench/out/quality_T")
    args = parser.parse_args()
    suffix = "" if args.precision == "fp32" else f"_{args.precision}"
    run_dir = OUT / f"quality_T{suffix}"
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if not args.skip_train:
        command = [sys.executable, "-m", "cli.main", "train", "configs/bench_T.yaml", "--overwrite",
                   "--set", f"output_dir={run_dir}", "--set", f"train.max_minutes={args.minutes}",
                   "--set", "train.max_steps=1000000", "--set", "train.valid_every=1000000",
                   "--set", "train.save_every=1000000", "--set", f"train.threads={args.threads}",
                   "--set", f"train.precision={args.precision}"]
        print("$", " ".join(command), file=sys.stderr, flush=True)
        subprocess.run(command, cwd=ROOT, check=True)

    torch.set_num_threads(args.threads)
    from seq2seq import checkpoint as ckpt
    from seq2seq import run_folder

    steps = ckpt.load_checkpoint(run_folder.resolve_checkpoint(run_dir))["run_state"]["step"]
    results = {"minutes": args.minutes, "precision": args.precision, "steps": steps}
    for beam in (1, 5):
        results[f"beam{beam}"] = decode_speed(run_dir, beam, CORPUS / "test.es",
                                              CORPUS / "test.en")
        r = results[f"beam{beam}"]
        print(f"beam {beam}: BLEU {r['bleu']:.2f} chrF {r['chrf']:.2f} | {r['sentences_per_s']:.1f} sent/s "
              f"{r['tokens_per_s']:,.0f} tok/s ({r['pieces_per_sentence']:.1f} pieces/sentence)", file=sys.stderr)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"quality{suffix}.json").write_text(json.dumps(results, indent=2))

    rows = [("system", "steps", "BLEU/chrF greedy", "BLEU/chrF beam 5", "greedy tok/s", "beam-5 tok/s")]
    one, five = results["beam1"], results["beam5"]
    rows.append(("attn", str(steps), f"{one['bleu']:.2f} / {one['chrf']:.1f}", f"{five['bleu']:.2f} / {five['chrf']:.1f}",
                 f"{one['tokens_per_s']:,.0f}", f"{five['tokens_per_s']:,.0f}"))
    for name, p in PEERS.items():
        rows.append((name, "", f"{p['bleu1']:.2f} / {p['chrf1']:.1f}", f"{p['bleu5']:.2f} / {p['chrf5']:.1f}",
                     f"{p['tok1']:,}", f"{p['tok5']:,}"))
    print(f"config T after {args.minutes:g} minutes of {args.precision} training ({args.threads} threads), "
          "full test set (decoding in fp32):")
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
