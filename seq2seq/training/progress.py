"""What a run shows while it trains: the figures of each log interval, a live status line on a
terminal, and one plain line per interval and per validation (also for CI logs)."""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import torch

from seq2seq.training.memory import peak_rss_mib


class Window:
    """Figures accumulated between two log lines (kept on the device until read)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.seconds = 0.0
        self.steps = 0
        self.last_lr = 0.0

    def add(self, figures: dict[str, Any], seconds: float) -> None:
        for key in ("loss", "nll", "correct", "tokens", "src_tokens"):
            self.sums[key] = self.sums.get(key, 0) + figures[key]
        self.last_lr = figures["lr"]
        self.seconds += seconds
        self.steps += 1

    def record(self, step: int, epoch: int, skipped: torch.Tensor) -> dict[str, Any]:
        t0 = time.perf_counter()
        s = {k: float(v) for k, v in self.sums.items()}  # the one host sync per log interval
        skipped_steps = int(skipped.item())
        # The wait above is the device finishing the window's queued work: part of its time.
        self.seconds += time.perf_counter() - t0
        tokens = max(s["tokens"], 1.0)
        seconds = max(self.seconds, 1e-9)
        return {
            "step": step, "epoch": epoch + 1,
            "loss": s["loss"] / tokens,
            "nll": s["nll"] / tokens,
            "ppl": math.exp(min(s["nll"] / tokens, 50.0)),
            "accuracy": s["correct"] / tokens,
            "lr": float(self.last_lr),
            # Target and source tokens per second of the whole job (all ranks).
            "tokens_per_s": s["tokens"] / seconds,
            "src_tokens_per_s": s["src_tokens"] / seconds,
            "skipped_steps": skipped_steps,
            "peak_rss_mib": peak_rss_mib(),  # this process's, since the run started
        }


class Progress:
    """A live status line on a terminal, plus one plain line per log interval (also for CI logs)."""

    def __init__(self, max_steps: int, enabled: bool, stream=sys.stderr) -> None:
        self.max_steps = max_steps
        self.enabled = enabled
        self.stream = stream
        self.live = enabled and stream.isatty()
        self.tokens_per_s = 0.0
        # A log line first returns the cursor over the live status line it replaces.
        self.clear = "\r" if self.live else ""
        self.status_shown = False  # a live status line is on screen, not yet replaced by a log line

    def tick(self, step: int, epoch: int, elapsed: float, steps_done: int, budget_left: float = math.inf) -> None:
        if not self.live:
            return
        eta = min(elapsed / max(steps_done, 1) * (self.max_steps - step), budget_left)
        bar = "#" * int(20 * step / self.max_steps)
        speed = f"{self.tokens_per_s:,.0f} tok/s " if self.tokens_per_s else ""  # known from the first log line
        self.stream.write(f"\r[{bar:<20}] step {step}/{self.max_steps} ep {epoch + 1} "
                          f"{speed}ETA {format_seconds(eta)}   ")
        self.stream.flush()
        self.status_shown = True

    def finish(self) -> None:
        """End the live status line, so that what is printed next starts on a line of its own."""
        if self.status_shown:
            self.stream.write("\n")
            self.stream.flush()
            self.status_shown = False

    def line(self, r: dict[str, Any]) -> None:
        self.tokens_per_s = r["tokens_per_s"]
        if not self.enabled:
            return
        skipped = f" | skipped {r['skipped_steps']} non-finite" if r["skipped_steps"] else ""
        self.stream.write(
            f"{self.clear}step {r['step']:>6}/{self.max_steps} | ep {r['epoch']} | loss {r['loss']:.3f}"
            f" | ppl {r['ppl']:.1f} | acc {r['accuracy']:.1%} | lr {r['lr']:.2e}"
            f" | {r['tokens_per_s']:,.0f} tgt tok/s{skipped}\n")
        self.stream.flush()
        self.status_shown = False

    def validation(self, r: dict[str, Any], metric: str) -> None:
        if self.enabled:
            self.stream.write(
                f"{self.clear}valid @ {r['step']} | loss {r['valid_loss']:.3f} | ppl {r['valid_ppl']:.1f}"
                f" | BLEU {r['valid_bleu']:.2f} | chrF {r['valid_chrf']:.2f}"
                f" | best {metric} {r[f'best_{metric}']:.2f} @ {r['best_step']}\n")
            self.stream.flush()
            self.status_shown = False


def format_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
