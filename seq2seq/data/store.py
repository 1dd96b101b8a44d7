"""The binarised corpus: token ids in a flat file, read through a memory map.

A store of n sequences is two files:

* ``{prefix}.bin``: every sequence's ids back to back, uint16 when the vocabulary fits in
  16 bits (half the disk and page cache of int32), else uint32;
* ``{prefix}.idx``: n + 1 int64 offsets into ``.bin``; sequence i is ``bin[idx[i]:idx[i+1]]``.

The element width is not written anywhere: it follows from the size of ``.bin`` and the token
count ``idx[n]``, which also catches a truncated file. The OS pages the ids in on demand, so a
corpus much larger than memory trains fine.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from seq2seq.errors import UserError

# Ids are buffered and written in chunks of about this many, so memory stays bounded.
CHUNK_TOKENS = 1 << 20


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned type that holds every id of the vocabulary."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


class StoreWriter:
    """Append sequences one at a time; ``close`` makes the store appear complete, or not at all.

    Both files are written under temporary names and renamed at the end, ``.idx`` last: an
    interrupted write leaves no ``.idx`` and so never passes for a finished store.
    """

    def __init__(self, path_prefix: str | Path, vocab_size: int):
        self.prefix = str(path_prefix)
        self._dtype = token_dtype(vocab_size)
        self._bin = open(f"{self.prefix}.bin.tmp", "wb")
        self._idx = open(f"{self.prefix}.idx.tmp", "wb")
        self._tokens: list[int] = []
        self._offsets: list[int] = []
        self._end = 0  # offset just past the last sequence added
        np.array([0], dtype=np.int64).tofile(self._idx)

    def add(self, sequence: Sequence[int]) -> None:
        self._tokens.extend(sequence)
        self._end += len(sequence)
        self._offsets.append(self._end)
        if len(self._tokens) >= CHUNK_TOKENS:
            self._flush()

    def close(self) -> None:
        self._flush()
        self._bin.close()
        self._idx.close()
        os.replace(f"{self.prefix}.bin.tmp", f"{self.prefix}.bin")
        os.replace(f"{self.prefix}.idx.tmp", f"{self.prefix}.idx")

    def abort(self) -> None:
        """Drop the partial files after a failure."""
        self._bin.close()
        self._idx.close()
        for suffix in (".bin.tmp", ".idx.tmp"):
            Path(self.prefix + suffix).unlink(missing_ok=True)

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _flush(self) -> None:
        np.asarray(self._tokens, dtype=self._dtype).tofile(self._bin)
        np.asarray(self._offsets, dtype=np.int64).tofile(self._idx)
        self._tokens.clear()
        self._offsets.clear()


def write_store(path_prefix: str | Path, sequences: Iterable[Sequence[int]], vocab_size: int) -> int:
    """Write ``{prefix}.bin`` and ``{prefix}.idx`` from streamed sequences; return how many."""
    count = 0
    with StoreWriter(path_prefix, vocab_size) as writer:
        for count, sequence in enumerate(sequences, start=1):
            writer.add(sequence)
    return count


class TokenStore:
    """Read-only, random-access view of a store: ``store[i]`` is sequence i as a numpy array."""

    def __init__(self, path_prefix: str | Path):
        bin_path, idx_path = Path(f"{path_prefix}.bin"), Path(f"{path_prefix}.idx")
        for path in (bin_path, idx_path):
            if not path.is_file():
                raise UserError(f"{path}: prepared data not found; run `attn tokenize` with this config")
        self.offsets = np.fromfile(idx_path, dtype=np.int64)
        n_tokens = int(self.offsets[-1]) if len(self.offsets) else 0
        n_bytes = bin_path.stat().st_size
        if len(self.offsets) == 0 or n_bytes not in (2 * n_tokens, 4 * n_tokens):
            raise UserError(f"{bin_path}: size does not match {idx_path}; re-run `attn tokenize`")
        if n_tokens == 0:  # an empty file cannot be memory-mapped
            self.tokens = np.empty(0, dtype=np.uint16)
        else:
            dtype = np.uint16 if n_bytes == 2 * n_tokens else np.uint32
            self.tokens = np.memmap(bin_path, dtype=dtype, mode="r")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    @property
    def lengths(self) -> np.ndarray:
        """Length of every sequence, in pieces."""
        return np.diff(self.offsets)


class ParallelDataset:
    """One split of a prepared corpus: source and target stores with aligned indices."""

    def __init__(self, prepared_dir: str | Path, split: str):
        self.src = TokenStore(Path(prepared_dir) / f"{split}.src")
        self.tgt = TokenStore(Path(prepared_dir) / f"{split}.tgt")
        if len(self.src) != len(self.tgt):
            raise UserError(
                f"{prepared_dir}: the {split} source and target stores differ in size; re-run `attn tokenize`"
            )
        self.src_lengths = self.src.lengths
        self.tgt_lengths = self.tgt.lengths

    def __len__(self) -> int:
        return len(self.src)

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Source and target piece ids of pair i (no special symbols)."""
        return self.src[i], self.tgt[i]
