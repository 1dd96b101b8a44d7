"""``make demo``: the four stages end to end on the bundled corpus, printing each command.

tokenize -> train (a small attention model, about 3 minutes on 2 cores) -> translate the
bundled test set with attention heatmaps -> evaluate; then where everything is and how to
translate your own sentence.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

CONFIG = "configs/demo.yaml"
RUN = Path("runs/demo")
TEST_SRC = "data/bible-en-es-sample/test.es"
TEST_REF = "data/bible-en-es-sample/test.en"


def attn(*args: str) -> None:
    """Run one attn command as a user would type it; stop the demo if it fails."""
    print(f"\n$ attn {shlex.join(args)}", flush=True)
    result = subprocess.run([sys.executable, "-m", "cli.main", *args])
    if result.returncode != 0:
        sys.exit(result.returncode)


def main() -> None:
    start = time.perf_counter()
    attn("tokenize", CONFIG)
    attn("train", CONFIG, "--overwrite")
    hyp = RUN / "test.hyp.en"
    plots = RUN / "attention"
    attn("translate", "--checkpoint", str(RUN), "--input", TEST_SRC, "--output", str(hyp),
         "--attention-plots", str(plots), "--max-plots", "5")
    attn("evaluate", "--hyp", str(hyp), "--ref", TEST_REF, "--report-dir", str(RUN / "eval"))

    report = json.loads((RUN / "eval" / "report.json").read_text())
    print(f"\n== attn demo finished in {time.perf_counter() - start:.0f} s ==")
    print(f"test BLEU {report['bleu']:.2f} | chrF {report['chrf']:.2f} | TER {report['ter']:.2f}")
    print(f"report:           {RUN / 'eval' / 'report.md'}")
    print(f"learning curve:   {RUN / 'learning_curve.png'}")
    print(f"attention plots:  {plots}/")
    print(f"checkpoints:      {RUN / 'checkpoints'}/")
    print("translate your own sentence:")
    print(f"  echo 'En el principio creó Dios los cielos y la tierra.' | attn translate --checkpoint {RUN}")


if __name__ == "__main__":
    main()
