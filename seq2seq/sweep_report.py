"""A sweep's ``report.html`` beside its leaderboard: what the numbers do not show.

One self-contained page (html_pages.py): the leaderboard as a sortable table, the training
NLL of every point on one chart, and for the first few sentences of the test set each point's
greedy translation and attention map side by side, so one sees how additive, local, hard or
sparse attention read the same sentence.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from seq2seq.files import write_text_atomic
from seq2seq.html_pages import curves, example_card, page, table
from seq2seq.run_folder import METRICS_FILE, read_metrics

EXAMPLES = 3  # test sentences shown per point


def write_report(path: Path, title: str, columns: list[str], rows: list[dict[str, Any]], runs: dict[str, Path],
                 test_source: Path | None, examples: int = EXAMPLES) -> Path:
    """Write the page for the leaderboard ``rows`` (best first) of the points whose run folders
    are ``runs`` (name -> folder, in the leaderboard's order)."""
    sentences = first_lines(test_source, examples) if test_source is not None else []
    sections = [table(columns, rows),
                "<h2>Learning curves</h2>", curves(training_curves(runs), "training NLL per target token")]
    if sentences:
        translated = {name: translate_examples(run, sentences) for name, run in runs.items()}
        sections.append(f"<h2>The first {len(sentences)} test sentences, greedy</h2>"
                        '<p class="muted">Hover a target piece to see the source pieces it attends to.</p>')
        for n, sentence in enumerate(sentences):
            sections.append(f"<h3>{n + 1}. {html.escape(sentence)}</h3>")
            sections.append('<div class="cards">' + "".join(
                example_card(name, *cards[n]) for name, cards in translated.items()) + "</div>")
    write_text_atomic(path, page(title, "\n".join(sections)))
    return path


def first_lines(path: Path, count: int) -> list[str]:
    """The first ``count`` non-empty lines of a text file."""
    lines = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                lines.append(line.strip())
            if len(lines) == count:
                break
    return lines


def training_curves(runs: dict[str, Path]) -> dict[str, list[tuple[float, float]]]:
    """Each run's training NLL (older runs: the loss) against the step, from its metrics.jsonl."""
    series = {}
    for name, run in runs.items():
        records = read_metrics(run / METRICS_FILE) if (run / METRICS_FILE).is_file() else []
        key = "nll" if any("nll" in r for r in records) else "loss"
        series[name] = [(r["step"], r[key]) for r in records if key in r and "step" in r]
    return series


def translate_examples(run: Path, sentences: list[str]) -> list[tuple]:
    """(translation, source pieces, output pieces, attention or None) of each sentence by the
    run's best checkpoint, greedy, on the CPU."""
    import dataclasses

    from seq2seq.decoding.ensemble import has_attention
    from seq2seq.decoding.loading import load_model
    from seq2seq.decoding.output import attention_pieces
    from seq2seq.decoding.settings import TranslateSettings
    from seq2seq.decoding.translator import make_translator

    loaded = load_model(run)
    attending = has_attention(loaded.model)
    settings = TranslateSettings.from_config(dataclasses.replace(loaded.config.decode, beam_size=1, precision="fp32"),
                                             return_attention=attending)
    translator = make_translator(loaded.model, loaded.tokenizer, settings, warn=lambda message: None)
    try:
        results = [best for best, *_ in translator.translate(sentences)]
    finally:
        translator.close()
    cards = []
    for result in results:
        src, tgt, weights = attention_pieces(loaded.tokenizer, result)
        cards.append((result.text, src, tgt, weights.tolist() if attending and weights is not None else None))
    return cards
