"""What ``attn translate`` writes: translations line by line as input arrives, in a layout
scripts can rely on, and attention heatmaps of the first sentences."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from seq2seq.decoding.streaming import line_batches
from seq2seq.decoding.translator import TranslationResult, Translator

if TYPE_CHECKING:
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


@dataclass
class AttentionPlots:
    """One heatmap PNG per translated line (its best translation), the first ``limit`` lines."""

    folder: Path
    limit: int
    tokenizer: Tokenizer
    drawn: int = 0

    def add(self, line_no: int, result: TranslationResult) -> None:
        if self.drawn >= self.limit or not result.tokens:
            return
        from seq2seq.plots import attention_heatmap

        src = self.tokenizer.src_pieces(result.src_ids[:-1]) + ["</s>"]
        tgt = self.tokenizer.tgt_pieces(result.tokens)
        attention_heatmap(self.folder / f"{line_no:05d}.png", src, tgt, result.attention[: len(tgt)])
        self.drawn += 1


def write_translations(translator: Translator, source_fd: int, name: str, out: TextIO, nbest: int = 1,
                       scores: bool = False, alignments: bool = False, plots: AttentionPlots | None = None) -> int:
    """Translate every line read from ``source_fd`` (``name`` in messages) into ``out``, flushed
    after each batch, so lines from a pipe are answered as they arrive; the number of lines."""
    line_no = 0
    # Batches of several decoding batches, so length-sorting still pays on files.
    for lines in line_batches(source_fd, translator.settings.batch_size * 8, name=name):
        for results in translator.translate(lines, first_line=line_no + 1):
            line_no += 1
            out.write("".join(line + "\n" for line in output_lines(results, line_no, nbest, scores, alignments)))
            if plots is not None:
                plots.add(line_no, results[0])
        out.flush()
    return line_no
