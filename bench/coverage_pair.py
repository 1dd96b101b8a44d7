"""``make bench-coverage``: does coverage stop a model attending the same source words again?

Reads the two runs that ``make bench-taxonomy`` trained on the full corpus at one budget, plain
additive attention and additive attention with coverage and See et al.'s coverage loss,
translates the test set with each (greedy), and reports how much attention each pays a source
position beyond once: sum_s max(0, c_s - 1) / sum_s c_s, where c_s is the attention position s
received over the whole translation (0 when no position is attended more than once in all).
Draws the heatmaps of the same test sentences side by side for the README
(``bench/out/taxonomy/coverage_pair_*.png``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

from bench.run import CORPUS, OUT
from seq2seq.decoding.loading import load_model
from seq2seq.decoding.settings import TranslateSettings
from seq2seq.decoding.translator import make_translator

RUNS = {"additive": "attention-additive", "coverage": "attention-additive_coverage-True_coverage_loss-1.0"}
SHOWN = (5, 17, 42)  # test lines drawn (0-based), picked before looking at any translation


def repeated_attention(attention: torch.Tensor) -> tuple[float, float]:
    """(attention beyond once, all attention) of one translation's [T,S] weights."""
    received = attention.float().sum(dim=0)
    return float((received - 1).clamp(min=0).sum()), float(received.sum())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=Path, default=OUT / "taxonomy", help="bench-taxonomy's output folder")
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    args = parser.parse_args()
    sources = (args.corpus / "test.es").read_text(encoding="utf-8").splitlines()
    figures = {}
    results = {}
    for name, folder in RUNS.items():
        loaded = load_model(args.runs / folder)
        decode = dataclasses.replace(loaded.config.decode, beam_size=1)
        settings = TranslateSettings.from_config(decode, return_attention=True)
        with torch.inference_mode(), make_translator(loaded.model, loaded.tokenizer, settings) as translator:
            translated = [best[0] for best in translator.translate(sources)]
        beyond = total = 0.0
        for result in translated:
            if result.tokens:
                extra, all_ = repeated_attention(torch.as_tensor(result.attention[: len(result.tokens)]))
                beyond, total = beyond + extra, total + all_
        figures[name] = {"repeated_attention": round(beyond / total, 4), "sentences": len(translated)}
        results[name] = (loaded.tokenizer, translated)
        print(f"{name}: {100 * beyond / total:.1f} % of the attention goes to positions already attended once",
              file=sys.stderr)
    from seq2seq.plots import attention_heatmap

    for line in SHOWN:
        for name, (tokenizer, translated) in results.items():
            result = translated[line]
            src = tokenizer.src_pieces(result.src_ids[:-1]) + ["</s>"]
            tgt = tokenizer.tgt_pieces(result.tokens)
            attention_heatmap(args.runs / f"coverage_pair_{line}_{name}.png", src, tgt,
                              result.attention[: len(tgt)])
    (args.runs / "coverage_pair.json").write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
