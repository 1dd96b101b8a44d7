"""Several models with one target vocabulary, searched as one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seq2seq.decoding.search_helpers import float_log_probs
from seq2seq.errors import UserError
from seq2seq.models.interface import Seq2SeqModel


class Ensemble(nn.Module):
    """Several models with one target vocabulary, searched as if they were one.

    The next-token distribution is the average of the members' log-probabilities (their
    normalised geometric mean). ``step`` and ``forward`` return it already normalised, so
    the searches' own log_softmax leaves it unchanged. The state is a list of member states.
    """

    def __init__(self, models: Sequence[Seq2SeqModel]):
        super().__init__()
        vocab_sizes = sorted({m.tgt_vocab_size for m in models})
        if len(vocab_sizes) != 1:
            raise UserError(
                f"ensemble members have different target vocabularies (sizes {vocab_sizes}); "
                "ensemble only checkpoints trained with the same tokenizer"
            )
        self.members = nn.ModuleList(models)
        self.tgt_vocab_size = vocab_sizes[0]
        # Members without attention return all-zero weights, which must not dilute the others'.
        self.attending = [i for i, m in enumerate(models) if has_attention(m)]
        limits = [m.max_positions for m in models if m.max_positions is not None]
        self.max_positions = min(limits, default=None)  # what every member can read

    def encode(self, src: Tensor) -> list[Any]:
        return [m.encode(src) for m in self.members]

    def init_state(self, encoded: list[Any]) -> list[Any]:
        return [m.init_state(e) for m, e in zip(self.members, encoded)]

    def reorder(self, state: list[Any], indices: Tensor) -> list[Any]:
        return [m.reorder(s, indices) for m, s in zip(self.members, state)]

    def step(self, prev_tokens: Tensor, state: list[Any]) -> tuple[Tensor, list[Any], Tensor | None]:
        logits, states, attentions = zip(*(m.step(prev_tokens, s) for m, s in zip(self.members, state)))
        return _average_log_probs(logits), list(states), self._average_attention(attentions)

    def forward(self, src: Tensor, tgt_in: Tensor, return_attention: bool = False) -> Any:
        outputs = [m(src, tgt_in, return_attention=return_attention) for m in self.members]
        if not return_attention:
            return _average_log_probs(outputs)
        logits, attentions = zip(*outputs)
        return _average_log_probs(logits), self._average_attention(attentions)

    def _average_attention(self, attentions: Sequence[Tensor | None]) -> Tensor | None:
        """The attending members' mean attention, for plots and alignments; None when some has none."""
        attending = [attentions[i] for i in self.attending]
        if not attending or any(a is None for a in attending):
            return None
        return torch.stack([a.float() for a in attending]).mean(dim=0)


def has_attention(model: nn.Module) -> bool:
    """Whether ``model``'s attention weights mean anything: an RNN with ``attention: none``
    returns all-zero weights, which would make every piece 'align' to the first source piece."""
    if isinstance(model, Ensemble):
        return bool(model.attending)
    return getattr(getattr(model, "config", None), "attention", None) != "none"


def _average_log_probs(logits: Sequence[Tensor]) -> Tensor:
    mean = torch.stack([float_log_probs(x) for x in logits]).mean(dim=0)
    return F.log_softmax(mean, dim=-1)
