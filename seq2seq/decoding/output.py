"""What ``attn translate`` writes: translations line by line as input arrives, in a layout
scripts can rely on, and attention heatmaps of the first sentences."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from seq2seq.decoding.streaming import line_batches
from seq2seq.decoding.translator import TranslationResult, Translator

if TYPE_CHECKING:
    from torch import Tensor

    from seq2seq.data.tokenizer import Tokenizer


def output_lines(results: list[TranslationResult], line_no: int, nbest: int, scores: bool,
                 alignments: bool) -> list[str]:
    """The lines for input line ``line_no``: exactly ``nbest`` of them (an empty input line, or
    a search that found fewer, gives empty translations), each tab-separated: the line number
    when nbest > 1, the score when asked, the text, the alignment when asked."""
    padding = [TranslationResult("", [], float("-inf"), [])] * (nbest - len(results))
    lines = []
    for result in results + padding:
        fields = [str(line_no)] if nbest > 1 else []
        fields += [f"{result.score:.4f}"] if scores else []
        fields.append(result.text)
        fields += [result.alignment()] if alignments else []
        lines.append("\t".join(fields))
    return lines


def attention_pieces(tokenizer: Tokenizer, result: TranslationResult) -> tuple[list[str], list[str], Tensor | None]:
    """What an attention picture of ``result`` shows: (source pieces with EOS, output pieces,
    its cross-attention [output, source] or None)."""
    src = tokenizer.src_pieces(result.src_ids[:-1]) + ["</s>"]
    tgt = tokenizer.tgt_pieces(result.tokens)
    return src, tgt, None if result.attention is None else result.attention[: len(tgt)]


@dataclass
class AttentionPlots:
    """One heatmap PNG per translated line, the first ``limit`` lines: the cross-attention of its
    best translation, or with ``self_attention`` (source ids -> weights [S,S]) the encoder's
    self-attention over its source."""

    folder: Path
    limit: int
    tokenizer: Tokenizer
    self_attention: Callable[[list[int]], Tensor] | None = None
    drawn: int = 0

    def add(self, line_no: int, result: TranslationResult) -> None:
        if self.drawn >= self.limit or (not result.tokens and self.self_attention is None):
            return  # an empty translation has no cross-attention to draw; its source still has self-attention
        from seq2seq.plots import attention_heatmap

        src, tgt, weights = attention_pieces(self.tokenizer, result)
        path = self.folder / f"{line_no:05d}.png"
        if self.self_attention is not None:
            attention_heatmap(path, src, src, self.self_attention(result.src_ids), ylabel="source pieces (queries)")
        else:
            attention_heatmap(path, src, tgt, weights)
        self.drawn += 1


@dataclass
class AttentionPage:
    """``attn translate --attention-html FILE``: the first ``limit`` lines' translations with
    their attention maps, as one self-contained HTML page (html_pages.py), written at the end."""

    path: Path
    limit: int
    tokenizer: Tokenizer
    cards: list[str] = field(default_factory=list)

    def add(self, line_no: int, result: TranslationResult) -> None:
        from seq2seq.html_pages import example_card

        if len(self.cards) < self.limit and result.tokens:
            src, tgt, weights = attention_pieces(self.tokenizer, result)
            self.cards.append(example_card(f"line {line_no}", result.text, src, tgt,
                                           None if weights is None else weights.tolist()))

    def write(self, source: str) -> None:
        from seq2seq.files import write_text_atomic
        from seq2seq.html_pages import page

        body = ('<p class="muted">Hover a target piece to see the source pieces it attends to.</p>'
                f'<div class="cards">{"".join(self.cards)}</div>')
        write_text_atomic(self.path, page(f"Attention: {source}", body))


def write_translations(translator: Translator, source_fd: int, name: str, out: TextIO, nbest: int = 1,
                       scores: bool = False, alignments: bool = False,
                       drawings: Sequence[AttentionPlots | AttentionPage] = ()) -> int:
    """Translate every line read from ``source_fd`` (``name`` in messages) into ``out``, flushed
    after each batch, so lines from a pipe are answered as they arrive; the number of lines."""
    line_no = 0
    # Batches of several decoding batches, so length-sorting still pays on files.
    for lines in line_batches(source_fd, translator.settings.batch_size * 8, name=name):
        for results in translator.translate(lines, first_line=line_no + 1):
            line_no += 1
            out.write("".join(line + "\n" for line in output_lines(results, line_no, nbest, scores, alignments)))
            for drawing in drawings:
                drawing.add(line_no, results[0])
        out.flush()
    return line_no
