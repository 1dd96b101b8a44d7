"""Reading parallel text: one sentence per line, ``{prefix}.{lang}`` for each side.

``check_parallel`` validates a corpus once, before any slow work starts, so that a bad file
fails in seconds with a message naming the file and line. ``read_lines`` then streams the
text; neither ever holds a whole file in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from seq2seq.errors import UserError
from seq2seq.files import not_a_file


def corpus_paths(prefix: str, src_lang: str, tgt_lang: str) -> tuple[Path, Path]:
    """The source and target files of a corpus prefix: ``{prefix}.{src_lang}``, ``{prefix}.{tgt_lang}``."""
    return Path(f"{prefix}.{src_lang}"), Path(f"{prefix}.{tgt_lang}")


def check_parallel(prefix: str, src_lang: str, tgt_lang: str) -> int:
    """Check that both sides exist, are UTF-8 text and have the same number of lines; return it."""
    src_path, tgt_path = corpus_paths(prefix, src_lang, tgt_lang)
    src_count = count_text_lines(src_path)
    tgt_count = count_text_lines(tgt_path)
    if src_count != tgt_count:
        raise UserError(
            f"{src_path} has {src_count} lines but {tgt_path} has {tgt_count}; "
            "a parallel corpus needs one translation per line on both sides"
        )
    if src_count == 0:
        raise UserError(f"{src_path} and {tgt_path} are empty; the corpus needs at least one sentence pair")
    return src_count


def count_text_lines(path: Path) -> int:
    """Count the lines of a UTF-8 text file, refusing binary or wrongly encoded files."""
    if not path.is_file():
        raise UserError(
            f"{path}: {not_a_file(path, 'corpus file')}; "
            "check data.train/valid/test (file prefixes) "
            "and data.src_lang/tgt_lang (file suffixes) in the config"
        )
    count = 0
    # Binary mode splits on b"\n" only, exactly like read_lines, so both agree on line numbers.
    with path.open("rb") as file:
        for count, raw in enumerate(file, start=1):
            if b"\0" in raw:
                raise UserError(
                    f"{path}: line {count} contains NUL bytes; this looks like a binary file, not text"
                )
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UserError(
                    f"{path}: line {count} is not valid UTF-8 (byte {exc.start} of the line); "
                    "re-encode the file as UTF-8"
                ) from None
    return count


def read_lines(path: str | Path) -> Iterator[str]:
    """Stream the lines of a UTF-8 text file without their line ending ("\\n" or "\\r\\n")."""
    # newline="\n": split on "\n" only; the default would also split on a stray "\r" inside a
    # sentence and shift every later line out of alignment with the other side.
    # utf-8-sig drops a byte-order mark, which would otherwise glue onto the first sentence.
    with open(path, encoding="utf-8-sig", newline="\n") as file:
        for line in file:
            yield line.removesuffix("\n").removesuffix("\r")
