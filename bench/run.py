"""``make bench``: attn's speed on this machine, next to the peers' figures.

1. the fp32 matmul ceiling (GFLOP/s with the same threads): torch.mm's (MKL, as the peers
   measured it) and oneDNN's (what attn's linear layers use; on AMD processors MKL runs a
   slower generic path), utilisation against the higher of the two,
2. training throughput of configs T and R on the full Bible corpus (each in its own process,
   so peak RSS is per config), in fp32 as the peers ran, and with bf16 autocast where the CPU
   multiplies bf16 natively; and config R with fairseq's attention (``general``: fairseq's
   LSTM has no additive attention, so its figure is for this cheaper one),
3. greedy and beam-5 decoding of the full test set with config T, as the peers (1,998
   sentences, batches of 64, at most 128 pieces), with the 12-minute model of ``make
   bench-quality`` where it exists (as the peers did), else with the model step 2 reached; in
   fp32, and with decode.precision bf16 where the CPU multiplies bf16 natively; in one process
   and in two (``--workers 2``, the worker's start-up timed too); and greedy at attn's default
   batch (320 rows, no ratio: the peers ran 64); and with ``--engine ctranslate2`` (the same
   model searched by CTranslate2, when installed); BLEU beside each, so a speed-up that costs
   quality shows,
then a table with the peers' numbers, saved to ``bench/out/results.json``. The beam's length
penalty is attn's (GNMT, alpha 1), where fairseq and OpenNMT-py divide by the length: attn's
outputs are a little shorter (28 pieces against 29-42), which lowers its pieces/s for the same
sentences/s.

The peers' figures (``bench/peers.py`` says how and why): before attn's runs, the peers named
by ``--peers`` (default fairseq) whose environments exist train configs T and R for
``--peer-seconds`` each with their own scripts, and only these same-sitting figures get a
ratio; every other peer figure (and all of decoding) is the stored one, printed with the
machine it was measured on and no ratio. The table names this machine's processor, where each
peer figure comes from, and which of attn's CPU fast paths were on. Decoding speed is in output
pieces per second; pieces per sentence are printed beside it, since a model whose outputs are
longer (repetitive) gets more pieces out of every step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench import peers
from bench.peers import PeerFigure
from seq2seq.kernels import decisions, native_bf16, probe
from seq2seq.kernels.onednn import onednn_matmul_nt

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
# The full corpus, beside the checkout (not committed): train/valid/test.{es,en}.
CORPUS = ROOT.parent / "shared" / "corpora" / "bible-en-es"
CONFIGS = {"T": "configs/bench_T.yaml", "R": "configs/bench_R.yaml"}
# Decoding runs: beam, sentences per batch (None: attn's default of 320 decoder rows), worker
# processes, engine, key (its first part names the peers' figure), label. The ctranslate2
# engine runs fp32 only, and its beam divides by length ** alpha as the peers' beams do.
DECODE_RUNS = (
    (1, 64, 1, "torch", "beam1", "beam 1"),
    (5, 64, 1, "torch", "beam5", "beam 5"),
    (1, None, 1, "torch", "beam1_default", "beam 1, 320/batch"),
    (1, 64, 2, "torch", "beam1_workers2", "beam 1, --workers 2"),
    (5, 64, 2, "torch", "beam5_workers2", "beam 5, --workers 2"),
    (1, 64, 1, "ctranslate2", "beam1_ctranslate2", "beam 1, --engine ctranslate2"),
    (5, 64, 1, "ctranslate2", "beam5_ctranslate2", "beam 5, --engine ctranslate2"),
)


def result_key(name: str, precision: str) -> str:
    """Where a figure goes in results.json: ``name`` for fp32, ``name_bf16`` for bf16."""
    return name if precision == "fp32" else f"{name}_{precision}"


def matmul_ceiling(threads: int, n: int = 2048, reps: int = 15, dtype: torch.dtype = torch.float32,
                   onednn: bool = False) -> float:
    """GFLOP/s of an n x n x n product: torch.mm, or oneDNN's as attn's fp32 linear layers run it."""
    torch.set_num_threads(threads)
    x, y = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    multiply = (lambda: onednn_matmul_nt(x, y)) if onednn else (lambda: torch.mm(x, y))
    for _ in range(3):
        multiply()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        multiply()
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def run_json(command: list[str]) -> dict:
    print("$", " ".join(command), file=sys.stderr, flush=True)
    result = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if result.returncode != 0:
        sys.exit(f"benchmark step failed: {' '.join(command)}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def benchmark_translator(checkpoint: Path, beam: int, sentences_per_batch: int | None = 64,
                         precision: str = "fp32", workers: int = 1, engine: str = "torch"):
    """A Translator for ``checkpoint`` with its decode settings, ``beam`` and batches of
    ``sentences_per_batch`` sentences, as the peers ran; None: attn's default of 320 decoder
    rows (greedy: 320 sentences). ``precision``: decode.precision; ``workers``: --workers;
    ``engine``: --engine."""
    from seq2seq.config import DecodeConfig
    from seq2seq.decoding.loading import load_model
    from seq2seq.decoding.settings import TranslateSettings
    from seq2seq.decoding.translator import make_translator

    loaded = load_model(checkpoint)
    settings = TranslateSettings.from_config(loaded.config.decode, workers=workers, engine=engine)
    settings.beam_size = beam
    settings.precision = precision
    settings.batch_size = DecodeConfig().batch_size if sentences_per_batch is None else sentences_per_batch * beam
    return make_translator(loaded.model, loaded.tokenizer, settings)


def decode_speed(checkpoint: Path, beam: int, src: Path, ref: Path | None = None,
                 sentences_per_batch: int | None = 64, precision: str = "fp32", workers: int = 1,
                 engine: str = "torch") -> dict:
    """Translate the test set; sentences/s and output pieces/s, model loading excluded but the
    worker processes' start included (and BLEU/chrF against ``ref`` when given). Settings as
    ``benchmark_translator``."""
    lines = src.read_text(encoding="utf-8").splitlines()
    with benchmark_translator(checkpoint, beam, sentences_per_batch, precision, workers, engine) as translator:
        start = time.perf_counter()
        results = translator.translate(lines)
        seconds = time.perf_counter() - start
    pieces = sum(len(r[0].tokens) for r in results)
    speed = {"beam": beam, "workers": workers, "sentences": len(lines), "seconds": seconds, "sentences_per_s": len(lines) / seconds,
             "tokens_per_s": pieces / seconds, "pieces_per_sentence": pieces / len(lines)}
    if ref is not None:
        from seq2seq.evaluation.metrics import score_corpus

        scores = score_corpus([r[0].text for r in results], [ref.read_text(encoding="utf-8").splitlines()])
        speed.update(bleu=scores["bleu"], chrf=scores["chrf"], signature=scores["signature"])
    return speed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40, help="timed training updates per config")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=sorted(CONFIGS), action="append")
    parser.add_argument("--skip-decode", action="store_true")
    parser.add_argument("--peers", default=os.environ.get(peers.PEERS_ENV_VAR, peers.DEFAULT_PEERS),
                        help="peers whose training throughput runs in this sitting, where their environment exists "
                             f"({', '.join(peers.KNOWN_PEERS)}; 'none': stored figures only, no ratios; "
                             f"default ${peers.PEERS_ENV_VAR} or {peers.DEFAULT_PEERS})")
    parser.add_argument("--peer-seconds", type=int, default=peers.DEFAULT_SECONDS,
                        help="wall-clock seconds of each peer training run (the peers' own figures: 300)")
    args = parser.parse_args()
    if not (CORPUS / "train.es").exists():
        sys.exit(f"the full corpus is not at {CORPUS}; the benchmarks need it")

    OUT.mkdir(parents=True, exist_ok=True)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    machine = peers.this_machine()
    results: dict = {"threads": args.threads, "torch": torch.__version__,
                     "machine": {"processor": machine.processor, "isa": machine.isa, "label": machine.label},
                     "cpu_fast_paths": {name: {"on": bool(d), "reason": d.reason} for name, d in decisions().items()}}

    # The peers first: their figures are the only ones a ratio may use, and a missing environment
    # shows before attn's ten minutes rather than after.
    configs = [name for name in ("T", "R") if name in (args.only or CONFIGS)]
    requested = peers.parse_peer_list(args.peers)
    if args.threads != peers.PEER_THREADS:
        why = f"attn runs on {args.threads} threads, the peers' scripts on {peers.PEER_THREADS}"
        sitting = peers.Sitting(args.peer_seconds, skipped={peer: why for peer in requested})
    else:
        sitting = peers.rerun_throughput(requested, configs, args.peer_seconds, OUT / "peers")
    stored = peers.closest_first(peers.load_stored(), machine)
    results["peer_sitting"] = {"requested": requested, "seconds": sitting.seconds, "runs": sitting.summaries,
                               "not_rerun": sitting.skipped}
    results["peer_figures"] = {key: figure.to_json() for key, figure in
                               peers.peer_figures(sitting.summaries, stored, machine, sitting.seconds).items()}
    results["matmul_ceiling_gflops"] = matmul_ceiling(args.threads)
    if probe.get("onednn_linear") is not None:
        results["matmul_ceiling_onednn_gflops"] = matmul_ceiling(args.threads, onednn=True)
    fp32_ceiling = max(results["matmul_ceiling_gflops"], results.get("matmul_ceiling_onednn_gflops", 0.0))
    print(f"matmul ceiling: {results['matmul_ceiling_gflops']:.0f} GFLOP/s torch.mm, {fp32_ceiling:.0f} "
          f"the best fp32 ({args.threads} threads)", file=sys.stderr)
    # bf16 autocast pays only where the CPU multiplies bf16 natively (AVX512-BF16, AMX).
    precisions = ["fp32"]
    if native_bf16(torch.device("cpu")):
        results["matmul_ceiling_bf16_gflops"] = matmul_ceiling(args.threads, dtype=torch.bfloat16)
        precisions.append("bf16")

    def train_speed(name: str, precision: str, *extra: str) -> dict:
        train = run_json([sys.executable, "-m", "bench.train_speed", CONFIGS[name], "--steps", str(args.steps),
                          "--warmup", str(args.warmup), "--set", f"train.threads={args.threads}",
                          "--set", f"train.precision={precision}", *extra])
        ceiling = fp32_ceiling if precision == "fp32" else results["matmul_ceiling_bf16_gflops"]
        return train | {"utilisation": train["achieved_gflops"] / ceiling}

    for name in args.only or sorted(CONFIGS):
        checkpoint = OUT / f"bench_{name}.pt"
        for precision in precisions:  # the fp32 model is saved, to be decoded
            save = ["--save", str(checkpoint)] if precision == "fp32" else []
            results[result_key(f"train_{name}", precision)] = train_speed(name, precision, *save)
        if name == "R":  # fairseq's figure is for its dot-product attention: the matched comparison
            results["train_R_general"] = train_speed(name, "fp32", "--set", "model.attention=general")
        # Decoding: config T only. The peers decoded only T, and config R has no 12-minute
        # model: the 45-step one repeats itself up to the length limit, which says nothing.
        if name == "T" and not args.skip_decode:
            torch.set_num_threads(args.threads)
            # The peers decoded models trained 12 minutes; `make bench-quality` leaves one of
            # config T in bench/out/quality_T. A model trained only --steps updates repeats
            # itself up to the length limit, which inflates tokens/s.
            trained = OUT / f"quality_{name}"
            model = trained if (trained / "checkpoints").is_dir() else checkpoint
            results[f"decode_{name}_model"] = str(model.relative_to(ROOT))
            engines = {"torch", "ctranslate2"} if ctranslate2_installed() else {"torch"}
            for precision in precisions:
                for beam, per_batch, workers, engine, key, _ in DECODE_RUNS:
                    if engine not in engines or (engine == "ctranslate2" and precision != "fp32"):
                        continue
                    key = result_key(key, precision)
                    speed = decode_speed(model, beam, CORPUS / "test.es", ref=CORPUS / "test.en",
                                         sentences_per_batch=per_batch, precision=precision, workers=workers,
                                         engine=engine)
                    results[f"decode_{name}_{key}"] = speed
                    print(f"decode {name} {key}: {speed['sentences_per_s']:.1f} sent/s, "
                          f"{speed['tokens_per_s']:,.0f} tok/s, BLEU {speed['bleu']:.2f}", file=sys.stderr)

    (OUT / "results.json").write_text(json.dumps(results, indent=2))
    print(render_table(results))


def ctranslate2_installed() -> bool:
    import importlib.util

    if importlib.util.find_spec("ctranslate2") is None:
        print("ctranslate2 is not installed: no --engine ctranslate2 rows (pip install 'attn[ctranslate2]')",
              file=sys.stderr)
        return False
    return True


def peer_cells(attn: float, figure: PeerFigure | None) -> tuple[str, str, str]:
    """The peer's figure, where it comes from, and the ratio (only for this sitting's figures)."""
    if figure is None:
        return "", "", ""
    r = peers.ratio(attn, figure)
    where = f"{figure.where} ({figure.detail})" if figure.detail else figure.where
    return f"{figure.value:,.0f} ({figure.peer})", where, f"{r:.2f}x" if r is not None else ""


def render_table(results: dict) -> str:
    figures = {key: PeerFigure.from_json(data) for key, data in results.get("peer_figures", {}).items()}
    rows = [("figure", "attn", "peer", "peer figure from", "ratio")]
    for name in ("T", "R"):
        t = results.get(f"train_{name}")
        if not t:
            continue
        train_peer = figures.get(f"train_{name}")
        rows.append((f"train {name}: target tok/s", f"{t['tgt_tokens_per_s']:,.0f}",
                     *peer_cells(t["tgt_tokens_per_s"], train_peer)))
        rows.append((f"train {name}: source tok/s", f"{t['src_tokens_per_s']:,.0f}", "", "", ""))
        rows.append((f"train {name}: peak RSS MiB", f"{t['peak_rss_mib']:,.0f}",
                     *peer_cells(t["peak_rss_mib"], figures.get(f"rss_{name}"))))
        rows.append((f"train {name}: padding", f"{t['padding_ratio']:.1%}", "", "", ""))
        # The peer's GFLOP/s with the same FLOPs per token (the same model); no ratio: the
        # tok/s row above has it.
        peer_gflops = ("", "", "")
        if train_peer:
            peer_gflops = (f"{t['flops_per_tgt_token'] * train_peer.value / 1e9:.0f} ({train_peer.peer})",
                           train_peer.where, "")
        rows.append((f"train {name}: MFLOP/tgt token; GFLOP/s, utilisation", f"{t['flops_per_tgt_token'] / 1e6:.1f}; "
                     f"{t['achieved_gflops']:.0f}, {t['utilisation']:.0%}", *peer_gflops))
        matched = results.get(f"train_{name}_general")
        if matched:
            rows.append((f"train {name}, fairseq's attention (general): target tok/s",
                         f"{matched['tgt_tokens_per_s']:,.0f}",
                         *peer_cells(matched["tgt_tokens_per_s"], figures.get("train_R_fairseq"))))
        fast = results.get(f"train_{name}_bf16")
        if fast:
            rows.append((f"train {name} bf16 autocast: target tok/s", f"{fast['tgt_tokens_per_s']:,.0f}",
                         *peer_cells(fast["tgt_tokens_per_s"], train_peer)))
            rows.append((f"train {name} bf16: peak RSS MiB, utilisation (bf16 ceiling)",
                         f"{fast['peak_rss_mib']:,.0f}, {fast['utilisation']:.0%}", "", "", ""))
        for precision in ("fp32", "bf16"):
            for _, per_batch, _, _, key, label in DECODE_RUNS:
                d = results.get(f"decode_{name}_{result_key(key, precision)}")
                if d:  # the peers' figure beside the runs at their 64 sentences a batch only
                    peer = figures.get(f"decode_{name}_{key.split('_')[0]}") if per_batch == 64 else None
                    shown = "" if precision == "fp32" else f" {precision}"
                    rows.append((f"decode {name}{shown} {label}: tok/s (sent/s), "
                                 f"{d['pieces_per_sentence']:.0f} pieces/sent, BLEU {d['bleu']:.2f}",
                                 f"{d['tokens_per_s']:,.0f} ({d['sentences_per_s']:.1f})",
                                 *peer_cells(d["tokens_per_s"], peer)))
    models = ", ".join(f"{name}: {results[f'decode_{name}_model']}" for name in ("T", "R")
                       if f"decode_{name}_model" in results)
    onednn = (f", oneDNN {results['matmul_ceiling_onednn_gflops']:.0f}" if "matmul_ceiling_onednn_gflops" in results
              else "")
    bf16 = (f", bf16 {results['matmul_ceiling_bf16_gflops']:.0f} GFLOP/s" if "matmul_ceiling_bf16_gflops" in results
            else "")
    return "\n".join([*sitting_lines(results),
                      f"matmul ceiling fp32 {results['matmul_ceiling_gflops']:.0f} GFLOP/s (torch.mm){onednn}{bf16}; "
                      f"decoded models: {models}",
                      markdown_table(rows)])


def sitting_lines(results: dict) -> list[str]:
    """Above the table: this machine, which peers ran in this sitting (and why others did not),
    when a ratio is given, and which of attn's CPU fast paths were on."""
    sitting = results.get("peer_sitting", {})
    lines = [f"this machine: {results.get('machine', {}).get('label', 'unknown processor')}, "
             f"{results['threads']} threads"]
    for peer, runs in sitting.get("runs", {}).items():
        figures = ", ".join(f"{cfg} {run['tgt_tok_s_median']:,.0f} tok/s" if run.get("tgt_tok_s_median") is not None
                            else f"{cfg} no figure ({run.get('note', '')})" for cfg, run in runs.items())
        lines.append(f"peer re-run in this sitting, {sitting['seconds']} s per config: {peer}: {figures}")
    for peer, why in sitting.get("not_rerun", {}).items():
        lines.append(f"peer not re-run: {peer}: {why}")
    lines.append("ratios only against a peer figure of this sitting: a stored one comes from another sitting, "
                 "perhaps another processor")
    lines.append("attn CPU fast paths:")
    lines += [f"  {name}: {'on' if d['on'] else 'off'} ({d['reason']})"
              for name, d in results.get("cpu_fast_paths", {}).items()]
    return lines


def markdown_table(rows: list[tuple[str, ...]]) -> str:
    """Rows of strings (the first is the header) as an aligned Markdown table."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
