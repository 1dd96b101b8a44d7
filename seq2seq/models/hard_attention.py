"""Hard attention: each decoder step reads exactly one source position.

The position is a latent variable a_t with p(a_t = s) = softmax(scores)_s, the scores from
any score function (scores.py). Decoding reads the most likely position (the argmax). Its
choice is not differentiable, so training takes one of three routes (``mode``):

    reinforce  draw a_t from p, read that position, and learn p from the score-function
               estimator (Williams 1992): the gradient of E[R] is E[(R - b) grad log p(a_t)].
               The reward R, the baseline b and the entropy bonus are computed by the training
               objective (training/objective.py) from the ``log_probs`` returned here.
    gumbel     the straight-through Gumbel-softmax (Jang et al. 2017): read the argmax of
               (log p + Gumbel noise) / temperature forward, differentiate the softmax of it
               backward.
    exact      no sample: the decoder's output is marginalised over every position,
               p(y_t) = sum_s p(a_t = s) p(y_t | a_t = s) (Deng et al. 2018's latent alignment
               model); the decoder and the objective do the sum, this returns p and its log.
               Decoding computes the same sum (the model trained is that sum, and a Luong
               decoder feeds it the expected attentional state), so its maps show p, whose
               argmax is the position --alignments reports.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from seq2seq.models.scores import Attended

HARD_MODES = ("reinforce", "gumbel", "exact")


def masked_log_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """log softmax over the allowed positions, in float32; -inf where ``mask`` is False."""
    return scores.float().masked_fill(~mask, float("-inf")).log_softmax(dim=-1)


def one_hot_like(positions: Tensor, like: Tensor) -> Tensor:
    """A one-hot [..., S] (``like``'s shape and type) of ``positions`` [...]."""
    return torch.zeros_like(like).scatter_(-1, positions.unsqueeze(-1), 1.0)


def gumbel_straight_through(log_probs: Tensor, temperature: float) -> Tensor:
    """One-hot of argmax(log p + g), g ~ Gumbel(0, 1), with the gradient of
    softmax((log p + g) / temperature): masked positions (log p = -inf) never win."""
    uniform = torch.rand_like(log_probs).clamp_(min=1e-10, max=1.0 - 1e-7)
    noisy = log_probs - torch.log(-torch.log(uniform))
    soft = (noisy / temperature).softmax(dim=-1)
    hard = one_hot_like(noisy.argmax(dim=-1), soft)
    return hard - soft.detach() + soft


class HardAttention(nn.Module):
    """One source position per query (see the module docstring); weights are one-hot except
    with ``exact``, where they are p itself."""

    independent_queries = True

    def __init__(self, score: nn.Module, mode: str = "reinforce", temperature: float = 1.0):
        super().__init__()
        if mode not in HARD_MODES:
            raise ValueError(f"unknown hard attention training {mode!r}")
        self.score = score
        self.mode = mode
        self.temperature = temperature

    def initial_state(self, keys: Tensor, mask: Tensor) -> dict:
        return {}

    def precompute(self, keys: Tensor) -> Tensor:
        return self.score.precompute(keys)

    def forward(
        self, queries: Tensor, keys: Tensor, values: Tensor, key_mask: Tensor, first_step: int = 0,
        state: dict | None = None,
    ) -> Attended:
        log_probs = masked_log_softmax(self.score(queries, keys), key_mask.unsqueeze(1))
        if self.mode == "exact":  # trained and decoded as the same sum over positions
            weights = log_probs.exp().to(values.dtype)
            return Attended(weights @ values, weights, {}, log_probs)
        if not self.training:
            weights = one_hot_like(log_probs.argmax(dim=-1), log_probs)
            return Attended(weights.to(values.dtype) @ values, weights.to(values.dtype), {})
        if self.mode == "reinforce":
            drawn = torch.multinomial(log_probs.exp().flatten(0, 1), 1).view(log_probs.shape[:2])
            weights = one_hot_like(drawn, log_probs)
        else:
            weights, log_probs = gumbel_straight_through(log_probs, self.temperature), None
        weights = weights.to(values.dtype)
        return Attended(weights @ values, weights, {}, log_probs)


def marginal_log_probs(candidate_logits: Tensor, log_probs: Tensor) -> Tensor:
    """log p(y) = log sum_s p(s) softmax(logits_s)(y), in float32: [...,S,V] and [...,S] -> [...,V]."""
    return torch.logsumexp(candidate_logits.float().log_softmax(dim=-1) + log_probs.unsqueeze(-1), dim=-2)
