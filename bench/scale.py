"""``make bench-scale``: memory must not grow with the corpus.

    python -m bench.scale [--pairs 2000000] [--steps 50]

Makes a synthetic corpus of ``--pairs`` sentence pairs by recombining the Bible corpus (the
first half of one verse's words with the second half of another's, in both languages, so the
pairs are new but keep the real length distribution), then runs, each as its own process,
``attn tokenize`` and ``--steps`` updates of ``attn train`` with config T on it, and reports
each stage's peak RSS (the ``wait4`` rusage of that process) and the tokenize throughput.
Writes ``bench/out/scale.json``; the synthetic files (about 0.5 GB for 2M pairs) go to
``bench/out/scale/`` and are reused by a second run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.run import CORPUS, OUT, ROOT


def recombined(a: str, b: str) -> str:
    left, right = a.split(), b.split()
    return " ".join(left[: len(left) // 2] + right[len(right) // 2 :])


def write_synthetic(prefix: Path, pairs: int) -> None:
    """``pairs`` recombined pairs in PREFIX.es / PREFIX.en (skipped when already there)."""
    es = (CORPUS / "train.es").read_text(encoding="utf-8").splitlines()
    en = (CORPUS / "train.en").read_text(encoding="utf-8").splitlines()
    done = prefix.with_suffix(".done")
    if done.exists() and done.read_text() == str(pairs):
        return
    n = len(es)
    with open(f"{prefix}.es", "w", encoding="utf-8") as out_es, open(f"{prefix}.en", "w", encoding="utf-8") as out_en:
        for i in range(pairs):
            a, b = i % n, (i * 7919 + i // n) % n  # a prime stride: a new partner verse each round
            out_es.write(recombined(es[a], es[b]) + "\n")
            out_en.write(recombined(en[a], en[b]) + "\n")
    done.write_text(str(pairs))


def run_stage(args: list[str]) -> dict:
    """Run ``attn ARGS`` as a child process; its wall time and peak RSS."""
    command = [sys.executable, "-m", "cli.main", *args]
    print("$", " ".join(command), file=sys.stderr, flush=True)
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT)
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"stage failed: {' '.join(command)}")
    return {"seconds": time.perf_counter() - started, "peak_rss_mib": usage.ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=2_000_000)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not (CORPUS / "train.es").exists():
        sys.exit(f"the full corpus is not at {CORPUS}; the benchmark needs it")
    folder = OUT / "scale"
    folder.mkdir(parents=True, exist_ok=True)
    prefix = folder / "train"
    started = time.perf_counter()
    write_synthetic(prefix, args.pairs)
    print(f"synthetic corpus: {args.pairs:,} pairs, {(Path(f'{prefix}.es').stat().st_size + Path(f'{prefix}.en').stat().st_size) / 2**20:,.0f} MiB "
          f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    sets = [f"data.train={prefix}", f"data.prepared_dir={folder / 'data'}", f"output_dir={folder / 'run'}",
            f"train.threads={args.threads}", f"train.max_steps={args.steps}", "train.valid_every=1000000",
            "train.save_every=1000000", "train.valid_max_sentences=50", f"train.log_every={args.steps}"]
    overrides = [a for s in sets for a in ("--set", s)]
    tokenize = run_stage(["tokenize", "configs/bench_T.yaml", "--force", *overrides])
    tokenize["pairs_per_s"] = args.pairs / tokenize["seconds"]
    train = run_stage(["train", "configs/bench_T.yaml", "--overwrite", *overrides])
    results = {"pairs": args.pairs, "steps": args.steps, "tokenize": tokenize, "train": train}
    (OUT / "scale.json").write_text(json.dumps(results, indent=2))
    print(f"{args.pairs:,} pairs: tokenize {tokenize['seconds']:.0f} s ({tokenize['pairs_per_s']:,.0f} pairs/s), "
          f"peak RSS {tokenize['peak_rss_mib']:,.0f} MiB; {args.steps} training steps {train['seconds']:.0f} s, "
          f"peak RSS {train['peak_rss_mib']:,.0f} MiB (target: under 2,048 MiB)")


if __name__ == "__main__":
    main()
