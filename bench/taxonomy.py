"""``make bench-taxonomy``: every attention mechanism on the full corpus, one equal budget each.

Runs the points of ``configs/sweep_rnn_taxonomy.yaml`` (``--sweep transformer``:
``configs/sweep_transformer_taxonomy.yaml``, ``make bench-taxonomy-transformer``; model and
decoding settings as there)
on the full Bible corpus, Spanish -> English, each trained for the same wall-clock budget
(``--minutes``, validation included, one validation of 200 sentences at the end), then scored
on the whole test set (greedy, the sweep's decode.beam_size 1): the leaderboard gives BLEU,
chrF, target tokens/s and peak RSS per mechanism. The RNN sweep's 17 points of 4 minutes take
about 85 minutes on 2 cores, the Transformer's 10 points of 5 minutes about 60; run nothing else
meanwhile. Re-running skips finished points.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import yaml

from bench.peers import this_machine
from bench.run import CORPUS, OUT, ROOT

SWEEPS = {"rnn": ROOT / "configs" / "sweep_rnn_taxonomy.yaml",
          "transformer": ROOT / "configs" / "sweep_transformer_taxonomy.yaml"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sweep", choices=tuple(SWEEPS), default="rnn", help="which half of the taxonomy")
    parser.add_argument("--minutes", type=float, default=4.0, help="training budget of every point")
    parser.add_argument("--corpus", default=str(CORPUS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    sweep = yaml.safe_load(SWEEPS[args.sweep].read_text(encoding="utf-8"))
    out = OUT / ("taxonomy" if args.sweep == "rnn" else f"taxonomy_{args.sweep}")
    sweep["output_dir"] = str(out)
    sweep["set"] = {
        **sweep["set"],
        **{f"data.{split}": f"{args.corpus}/{split}" for split in ("train", "valid", "test")},
        "train.max_minutes": args.minutes, "train.max_steps": 10**7, "train.valid_every": 10**7,
        "train.valid_max_sentences": 200, "train.log_every": 100, "train.threads": args.threads,
    }
    out.mkdir(parents=True, exist_ok=True)
    derived = out / "sweep.yaml"
    derived.write_text(yaml.safe_dump(sweep, sort_keys=False), encoding="utf-8")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    print(f"{len(sweep['points'])} points x {args.minutes:g} min on {this_machine().label}", flush=True)
    subprocess.run([sys.executable, "-m", "cli.main", "experiment", str(derived)], cwd=ROOT, check=True)
    print((out / "leaderboard.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
