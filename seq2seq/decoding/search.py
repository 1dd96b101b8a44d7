"""Search: turn a trained model into output sentences (greedy, beam, sampling).

Every search works with any model that has the step interface (the models in
``seq2seq.models`` and ``ensemble.Ensemble``)::

    encode(src [B,S]) -> encoded                 the encoder runs once per batch
    init_state(encoded) -> state                 nested dicts/lists of tensors, batch on dim 0
    step(prev [B], state) -> (logits [B,V], state, attention [B,S] or None)
    reorder(state, indices [B']) -> state        index_select on dim 0 of every tensor (the
                                                 old state may be overwritten: use the new one)
    forward(src, tgt_in [B,T], return_attention=False) -> logits [B,T,V] (, attention [B,T,S])
    tgt_vocab_size
    step_attention (optional)                    a model whose attention weights cost extra
                                                 (the Transformer's) has this switch: the
                                                 searches turn it off while they run without
                                                 return_attention, and step returns None

On a GPU every value the host reads from the device (``.item()``, ``int()``, ``bool()``, a
boolean mask's size) makes it wait until the device has done all the work queued so far, and
the device then idles while the host queues the next step. So the searches take their
decisions from host copies: beam search from one copy per step, greedy search and sampling from
a copy one step old (see ``DelayedCopy``); their outputs are those of the CPU's step-by-step
decisions.

Rules shared by all searches, so that their scores can be compared and recomputed:

* The first step is fed BOS. A hypothesis is scored with the model's own log-probabilities
  of its pieces *and* of its final EOS.
* Each sentence may produce at most ``floor(a * src_len + b)`` pieces, where ``src_len``
  counts its non-PAD source ids (pieces + EOS). At that limit EOS is the only allowed next
  token, so every hypothesis ends with a scored EOS.
* ``min_len`` forbids EOS until that many pieces exist; PAD and BOS are never produced.
  Forbidden tokens get -inf and the others keep their log-probabilities unchanged (not
  renormalised), so a score stays the real model log-probability and ``forced_score``
  recomputes it (up to float rounding).
* Beam search divides scores by the GNMT length penalty ``((5 + n) / 6) ** alpha`` where
  ``n`` is the number of scored tokens: the pieces plus the EOS.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from seq2seq.data.special import BOS_ID, EOS_ID, PAD_ID
from seq2seq.decoding.beam import beam_search
from seq2seq.decoding.greedy import greedy_search, sample
from seq2seq.decoding.search_helpers import Hypothesis, float_log_probs, gnmt_length_penalty
from seq2seq.models.interface import Seq2SeqModel

__all__ = ["Hypothesis", "beam_search", "forced_score", "gnmt_length_penalty", "greedy_search", "sample"]


# --------------------------------------------------------------------------- rescoring


def forced_score(
    model: Seq2SeqModel, src: Tensor, hypotheses: Sequence[Sequence[int]], length_penalty: float
) -> list[float]:
    """Score given outputs by teacher forcing, exactly as the searches score them.

    ``hypotheses[i]`` is the piece ids (no BOS/EOS) for sentence ``src[i]``; the score is
    the total log-prob of the pieces plus EOS, divided by the GNMT length penalty.
    """
    lengths = torch.tensor([len(h) + 1 for h in hypotheses], device=src.device)
    tgt_in = src.new_full((len(hypotheses), int(lengths.max())), PAD_ID)
    tgt_out = tgt_in.clone()
    for i, pieces in enumerate(hypotheses):
        tgt_in[i, : len(pieces) + 1] = torch.tensor([BOS_ID, *pieces])
        tgt_out[i, : len(pieces) + 1] = torch.tensor([*pieces, EOS_ID])
    log_probs = float_log_probs(model(src, tgt_in)).gather(2, tgt_out.unsqueeze(2)).squeeze(2)
    is_target = torch.arange(tgt_out.size(1), device=src.device) < lengths.unsqueeze(1)
    totals = log_probs.masked_fill(~is_target, 0.0).sum(dim=1)
    return (totals / gnmt_length_penalty(lengths, length_penalty)).tolist()
