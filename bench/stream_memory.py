"""Does `attn translate` stream? Peak memory for N and N/10 input lines should be the same.

    python bench/stream_memory.py [--lines 100000] [--checkpoint PATH]

Pipes N short Spanish lines (from the bundled sample corpus, repeated) through
``python -m cli.main translate --checkpoint CKPT --beam 1 --max-len-a 0 --max-len-b 5`` and
reports the child's peak RSS (``wait4`` rusage of that one process), its RSS while running, and
its speed, for N/10 and N lines. A tiny model keeps it quick: the point is the memory of the
reading/batching/writing path, not translation quality. Without ``--checkpoint`` it first
trains a 2-step tiny model on the bundled corpus in a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "bible-en-es-sample"

TINY = [
    "data.tokenizer.vocab_size=300", "data.max_len=48", "model.embed_dim=32", "model.hidden_dim=32",
    "model.encoder_layers=1", "model.decoder_layers=1", "train.batch_tokens=1500", "train.max_steps=2",
    "train.valid_every=2", "train.valid_max_sentences=5", "train.threads=1",
]


def attn(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", *args]


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def train_tiny(folder: Path) -> Path:
    """A 2-step model on 300 lines of the bundled corpus; returns its checkpoint."""
    corpus = folder / "corpus"
    corpus.mkdir(parents=True)
    for split, size in (("train", 300), ("valid", 20), ("test", 20)):
        for lang in ("es", "en"):
            with open(SAMPLE / f"{split}.{lang}", encoding="utf-8") as src:
                lines = [next(src) for _ in range(size)]
            (corpus / f"{split}.{lang}").write_text("".join(lines), encoding="utf-8")
    config = folder / "tiny.yaml"
    config.write_text(f"output_dir: {folder / 'run'}\n", encoding="utf-8")
    sets = [f"data.{split}={corpus / split}" for split in ("train", "valid", "test")] + TINY
    args = ["train", str(config), "--quiet"] + [a for s in sets for a in ("--set", s)]
    started = time.perf_counter()
    result = subprocess.run(attn(*args), env=child_env(), cwd=folder, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"training the tiny model failed:\n{result.stderr[-3000:]}")
    print(f"trained a tiny checkpoint in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return folder / "run" / "checkpoints" / "best.pt"


def short_lines() -> list[bytes]:
    """Short Spanish sentences: the first 6 words of each line of the sample corpus."""
    with open(SAMPLE / "train.es", encoding="utf-8") as file:
        return [(" ".join(line.split()[:6]) + "\n").encode("utf-8") for line in file if line.strip()]


def rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def measure(checkpoint: Path, n_lines: int, pool: list[bytes]) -> dict[str, float]:
    """Stream n_lines through one translate process; its peak RSS, RSS samples and speed."""
    proc = subprocess.Popen(
        attn("translate", "--checkpoint", str(checkpoint), "--beam", "1", "--max-len-a", "0", "--max-len-b", "5"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env(), cwd=REPO,
    )

    def feed() -> None:
        try:
            block = []
            for i in range(n_lines):
                block.append(pool[i % len(pool)])
                if len(block) == 1000:
                    proc.stdin.write(b"".join(block))
                    block.clear()
            proc.stdin.write(b"".join(block))
        finally:
            proc.stdin.close()

    samples: list[tuple[int, int]] = []  # (output lines so far, RSS kB)
    out_lines = 0
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            if (kb := rss_kb(proc.pid)) is not None:
                samples.append((out_lines, kb))

    errors: list[bytes] = []
    threads = [threading.Thread(target=feed), threading.Thread(target=sample),
               threading.Thread(target=lambda: errors.append(proc.stderr.read()))]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    while chunk := proc.stdout.read(1 << 16):
        out_lines += chunk.count(b"\n")
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    stop.set()
    for thread in threads:
        thread.join()
    if proc.returncode != 0 or out_lines != n_lines:
        raise SystemExit(f"translate failed (exit {proc.returncode}, {out_lines}/{n_lines} lines):\n"
                         f"{b''.join(errors).decode(errors='replace')[-2000:]}")
    # RSS from the first translation on (model loaded, streaming), to the end.
    steady = [kb for done, kb in samples if done > 0]
    return {
        "lines": n_lines,
        "seconds": seconds,
        "lines_per_s": n_lines / seconds,
        "peak_rss_mb": usage.ru_maxrss / 1024,  # kB on Linux
        "steady_min_mb": min(steady, default=0) / 1024,
        "steady_max_mb": max(steady, default=0) / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100_000, help="N (the small run uses N/10)")
    parser.add_argument("--checkpoint", type=Path, help="default: train a tiny one in a temp folder")
    args = parser.parse_args()

    pool = short_lines()
    with tempfile.TemporaryDirectory(prefix="attn-stream-memory-") as tmp:
        checkpoint = args.checkpoint or train_tiny(Path(tmp))
        results = [measure(checkpoint, n, pool) for n in (max(args.lines // 10, 1), args.lines)]

    print(f"{'lines':>9} {'seconds':>8} {'lines/s':>8} {'peak RSS MB':>12} {'RSS while streaming MB':>23}")
    for r in results:
        steady = f"{r['steady_min_mb']:.1f} - {r['steady_max_mb']:.1f}" if r["steady_max_mb"] else "n/a (too quick)"
        print(f"{r['lines']:>9,} {r['seconds']:>8.1f} {r['lines_per_s']:>8,.0f} {r['peak_rss_mb']:>12.1f} {steady:>23}")
    small, big = results
    growth = big["peak_rss_mb"] - small["peak_rss_mb"]
    print(f"peak RSS grows by {growth:+.1f} MB ({growth / small['peak_rss_mb']:+.1%}) for "
          f"{big['lines'] / small['lines']:.0f}x the input")


if __name__ == "__main__":
    main()
