"""How to translate: the ``decode`` config section plus the options of one command."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from seq2seq.config import DecodeConfig


@dataclass
class TranslateSettings(DecodeConfig):
    """How to translate: the ``decode`` config section (its keys and defaults, inherited) plus
    per-command options."""

    nbest: int = 1  # translations per input line (beam: the best ones; sampling: draws)
    sampling: bool = False  # draw random translations instead of beam search
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None  # for sampling; None draws a different sample every run
    return_attention: bool = False
    # The cross-attention returned (a Transformer's: layer, -1 the last; head, None their mean).
    attention_layer: int = -1
    attention_head: int | None = None
    max_source_len: int = 1024  # source pieces; longer lines are truncated with a warning
    workers: int = 1  # processes decoding batches side by side (CPU only; see decoding.workers)
    engine: str = "torch"  # or "ctranslate2" (see decoding.ctranslate2_engine)

    @classmethod
    def from_config(cls, decode: DecodeConfig, **options: object) -> TranslateSettings:
        return cls(**dataclasses.asdict(decode), **options)
