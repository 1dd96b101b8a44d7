"""SentencePiece subword tokenizers for the source and target languages.

A *joint* tokenizer is one SentencePiece model, so both languages share one vocabulary (needed
by ``model.share_vocab``); a *separate* one has a model per side. Every model attn trains
reserves the same special ids (``seq2seq.data.special``), and a ``Tokenizer`` deals in pieces
only: EOS and BOS are added when batches are built.

The models travel as bytes (``to_bytes``/``from_bytes``) so a checkpoint can carry its
tokenizer; ``fingerprint`` tells whether a checkpoint and a tokenizer belong together.
"""

from __future__ import annotations

import hashlib
import io
import math
import random
import re
from collections.abc import Iterable, Iterator
from itertools import chain, islice
from pathlib import Path

import sentencepiece as spm

from seq2seq.config import DataConfig, TokenizerConfig
from seq2seq.data.corpus import corpus_paths, read_lines
from seq2seq.data.special import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from seq2seq.errors import UserError

JOINT_MODEL = "spm.model"
SRC_MODEL = "spm.src.model"
TGT_MODEL = "spm.tgt.model"


class Tokenizer:
    """Text to piece ids and back, with one SentencePiece model (joint) or one per side."""

    def __init__(self, src: spm.SentencePieceProcessor, tgt: spm.SentencePieceProcessor | None = None):
        self._src = src
        self._tgt = src if tgt is None else tgt

    # ------------------------------------------------------------------ building and saving

    @classmethod
    def from_bytes(cls, src_model: bytes, tgt_model: bytes | None = None) -> Tokenizer:
        """Rebuild from serialized models: one for a joint tokenizer, two for a separate one."""
        src = _processor(src_model, "tokenizer (source)")
        tgt = None if tgt_model is None else _processor(tgt_model, "tokenizer (target)")
        return cls(src, tgt)

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        """Load the tokenizer that ``save`` (or ``attn tokenize``) wrote into ``directory``."""
        directory = Path(directory)
        joint = directory / JOINT_MODEL
        src, tgt = directory / SRC_MODEL, directory / TGT_MODEL
        if joint.is_file():
            return cls(_processor(joint.read_bytes(), str(joint)))
        if not src.is_file() and not tgt.is_file():
            raise UserError(f"{joint}: tokenizer not found; run `attn tokenize` with this config first")
        for path in (src, tgt):
            if not path.is_file():
                raise UserError(f"{path}: tokenizer model not found; re-run `attn tokenize`")
        return cls(_processor(src.read_bytes(), str(src)), _processor(tgt.read_bytes(), str(tgt)))

    def to_bytes(self) -> tuple[bytes, bytes | None]:
        """The serialized models (source, target); the target is None for a joint tokenizer."""
        src = self._src.serialized_model_proto()
        return src, None if self.joint else self._tgt.serialized_model_proto()

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        src, tgt = self.to_bytes()
        if tgt is None:
            (directory / JOINT_MODEL).write_bytes(src)
        else:
            (directory / SRC_MODEL).write_bytes(src)
            (directory / TGT_MODEL).write_bytes(tgt)

    def fingerprint(self) -> str:
        """sha256 of the model bytes: equal fingerprints mean identical piece ids."""
        src, tgt = self.to_bytes()
        digest = hashlib.sha256(src)
        if tgt is not None:
            digest.update(tgt)
        return digest.hexdigest()

    # ------------------------------------------------------------------ vocabularies

    @property
    def joint(self) -> bool:
        return self._tgt is self._src

    @property
    def src_vocab_size(self) -> int:
        return self._src.get_piece_size()

    @property
    def tgt_vocab_size(self) -> int:
        return self._tgt.get_piece_size()

    # ------------------------------------------------------------------ encoding and decoding

    def encode_src(self, lines: list[str]) -> list[list[int]]:
        """Piece ids of each source line, without EOS."""
        # The list form of encode runs on several threads inside SentencePiece.
        return self._src.encode(lines, out_type=int)

    def encode_tgt(self, lines: list[str]) -> list[list[int]]:
        """Piece ids of each target line, without BOS or EOS."""
        return self._tgt.encode(lines, out_type=int)

    def decode_tgt(self, ids: Iterable[int]) -> str:
        """Detokenized target text; PAD, BOS and EOS ids decode to nothing."""
        return self._tgt.decode([int(i) for i in ids])

    def src_pieces(self, ids: Iterable[int]) -> list[str]:
        """The piece strings of source ids, for attention plots and alignments."""
        return self._src.id_to_piece([int(i) for i in ids])

    def tgt_pieces(self, ids: Iterable[int]) -> list[str]:
        return self._tgt.id_to_piece([int(i) for i in ids])


def train_tokenizer(data_cfg: DataConfig, out_dir: str | Path) -> Tokenizer:
    """Train SentencePiece on the training corpus as ``data.tokenizer`` says; save it in ``out_dir``."""
    src_path, tgt_path = corpus_paths(data_cfg.train, data_cfg.src_lang, data_cfg.tgt_lang)
    settings = data_cfg.tokenizer
    if settings.joint:
        model = train_model(chain(read_lines(src_path), read_lines(tgt_path)), settings)
        tokenizer = Tokenizer.from_bytes(model)
    else:
        src_model = train_model(read_lines(src_path), settings)
        tgt_model = train_model(read_lines(tgt_path), settings)
        tokenizer = Tokenizer.from_bytes(src_model, tgt_model)
    tokenizer.save(out_dir)
    return tokenizer


def sample_sentences(sentences: Iterable[str], size: int, seed: int = 0) -> list[str]:
    """A uniform random sample of ``size`` sentences, in one pass with memory for ``size`` only
    (reservoir sampling, Li's algorithm L); all of them, in order, when there are fewer.

    The same corpus always gives the same sample. SentencePiece's own sampling
    (``input_sentence_size``) draws a new seed in every process, so the same corpus and config
    gave another vocabulary, and so another BLEU, at every fresh ``attn tokenize``."""
    stream = iter(sentences)
    reservoir = list(islice(stream, size))
    if len(reservoir) < size:
        return reservoir
    rng = random.Random(seed)

    def uniform() -> float:  # in (0, 1]: safe to take the log of
        return 1.0 - rng.random()

    w = math.exp(math.log(uniform()) / size)
    while w < 1.0:
        skip = math.floor(math.log(uniform()) / math.log1p(-w))
        chosen = next(islice(stream, skip, None), None)
        if chosen is None:
            break
        reservoir[rng.randrange(size)] = chosen
        w *= math.exp(math.log(uniform()) / size)
    return reservoir


def train_model(sentences: Iterator[str], settings: TokenizerConfig) -> bytes:
    """Train one SentencePiece model on streamed sentences; return the serialized model."""
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            # A fixed sample bounds memory on any corpus.
            sentence_iterator=iter(sample_sentences(sentences, settings.input_sentence_size)),
            model_writer=model,
            model_type=settings.type,
            vocab_size=settings.vocab_size,
            # A small corpus cannot fill a big vocabulary; learn what it supports instead of failing.
            hard_vocab_limit=False,
            character_coverage=settings.character_coverage,
            # The sample above has at most this many sentences, so SentencePiece's own random
            # sampling never starts (these two settings keep small corpora's models as they were).
            input_sentence_size=settings.input_sentence_size,
            shuffle_input_sentence=True,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            num_threads=2,
            minloglevel=2,  # errors only: SentencePiece otherwise logs every training step
        )
    except RuntimeError as exc:
        # SentencePiece prefixes its reason with a source location: "INTERNAL: file(line) [check] reason".
        reason = str(exc).split("] ", 1)[-1].strip() or str(exc)
        reason = re.sub(r"(?:with )?--(\w+) option", r"with data.tokenizer.\1", reason)
        raise UserError(f"data.tokenizer: SentencePiece could not train a model: {reason}") from None
    return model.getvalue()


def _processor(model: bytes, origin: str) -> spm.SentencePieceProcessor:
    try:
        return spm.SentencePieceProcessor(model_proto=model)
    except RuntimeError:
        raise UserError(f"{origin}: not a valid SentencePiece model; re-run `attn tokenize`") from None
