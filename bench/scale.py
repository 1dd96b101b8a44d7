"""``make bench-scale``: memory must not grow with the corpus.

    python -m bench.scale [--pairs 2000000] [--steps 50]

Makes synthetic corpora of ``--pairs`` sentence pairs and of a tenth of that by recombining
the Bible corpus (the first half of one verse's words with the second half of another's, in
both languages, so the pairs are new but keep the real length distribution), then runs, each
as its own process, ``attn tokenize`` and ``--steps`` updates of ``attn train`` with config T
on each, and reports each stage's peak RSS (the ``wait4`` rusage of that process), how much it
grew from the smaller corpus to the larger, and the tokenize throughput. The times are whole
commands (start-up, hashing the inputs, the final save included). Exits 1 when a peak is above
the 2 GiB target. Writes ``bench/out/scale.json``; the synthetic files (about 0.5 GB for 2M
pairs) go to ``bench/out/scale/`` and are reused by a second run.
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


TARGET_MIB = 2048


def measure(pairs: int, steps: int, threads: int, folder: Path) -> dict:
    """Peak RSS and time of tokenize and of ``steps`` training updates on ``pairs`` synthetic pairs."""
    prefix = folder / f"train{pairs}"
    started = time.perf_counter()
    write_synthetic(prefix, pairs)
    size = sum(Path(f"{prefix}.{lang}").stat().st_size for lang in ("es", "en")) / 2**20
    print(f"synthetic corpus: {pairs:,} pairs, {size:,.0f} MiB ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    sets = [f"data.train={prefix}", f"data.prepared_dir={folder / f'data{pairs}'}", f"output_dir={folder / 'run'}",
            f"train.threads={threads}", f"train.max_steps={steps}", "train.valid_every=1000000",
            "train.save_every=1000000", "train.valid_max_sentences=50", f"train.log_every={steps}"]
    overrides = [a for s in sets for a in ("--set", s)]
    tokenize = run_stage(["tokenize", "configs/bench_T.yaml", "--force", *overrides])
    tokenize["pairs_per_s"] = pairs / tokenize["seconds"]
    train = run_stage(["train", "configs/bench_T.yaml", "--overwrite", *overrides])
    return {"pairs": pairs, "steps": steps, "tokenize": tokenize, "train": train}


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
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    small, large = (measure(n, args.steps, args.threads, folder) for n in (args.pairs // 10, args.pairs))
    (OUT / "scale.json").write_text(json.dumps({"small": small, "large": large}, indent=2))
    for stage in ("tokenize", "train"):
        a, b = small[stage], large[stage]
        growth = b["peak_rss_mib"] - a["peak_rss_mib"]
        print(f"{stage:8s} peak RSS {a['peak_rss_mib']:,.0f} MiB at {small['pairs']:,} pairs, "
              f"{b['peak_rss_mib']:,.0f} MiB at {large['pairs']:,} ({growth:+,.0f} MiB; target: under {TARGET_MIB:,}); "
              f"whole command {a['seconds']:.0f} s / {b['seconds']:.0f} s")
    print(f"tokenize throughput at {large['pairs']:,} pairs: {large['tokenize']['pairs_per_s']:,.0f} pairs/s "
          f"({args.steps} training steps per train command)")
    over = [stage for stage in ("tokenize", "train") if large[stage]["peak_rss_mib"] > TARGET_MIB]
    if over:
        sys.exit(f"above the {TARGET_MIB:,} MiB target: {', '.join(over)}")


if __name__ == "__main__":
    main()
