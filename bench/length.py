"""``make bench-length``: how each Transformer self-attention scales with the source length.

    python -m bench.length [--lengths 128 256 512 1024 2048 4096] [--cap-seconds 60] [--quick]

The sub-quadratic mechanisms (local, sparse, performer, linformer; seq2seq/models/transformer.py)
exist to make long inputs affordable, and whether, and from which length, they do so is a
measurement, not a property of their formulas: a window pays only where it is computed block by
block (models/blocked.py; the decoder's causal window is a dense mask), and a feature map has a
constant price that only pays off past some length.
So, for each mechanism and each source length, on one small Transformer (hidden 128, 4 heads,
FFN 256, 2+2 layers, vocabulary 1000, dropout 0.1, fp32; local and sparse with window 16,
sparse with 2 global tokens and 1 random block, performer with 64 features, linformer with rank
64 and max_positions set to the longest length), this measures:

* training: one batch of synthetic random sentences (ids 4..999, no padding) of a fixed number
  of source tokens (``--tokens``, default 4096: ``max(1, 4096 // length)`` sentences), each with
  a target a quarter of the source length; forward and backward of the cross-entropy of the
  logits, in train mode, without an optimizer update. One warm-up step, then the median of
  ``--repeats`` timed steps, as ms per 1,000 source tokens. With the tokens per batch fixed, a
  mechanism linear in the length has a flat time per token; full attention's grows with it.
  Memory is the growth of the process's peak RSS (resident memory, VmHWM, reset before each
  step by seq2seq.training.memory; freed heap memory is handed back to the OS first) during a
  timed step, the largest of the steps, in MiB per 1,000 source tokens: RSS, not the tensors
  alone, so the allocator's slack is included, the way `attn train`'s peak is reported.
* decoding: ``--decode-sentences`` sentences (default 4) of that length encoded once, then
  ``--decode-steps`` (default 32) calls of ``model.step`` (greedy, cross-attention weights
  not computed, under inference_mode, eval mode), as ms per output token (the loop's time over
  steps x sentences). Encoding is timed apart (in the JSON only): this is the per-token price
  a long source puts on the decoder, cross-attention over every source position.

It prints a Markdown table (one row per mechanism and length), then per mechanism the log-log
slope of training time per sentence against the length (1: linear, 2: quadratic) over the
lengths that ran, and the shortest length at which it trains faster per token than full
attention (scaled_dot). A measurement that runs out of memory or past ``--cap-seconds`` (per
measurement, warm-up included) is shown as "–" with the reason in a footnote, and the
mechanism's longer lengths are then skipped for it; nothing stops the whole run. Writes
``bench/out/length.json`` and ``bench/out/length.png`` (log-log, time per token against length).
``--quick`` is a CI-sized run: lengths 32 and 64, 512 tokens a batch, one timed step, 8 decoding
steps. Timings are of this processor (named in the header) at the threads torch uses.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import functools
import json
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter, NullLocator

from bench.peers import this_machine
from bench.run import OUT
from seq2seq.config import ModelConfig
from seq2seq.data.special import BOS_ID, PAD_ID
from seq2seq.models.builder import build_model
from seq2seq.plots import STYLE, _save
from seq2seq.training.memory import peak_rss_mib, reset_peak_rss

# Each mechanism's own keys; linformer's max_positions is the longest length measured.
MECHANISMS: dict[str, dict] = {
    "scaled_dot": {},
    "local": {"window": 16},
    "sparse": {"window": 16, "global_tokens": 2, "random_blocks": 1},
    "performer": {"features": 64},
    "linformer": {"rank": 64},
}
REFERENCE = "scaled_dot"
MODEL = {"arch": "transformer", "hidden_dim": 128, "heads": 4, "ffn_dim": 256, "encoder_layers": 2,
         "decoder_layers": 2, "dropout": 0.1}
VOCAB = 1000
FIRST_ID = 4  # 0-3 are PAD, UNK, BOS, EOS
LENGTHS = (128, 256, 512, 1024, 2048, 4096)
QUICK = {"lengths": (32, 64), "tokens": 512, "repeats": 1, "decode_steps": 8}
DASH = "–"


@dataclass
class Settings:
    lengths: tuple[int, ...] = LENGTHS
    tokens: int = 4096  # source tokens per training batch
    repeats: int = 3  # timed training steps (after one warm-up step)
    decode_sentences: int = 4
    decode_steps: int = 32
    cap_seconds: float = 60.0  # per measurement (training or decoding of one mechanism and length)
    mechanisms: tuple[str, ...] = tuple(MECHANISMS)
    model: dict = field(default_factory=lambda: dict(MODEL))


# --------------------------------------------------------------------------- guards


class CapExceeded(Exception):
    pass


@contextlib.contextmanager
def time_cap(seconds: float) -> Iterator[None]:
    """Raise CapExceeded in this block after ``seconds`` (SIGALRM, so only in the main thread of a
    POSIX process; elsewhere the measurements' own checks between steps are the only cap). A
    single long operator finishes before the signal is handled."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise CapExceeded

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, MemoryError) or isinstance(error, getattr(torch, "OutOfMemoryError", ())):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(
        words in text for words in ("out of memory", "can't allocate memory", "not enough memory"))


def guarded(measure: Callable[[], dict], cap: float) -> tuple[dict | None, str | None, bool]:
    """(result, None, False), or (None, why it has no figure, whether longer lengths would fare no better)."""
    try:
        with time_cap(cap):
            return measure(), None, False
    except CapExceeded:
        return None, f"over the {cap:g} s cap", True
    except Exception as error:  # noqa: BLE001 - one cell must never end the run
        if is_out_of_memory(error):
            return None, f"out of memory ({str(error).splitlines()[0][:80]})", True
        return None, f"failed: {type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}", False


# --------------------------------------------------------------------------- memory


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # glibc only
        return libc
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Hand the heap's free pages back to the OS, so that the next step's RSS growth is its own
    and not hidden by memory an earlier, larger step left behind (glibc; elsewhere nothing)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def current_rss_mib() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def start_peak() -> float | None:
    """Reset the peak RSS; the RSS it starts from, or None where the peak cannot be reset."""
    release_freed_memory()
    reset_peak_rss()
    peak, now = peak_rss_mib(), current_rss_mib()
    if peak is None or now is None or peak - now > 2.0:  # VmHWM not reset (not Linux, or refused)
        return None
    return peak


# --------------------------------------------------------------------------- measurements


def build(mechanism: str, settings: Settings) -> torch.nn.Module:
    extra = dict(MECHANISMS[mechanism])
    if mechanism == "linformer":
        extra["max_positions"] = max(8, max(settings.lengths))
    torch.manual_seed(0)  # performer's random features, sparse's random blocks
    return build_model(ModelConfig(**settings.model, attention=mechanism, **extra), VOCAB, VOCAB)


def measure_training(model: torch.nn.Module, length: int, settings: Settings) -> dict:
    batch, tgt_length = max(1, settings.tokens // length), max(1, length // 4)
    generator = torch.Generator().manual_seed(length)
    src = torch.randint(FIRST_ID, VOCAB, (batch, length), generator=generator)
    tgt = torch.randint(FIRST_ID, VOCAB, (batch, tgt_length + 1), generator=generator)
    tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
    model.train()

    def step() -> None:
        logits = model(src, tgt_in)
        F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt_out.reshape(-1), ignore_index=PAD_ID).backward()

    started = time.perf_counter()
    step()  # warm-up
    last = time.perf_counter() - started
    times, growths = [], []
    for _ in range(settings.repeats):
        if time.perf_counter() - started + last > settings.cap_seconds:
            raise CapExceeded
        model.zero_grad(set_to_none=True)  # the gradients count in the step's memory
        base = start_peak()
        t0 = time.perf_counter()
        step()
        last = time.perf_counter() - t0
        times.append(last)
        peak = peak_rss_mib()
        growths.append(None if base is None or peak is None else peak - base)
    model.zero_grad(set_to_none=True)
    tokens = batch * length
    seconds = statistics.median(times)
    growth = None if None in growths else max(growths)
    return {"batch": batch, "tgt_length": tgt_length, "step_ms": seconds * 1e3,
            "ms_per_sentence": seconds * 1e3 / batch, "ms_per_1k_tokens": seconds * 1e6 / tokens,
            "peak_rss_growth_mib": growth, "mib_per_1k_tokens": None if growth is None else growth * 1e3 / tokens}


def measure_decoding(model: torch.nn.Module, length: int, settings: Settings) -> dict:
    sentences, steps = settings.decode_sentences, settings.decode_steps
    src = torch.randint(FIRST_ID, VOCAB, (sentences, length), generator=torch.Generator().manual_seed(length))
    model.eval()
    model.step_attention = False  # as the searches run it when no attention is asked for

    def decode(n: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        state = model.init_state(model.encode(src))
        t1 = time.perf_counter()
        prev = torch.full((sentences,), BOS_ID, dtype=torch.long)
        for _ in range(n):
            logits, state, _ = model.step(prev, state)
            prev = logits.argmax(-1)
        return t1 - t0, time.perf_counter() - t1

    with torch.inference_mode():
        decode(min(4, steps))  # warm-up
        encode_s, steps_s = decode(steps)
    return {"sentences": sentences, "steps": steps, "encode_ms": encode_s * 1e3,
            "ms_per_token": steps_s * 1e3 / (steps * sentences)}


# --------------------------------------------------------------------------- the run


def run(settings: Settings, out_dir: Path, log: Callable[[str], None] | None = None) -> dict:
    """Measure every mechanism at every length; write OUT_DIR/length.json and length.png.
    The results, with ``report`` (the text main prints) and ``table`` (its Markdown table)."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    cells = []
    for mechanism in settings.mechanisms:
        given_up: dict[str, str] = {}  # measurement -> why the longer lengths are skipped
        for length in settings.lengths:
            cell = {"mechanism": mechanism, "length": length, "train": None, "decode": None,
                    "train_skipped": None, "decode_skipped": None}
            try:
                model = build(mechanism, settings)
            except Exception as error:  # noqa: BLE001
                model, why = None, f"failed to build: {type(error).__name__}: {error}"
                cell["train_skipped"] = cell["decode_skipped"] = why
            if model is not None:
                for kind, measure in (("train", measure_training), ("decode", measure_decoding)):
                    if kind in given_up:
                        cell[f"{kind}_skipped"] = given_up[kind]
                        continue
                    result, why, final = guarded(lambda: measure(model, length, settings), settings.cap_seconds)
                    cell[kind], cell[f"{kind}_skipped"] = result, why
                    if final:
                        given_up[kind] = f"skipped: {why} at length {length}"
                del model
            log(f"{mechanism} {length}: " + ", ".join(
                f"{kind} {cell[kind][key]:.3g} {unit}" if cell[kind] else f"{kind} {cell[f'{kind}_skipped']}"
                for kind, key, unit in (("train", "ms_per_1k_tokens", "ms/1k tok"),
                                        ("decode", "ms_per_token", "ms/token"))))
            cells.append(cell)
    machine = this_machine()
    results = {"machine": machine.label, "threads": torch.get_num_threads(), "torch": torch.__version__,
               "settings": asdict(settings), "mechanism_keys": {m: MECHANISMS[m] for m in settings.mechanisms},
               "cells": cells, "train_slope_per_sentence": {}, "decode_slope_per_token": {},
               "overtakes_full_attention": {}}
    for mechanism in settings.mechanisms:
        mine = [c for c in cells if c["mechanism"] == mechanism]
        results["train_slope_per_sentence"][mechanism] = loglog_slope(
            [(c["length"], c["train"]["ms_per_sentence"]) for c in mine if c["train"]])
        results["decode_slope_per_token"][mechanism] = loglog_slope(
            [(c["length"], c["decode"]["ms_per_token"]) for c in mine if c["decode"]])
        if mechanism != REFERENCE:
            results["overtakes_full_attention"][mechanism] = {
                kind: overtakes(cells, mechanism, kind, key)
                for kind, key in (("train", "ms_per_1k_tokens"), ("decode", "ms_per_token"))}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "length.json").write_text(json.dumps(results, indent=2))
    plot(out_dir / "length.png", results)
    results["table"] = render_table(cells)
    results["report"] = render_report(results, out_dir)
    return results


def loglog_slope(points: Sequence[tuple[int, float]]) -> float | None:
    """The least-squares slope of log(value) against log(length); None under two lengths."""
    points = [(x, y) for x, y in points if y > 0]
    if len({x for x, _ in points}) < 2:
        return None
    xs, ys = zip(*points)
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def overtakes(cells: list[dict], mechanism: str, kind: str, key: str) -> dict | None:
    """The shortest length at which ``mechanism`` is faster per token than full attention, with
    ``full_ran`` False where it ran and full attention did not (out of memory, over the cap)."""
    full = {c["length"]: c[kind][key] for c in cells if c["mechanism"] == REFERENCE and c[kind]}
    skipped_full = {c["length"] for c in cells if c["mechanism"] == REFERENCE and not c[kind]}
    for c in sorted((c for c in cells if c["mechanism"] == mechanism and c[kind]), key=lambda c: c["length"]):
        if c["length"] in full and c[kind][key] < full[c["length"]]:
            return {"length": c["length"], "full_ran": True}
        if c["length"] in skipped_full:
            return {"length": c["length"], "full_ran": False}
    return None


# --------------------------------------------------------------------------- output


def number(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}" if x >= 0.1 else f"{x:.3f}"


def render_table(cells: list[dict]) -> str:
    """The Markdown table, "–" and a footnote number where a measurement has no figure, then the footnotes."""
    notes: list[str] = []

    def missing(why: str | None) -> str:
        why = why or "no figure"
        if why not in notes:
            notes.append(why)
        return f"{DASH} [{notes.index(why) + 1}]"

    rows = [("attention", "length", "sentences", "train ms/1k tok", "RSS MiB/1k tok", "decode ms/token")]
    for c in cells:
        train, decode = c["train"], c["decode"]
        memory = train and train["mib_per_1k_tokens"]
        rows.append((c["mechanism"], str(c["length"]), str(train["batch"]) if train else "",
                     number(train["ms_per_1k_tokens"]) if train else missing(c["train_skipped"]),
                     number(memory) if memory is not None else (
                         missing(c["train_skipped"]) if not train else missing("peak RSS cannot be reset here")),
                     number(decode["ms_per_token"]) if decode else missing(c["decode_skipped"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += [""] * bool(notes) + [f"[{i}] {why}" for i, why in enumerate(notes, 1)]
    return "\n".join(lines)


def render_report(results: dict, out_dir: Path) -> str:
    s = results["settings"]
    lines = [f"# Attention cost against source length on {results['machine']}, {plural(results['threads'], 'thread')}, "
             f"torch {results['torch']}",
             f"training: {s['tokens']} source tokens a batch, targets a quarter of the source length, median of "
             f"{plural(s['repeats'], 'step')} after a warm-up; memory: peak RSS growth of a step; decoding: "
             f"{s['decode_sentences']} sentences x {s['decode_steps']} greedy steps; cap {s['cap_seconds']:g} s a "
             "measurement", "", results["table"], ""]
    for mechanism in s["mechanisms"]:
        slope = results["train_slope_per_sentence"][mechanism]
        decode_slope = results["decode_slope_per_token"][mechanism]
        line = (f"{mechanism}: training time per sentence ~ length^{slope:.2f}" if slope is not None
                else f"{mechanism}: training slope n/a (under two lengths ran)")
        if decode_slope is not None:
            line += f", decoding time per token ~ length^{decode_slope:.2f}"
        if mechanism == REFERENCE:
            line += " (the reference)"
        else:
            over = results["overtakes_full_attention"][mechanism]
            line += "; overtakes full attention at: " + "; ".join(
                f"{label} {describe(over[kind])}" for kind, label in (("train", "training"), ("decode", "decoding")))
        lines.append(line)
    lines.append(f"wrote {out_dir / 'length.json'} and {out_dir / 'length.png'}")
    return "\n".join(lines)


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def describe(over: dict | None) -> str:
    if over is None:
        return "not within the lengths measured"
    return str(over["length"]) + ("" if over["full_ran"] else " (where full attention did not run)")


def plot(path: Path, results: dict) -> None:
    """Training ms per 1k tokens and decoding ms per token against the length, log-log."""
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(11, 4.5), layout="constrained")
        train_ax, decode_ax = fig.subplots(1, 2)
        for mechanism in results["settings"]["mechanisms"]:
            mine = [c for c in results["cells"] if c["mechanism"] == mechanism]
            for ax, kind, key in ((train_ax, "train", "ms_per_1k_tokens"), (decode_ax, "decode", "ms_per_token")):
                points = [(c["length"], c[kind][key]) for c in mine if c[kind]]
                if points:
                    ax.plot(*zip(*points), "o-", label=mechanism)
        for ax, title, ylabel in ((train_ax, "training step", "ms per 1k source tokens"),
                                  (decode_ax, "step-by-step decoding", "ms per output token")):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            lengths = results["settings"]["lengths"]
            ax.set_xticks(lengths, [str(n) for n in lengths])
            ax.xaxis.set_minor_locator(NullLocator())
            ax.yaxis.set_major_formatter(LogFormatter())  # plain numbers, not 3 x 10^2
            ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))  # labels only where few decades
            ax.set_xlabel("source length")
            ax.set_ylabel(ylabel)
            ax.set_title(title)
            ax.grid(alpha=0.3, which="both")
            if ax.get_legend_handles_labels()[0]:
                ax.legend()
        fig.suptitle(f"Attention cost against length: {results['machine']}, {plural(results['threads'], 'thread')}",
                     fontsize=11)
        _save(fig, path)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+",
                        help=f"source lengths (default {' '.join(map(str, LENGTHS))}; quick 32 64)")
    parser.add_argument("--cap-seconds", type=float, default=60.0,
                        help="per measurement (training or decoding of one mechanism and length)")
    parser.add_argument("--quick", action="store_true", help="a CI-sized run: lengths 32 64, one timed step")
    parser.add_argument("--tokens", type=int, help="source tokens per training batch (default 4096; quick 512)")
    parser.add_argument("--repeats", type=int, help="timed training steps (default 3; quick 1)")
    parser.add_argument("--decode-steps", type=int, help="decoding steps (default 32; quick 8)")
    parser.add_argument("--decode-sentences", type=int, default=4)
    parser.add_argument("--mechanisms", nargs="+", choices=tuple(MECHANISMS), default=tuple(MECHANISMS))
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=OUT, help="where length.json and length.png go")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else {}
    settings = Settings(
        lengths=tuple(args.lengths or base.get("lengths", LENGTHS)),
        tokens=args.tokens or base.get("tokens", 4096),
        repeats=args.repeats or base.get("repeats", 3),
        decode_sentences=args.decode_sentences,
        decode_steps=args.decode_steps or base.get("decode_steps", 32),
        cap_seconds=args.cap_seconds,
        mechanisms=tuple(args.mechanisms),
    )
    if min(settings.lengths) < 1 or settings.repeats < 1 or settings.tokens < 1:
        sys.exit("--lengths, --repeats and --tokens must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)
    from seq2seq import kernels

    kernels.configure("auto")
    kernels.tune_process()  # as `attn train` does
    print(run(settings, args.out)["report"])


if __name__ == "__main__":
    main()
