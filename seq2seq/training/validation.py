"""Validation during training: loss and perplexity, then BLEU/chrF of real translations.

Perplexity alone can improve while translations do not (or the reverse), so every validation
also decodes the valid set (greedy by default, ``train.valid_beam_size`` for beam) and scores
it with sacrebleu exactly as ``attn evaluate`` would.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Callable

import numpy as np
import torch

from seq2seq.config import Config
from seq2seq.data.batching import TokenBatchSampler, collate
from seq2seq.data.corpus import corpus_paths, read_lines
from seq2seq.data.prepare import PreparedData
from seq2seq.decoding.settings import TranslateSettings
from seq2seq.decoding.translator import Translator
from seq2seq.evaluation.metrics import score_corpus
from seq2seq.models.interface import TrainableModel
from seq2seq.training.loss import label_smoothed_nll


@torch.inference_mode()
def validation_loss(model: TrainableModel, prepared: PreparedData, batch_tokens: int, device: torch.device) -> tuple[float, int]:
    """Mean NLL per target token on the valid split (no label smoothing, no dropout).

    The valid split is not length-filtered, so pairs that a model with learned positions cannot
    read (a side with ``model.max_positions`` pieces or more, plus EOS/BOS) are left out here
    rather than stopping the run; the translation half of validation cuts such sources."""
    data = prepared.dataset("valid")
    pairs = np.arange(len(data.src_lengths))
    limit = model.max_positions
    if limit is not None:
        pairs = np.flatnonzero((data.src_lengths < limit) & (data.tgt_lengths < limit))
    sampler = TokenBatchSampler(data.src_lengths[pairs], data.tgt_lengths[pairs], batch_tokens, seed=0, shuffle=False)
    nll = torch.zeros((), device=device)
    tokens = 0
    for indices in sampler.batches(0):
        batch = collate(data, pairs[indices])
        logits = model(batch.src.to(device), batch.tgt_in.to(device))
        nll += label_smoothed_nll(logits, batch.tgt_out.to(device), 0.0).nll
        tokens += batch.n_tgt_tokens
    return float(nll) / max(tokens, 1), tokens


# Sentences translated between two looks at ``abandon`` (a few seconds' work on a CPU).
ABANDON_CHECK_SENTENCES = 1000


def validate(model: TrainableModel, prepared: PreparedData, cfg: Config, device: torch.device,
             abandon: Callable[[], bool] = lambda: False) -> dict[str, float] | None:
    """Loss, perplexity, BLEU and chrF on the valid split; None if ``abandon()`` turned true
    on the way (Ctrl-C: the checkpoint is not kept waiting for a long validation)."""
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        loss, _ = validation_loss(model, prepared, cfg.train.batch_tokens, device)
        src_path, ref_path = corpus_paths(cfg.data.valid, cfg.data.src_lang, cfg.data.tgt_lang)
        limit = cfg.train.valid_max_sentences
        sources = list(itertools.islice(read_lines(src_path), limit))
        references = list(itertools.islice(read_lines(ref_path), limit))
        translator = valid_translator(model, prepared, cfg)
        hypotheses: list[str] = []
        for first in range(0, len(sources), ABANDON_CHECK_SENTENCES):
            if abandon():
                return None
            chunk = sources[first:first + ABANDON_CHECK_SENTENCES]
            hypotheses += [best[0].text for best in translator.translate(chunk, first_line=first + 1)]
        scores = score_corpus(hypotheses, [references], hyps_file="valid translations", refs_files=[str(ref_path)])
    finally:
        model.train(was_training)
    return {
        "valid_loss": loss,
        "valid_ppl": math.exp(min(loss, 50.0)),
        "valid_bleu": scores["bleu"],
        "valid_chrf": scores["chrf"],
        "valid_seconds": time.perf_counter() - start,
    }


def valid_translator(model: TrainableModel, prepared: PreparedData, cfg: Config) -> Translator:
    """The translator validation uses: the decode section, with train.valid_beam_size."""
    tok = prepared.tokenizer
    settings = dataclasses.replace(TranslateSettings.from_config(cfg.decode), beam_size=cfg.train.valid_beam_size)
    return Translator(model, tok.encode_src, tok.decode_tgt, settings, warn=lambda message: None,
                      precision_key="decode.precision")


def estimate_validation_seconds(model: TrainableModel, prepared: PreparedData, cfg: Config, device: torch.device) -> float:
    """About how long ``validate`` takes now: the loss as it is computed, plus the time of
    translating one batch of valid sentences (as many as validation decodes together) times
    the number of batches. An early model's outputs run to the length limit, so the estimate
    errs long, which is the safe side for a time budget."""
    was_training = model.training
    model.eval()
    try:
        start = time.perf_counter()
        validation_loss(model, prepared, cfg.train.batch_tokens, device)
        loss_seconds = time.perf_counter() - start
        src_path, _ = corpus_paths(cfg.data.valid, cfg.data.src_lang, cfg.data.tgt_lang)
        sentences = sum(1 for _ in itertools.islice(read_lines(src_path), cfg.train.valid_max_sentences))
        translator = valid_translator(model, prepared, cfg)
        per_batch = translator.sentences_per_batch()
        sample = list(itertools.islice(read_lines(src_path), min(sentences, per_batch)))
        start = time.perf_counter()
        translator.translate(sample)
        translate_seconds = time.perf_counter() - start
    finally:
        model.train(was_training)
    return loss_seconds + translate_seconds * math.ceil(sentences / max(len(sample), 1))
