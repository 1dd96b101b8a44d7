"""Translate lines of text: batching, search, and putting the results back in input order.

``Translator`` sits between the text world (tokenizer callbacks) and the tensor world
(``search``): it encodes lines to piece ids, groups sentences of similar length into batches
(less padding, and beam search stops early for a whole batch at once), decodes each batch,
and returns the results in input order.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from seq2seq.data.special import EOS_ID, PAD_ID
from seq2seq.decoding.settings import TranslateSettings
from seq2seq.decoding.search import Hypothesis, beam_search, gnmt_length_penalty, greedy_search, sample
from seq2seq.decoding.search_helpers import models_set
from seq2seq.decoding.workers import DecodeWorkers
from seq2seq.errors import UserError
from seq2seq.kernels import check_bf16, packed_weights
from seq2seq.models.interface import Seq2SeqModel

if TYPE_CHECKING:
    from seq2seq.data.tokenizer import Tokenizer
    from seq2seq.decoding.ctranslate2_engine import CTranslate2Search

log = logging.getLogger(__name__)


@dataclass
class TranslationResult:
    """One translation of one input line."""

    text: str
    tokens: list[int]  # output piece ids, without BOS and EOS
    score: float  # log-prob; divided by the length penalty for beam search
    src_ids: list[int]  # ids fed to the encoder: source pieces (after truncation) + EOS
    attention: Tensor | None = None  # [len(tokens), len(src_ids)]: rows outputs, columns sources

    def alignment(self) -> str:
        """Pharaoh alignment ``i-j`` of source piece i to output piece j (EOS left out)."""
        if self.attention is None:
            return ""
        return pharaoh(hard_alignments(self.attention[:, :-1]))


class Translator:
    """Translates batches of lines with a model that has the step interface.

    ``src_encode`` maps lines to source piece ids (without EOS); ``tgt_decode`` maps output
    piece ids back to text. ``warn`` receives one message per truncated line. ``engine``
    (settings.engine ctranslate2) searches in place of attn's own search. ``precision_key``
    names the setting that asked for bf16, in its warning or refusal.
    """

    def __init__(
        self,
        model: Seq2SeqModel,
        src_encode: Callable[[list[str]], list[list[int]]],
        tgt_decode: Callable[[list[int]], str],
        settings: TranslateSettings,
        warn: Callable[[str], None] = log.warning,
        engine: CTranslate2Search | None = None,
        precision_key: str = "--precision",
    ):
        if settings.nbest > settings.beam_size and not settings.sampling:
            raise UserError(
                f"nbest {settings.nbest} is larger than the beam size {settings.beam_size} (--beam or "
                "decode.beam_size); raise the beam size or lower --nbest"
            )
        if settings.precision == "bf16" and (warning := check_bf16(_device_of(model), precision_key)):
            warn(warning)
        self.model = with_precision(model, settings.precision)
        if _device_of(model).type != "cpu" and settings.workers > 1:
            raise UserError(f"--workers {settings.workers}: worker processes decode on the CPU only; "
                            "drop --workers to decode on the GPU")
        self.workers: DecodeWorkers | None = None  # started at the first call that has batches to share
        self.engine = engine
        self.src_encode = src_encode
        self.tgt_decode = tgt_decode
        self.settings = settings
        self.warn = warn
        # Models with learned positions cannot read arbitrarily long sources.
        model_limit = model.max_positions
        self.max_source_len = settings.max_source_len
        if model_limit is not None:
            self.max_source_len = min(self.max_source_len, model_limit - 1)  # room for EOS

    def translate(self, lines: list[str], first_line: int = 1) -> list[list[TranslationResult]]:
        """Translations of each line, best first, in input order.

        Empty lines get one empty translation without running the model. ``first_line`` is
        the number of ``lines[0]`` in its file, for the truncation warnings.
        """
        sources = [
            self._source_ids(pieces, line_number)
            for line_number, pieces in enumerate(self.src_encode(lines), start=first_line)
        ]
        results = [[TranslationResult("", [], 0.0, [])] for _ in lines]
        to_decode = [i for i, line in enumerate(lines) if line.strip() and len(sources[i]) > 1]
        # Longest first: similar lengths share a batch, and running out of memory shows early.
        to_decode.sort(key=lambda i: len(sources[i]), reverse=True)

        per_batch = self.sentences_per_batch()
        batches = [to_decode[start : start + per_batch] for start in range(0, len(to_decode), per_batch)]
        decoded = self._decode([[sources[i] for i in batch] for batch in batches])
        for batch, hypotheses_of_batch in zip(batches, decoded):
            for i, hypotheses in zip(batch, hypotheses_of_batch):
                results[i] = [self._result(h, sources[i]) for h in hypotheses]
        return results

    def close(self) -> None:
        """Stop the worker processes, if any (they also stop when this process exits)."""
        if self.workers is not None:
            self.workers.close()
            self.workers = None
        if self.engine is not None:
            self.engine.close()

    def __enter__(self) -> Translator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _decode(self, batches: list[list[list[int]]]) -> list[list[list[Hypothesis]]]:
        if self.engine is not None:
            return self.engine.decode(batches)
        shared = self.settings.workers > 1 and len(batches) > 1
        if shared and self.workers is None:
            self.workers = DecodeWorkers(decode_batch, self.model, self.settings, self.settings.workers)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode(), packed_weights(self.model, self.settings.batch_size):
                if shared:
                    return self.workers.decode(batches)
                return [decode_batch(self.model, self.settings, batch) for batch in batches]
        finally:
            self.model.train(was_training)

    def sentences_per_batch(self) -> int:
        """``batch_size`` counts decoder rows; each sentence takes one per beam (or sample)."""
        s = self.settings
        rows_per_sentence = s.nbest if s.sampling else s.beam_size
        return max(1, s.batch_size // rows_per_sentence)

    def _source_ids(self, pieces: list[int], line_number: int) -> list[int]:
        if len(pieces) > self.max_source_len:
            self.warn(
                f"input line {line_number}: {len(pieces)} source pieces, truncated to the first "
                f"{self.max_source_len} (the maximum source length)"
            )
            pieces = pieces[: self.max_source_len]
        return [*pieces, EOS_ID]

    def _result(self, hypothesis: Hypothesis, src_ids: list[int]) -> TranslationResult:
        return TranslationResult(
            text=self.tgt_decode(hypothesis.tokens),
            tokens=hypothesis.tokens,
            score=hypothesis.score,
            src_ids=src_ids,
            attention=hypothesis.attention,
        )


def make_translator(model: Seq2SeqModel, tokenizer: Tokenizer, settings: TranslateSettings,
                    warn: Callable[[str], None] = log.warning, device: torch.device | str = "cpu") -> Translator:
    """A Translator for a model and the tokenizer it was trained with, searching with the
    engine that ``settings.engine`` names."""
    from seq2seq.decoding.ctranslate2_engine import engine_for

    engine = engine_for(model, tokenizer, settings, device)
    return Translator(model, tokenizer.encode_src, tokenizer.decode_tgt, settings, warn, engine)


def decode_batch(model: Seq2SeqModel, s: TranslateSettings, sources: list[list[int]]) -> list[list[Hypothesis]]:
    """The hypotheses (best first) for each of ``sources`` (piece ids ending in EOS), decoded as
    one batch by the search that ``s`` asks for."""
    src = _pad(sources, device=_device_of(model))
    with showing_attention(model, s.attention_layer, s.attention_head):
        return _search(model, s, src)


def showing_attention(model: nn.Module, layer: int, head: int | None) -> contextlib.AbstractContextManager:
    """Which cross-attention the models whose weights come from one of several layers and
    heads (a Transformer's) return while a search runs."""
    return models_set(model, attention_layer=layer, attention_head=head)


def _search(model: Seq2SeqModel, s: TranslateSettings, src: Tensor) -> list[list[Hypothesis]]:
    if not s.sampling and s.beam_size == 1:
        # Beam search with one beam is greedy search, which drops finished sentences and
        # has no beam bookkeeping; its score is divided by the length penalty the same way.
        hypotheses = greedy_search(
            model, src, s.max_len_a, s.max_len_b, min_len=s.min_len, return_attention=s.return_attention,
        )  # fmt: skip
        for h in hypotheses:
            h.score = float(h.score / gnmt_length_penalty(len(h.tokens) + 1, s.length_penalty))
        return [[h] for h in hypotheses]
    if not s.sampling:
        return beam_search(
            model, src, s.beam_size, s.length_penalty, s.max_len_a, s.max_len_b,
            min_len=s.min_len, nbest=s.nbest, return_attention=s.return_attention,
        )  # fmt: skip
    generator = None
    if s.seed is not None:
        generator = torch.Generator(device=src.device).manual_seed(s.seed)
    draws = sample(
        model, src.repeat_interleave(s.nbest, dim=0), s.max_len_a, s.max_len_b,
        temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, generator=generator,
        min_len=s.min_len, return_attention=s.return_attention,
    )  # fmt: skip
    per_sentence = [draws[i : i + s.nbest] for i in range(0, len(draws), s.nbest)]
    return [sorted(group, key=lambda h: h.score, reverse=True) for group in per_sentence]


def with_precision(model: nn.Module, precision: str) -> nn.Module:
    """``model`` itself for fp32; for bf16 a bf16 copy (the caller's model, e.g. the one being
    trained, stays as it is)."""
    if precision == "fp32":
        return model
    if precision == "bf16":
        return copy.deepcopy(model).to(torch.bfloat16)
    raise ValueError(f"decode precision must be fp32 or bf16, got {precision!r}")


def _pad(sequences: list[list[int]], device: torch.device) -> Tensor:
    batch = torch.full((len(sequences), max(map(len, sequences))), PAD_ID, dtype=torch.long)
    for i, ids in enumerate(sequences):
        batch[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return batch.to(device)


def _device_of(model: nn.Module) -> torch.device:
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


# --------------------------------------------------------------------------- alignments


def hard_alignments(attention: Tensor) -> list[tuple[int, int]]:
    """For each output piece j, the source piece i it attends to most: pairs (i, j).

    ``attention`` is [target, source], as stored in ``TranslationResult``.
    """
    return [(i, j) for j, i in enumerate(attention.argmax(dim=1).tolist())]


def pharaoh(pairs: list[tuple[int, int]]) -> str:
    """Alignment pairs in Pharaoh format, e.g. ``0-0 2-1 1-2`` (source-target, 0-based)."""
    return " ".join(f"{i}-{j}" for i, j in pairs)
