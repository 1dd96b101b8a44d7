"""Read input lines in batches that never wait for input that has not arrived yet.

Reading a pipe line by line with Python's buffered readers would hold back lines that are
already there; instead we read the raw file descriptor and hand over a batch as soon as no
more input is immediately available (or the batch is full). A file therefore streams in full
batches, while an interactive user or a slow producer gets each line answered at once.
"""

from __future__ import annotations

import os
import select
from collections.abc import Iterator

from seq2seq.errors import UserError

READ_SIZE = 1 << 16


def line_batches(fd: int, max_lines: int, name: str = "stdin") -> Iterator[list[str]]:
    """Yield lists of decoded lines (without newlines); invalid UTF-8 names the line."""
    pending = b""
    lines: list[bytes] = []
    line_number = 0
    eof = False
    while not eof or lines:
        more_ready = not eof and (not lines or _readable(fd))
        if more_ready and len(lines) < max_lines:
            chunk = os.read(fd, READ_SIZE)
            if chunk:
                pending += chunk
                *complete, pending = pending.split(b"\n")
                lines.extend(complete)
                continue
            eof = True
            if pending:
                lines.append(pending)
                pending = b""
        if not lines:
            continue
        batch, lines = lines[:max_lines], lines[max_lines:]
        decoded = []
        for raw in batch:
            line_number += 1
            try:
                decoded.append(raw.decode("utf-8").rstrip("\r"))
            except UnicodeDecodeError as exc:
                raise UserError(f"{name} line {line_number}: not valid UTF-8 (byte {exc.start}); "
                                "convert the input to UTF-8") from None
            if "\x00" in decoded[-1]:
                raise UserError(f"{name} line {line_number}: contains NUL bytes; is this a binary file?")
        yield decoded


def _readable(fd: int) -> bool:
    try:
        ready, _, _ = select.select([fd], [], [], 0)
    except (OSError, ValueError):
        return True  # not selectable (e.g. some files on some platforms): just read on
    return bool(ready)
