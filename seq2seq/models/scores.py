"""Score functions of the RNN attention mechanisms, and what every mechanism returns.

A score function says how well decoder query q matches source key k:

    additive    Bahdanau et al. 2015:  v^T tanh(W_q q + W_k k + b)  (with coverage, Tu et al.
                2016: + w_c c, c the attention the position has received so far)
    dot         Luong et al. 2015:     q^T k
    general     Luong et al. 2015:     q^T W k
    scaled_dot  Vaswani et al. 2017:   q^T k / sqrt(d)

Each has ``precompute(keys)``, the query-independent part done once per sentence (W_k k,
W k), and ``forward(queries, precomputed_keys) -> scores [B,T,S]``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from seq2seq.kernels import Linear, tanh_


class Attended(NamedTuple):
    """One attention call's result."""

    context: Tensor  # [B,T,C] the weighted sum of the values
    weights: Tensor  # [B,T,S] what was attended: one-hot for hard and monotonic decoding
    state: dict  # carried to the next decoder step (coverage, alignment, means); {} if none
    # Hard attention in training: log p(position) [B,T,S], from which the position was drawn
    # (REINFORCE) or over which the output is summed (exact); None otherwise.
    log_probs: Tensor | None = None


def dot_scores(queries: Tensor, keys: Tensor) -> Tensor:
    """q^T k for every query/key pair: [B,T,D] x [B,S,D] -> [B,T,S]."""
    return queries @ keys.transpose(1, 2)


def additive_scores(
    projected_queries: Tensor, projected_keys: Tensor, v: nn.Linear, out: Tensor | None = None,
    extra: Tensor | None = None,
) -> Tensor:
    """v^T tanh(W_q q + W_k k [+ extra]): [B,T,A] and [B,S,A] (extra [B,T,S,A]) -> [B,T,S].

    The [B,T,S,A] sum is the big tensor here: tanh runs in place on it (its backward needs
    only its output; ``fastops.tanh_``, several times faster than torch.tanh on this CPU), and
    without autograd the sum may be written into ``out``, a buffer of that shape kept between
    decoding steps (a fresh one costs more in page faults than the sum).
    """
    queries, keys = projected_queries.unsqueeze(2), projected_keys.unsqueeze(1)
    hidden = torch.add(queries, keys, out=out) if out is not None else queries + keys
    if extra is not None:
        hidden = hidden.add_(extra) if out is not None else hidden + extra
    return v(tanh_(hidden)).squeeze(-1)


class DotScore(nn.Module):
    """q^T k, optionally divided by sqrt(d) so that scores do not grow with the dimension."""

    def __init__(self, scaled: bool):
        super().__init__()
        self.scaled = scaled

    def precompute(self, keys: Tensor) -> Tensor:
        return keys

    def forward(self, queries: Tensor, keys: Tensor) -> Tensor:
        scores = dot_scores(queries, keys)
        return scores / math.sqrt(keys.size(-1)) if self.scaled else scores


class GeneralScore(nn.Module):
    """q^T W k, computed as q . (W k) so that W k is computed once per sentence."""

    def __init__(self, query_dim: int, key_dim: int):
        super().__init__()
        self.key_to_query = Linear(key_dim, query_dim, bias=False)

    def precompute(self, keys: Tensor) -> Tensor:
        return self.key_to_query(keys)

    def forward(self, queries: Tensor, keys: Tensor) -> Tensor:
        return dot_scores(queries, keys)


class AdditiveScore(nn.Module):
    """v^T tanh(W_q q + W_k k + b): a one-hidden-layer network scores each pair. (The papers
    have no b; it costs nothing here and lets the hidden layer shift its tanh.)

    With ``coverage``, forward also takes the attention each source position has received so
    far, c [B,S], and adds w_c c inside the tanh (Tu et al. 2016; See et al. 2017).
    """

    def __init__(self, query_dim: int, key_dim: int, attention_dim: int, coverage: bool = False):
        super().__init__()
        self.query_proj = Linear(query_dim, attention_dim, bias=False)
        # The one bias sits on the key side, where it is precomputed for free.
        self.key_proj = Linear(key_dim, attention_dim)
        self.v = Linear(attention_dim, 1, bias=False)
        self.coverage_weight = nn.Parameter(torch.zeros(attention_dim)) if coverage else None

    def precompute(self, keys: Tensor) -> Tensor:
        return self.key_proj(keys)

    def forward(self, queries: Tensor, keys: Tensor, coverage: Tensor | None = None) -> Tensor:
        projected = self.query_proj(queries)
        extra = None
        if coverage is not None:  # [B,S] -> [B,1,S,A]
            extra = (coverage.unsqueeze(-1) * self.coverage_weight).unsqueeze(1).to(projected.dtype)
        buffer = None
        if not torch.is_grad_enabled():  # decoding: reuse one buffer for the [B,T,S,A] sum
            shape = (*projected.shape[:2], keys.size(1), projected.size(2))
            buffer = getattr(self, "_buffer", None)
            if buffer is None or buffer.shape != shape or buffer.dtype != projected.dtype \
                    or buffer.device != projected.device or buffer.is_inference() != torch.is_inference_mode_enabled():
                buffer = projected.new_empty(shape)
                self._buffer = buffer
        return additive_scores(projected, keys, self.v, out=buffer, extra=extra)


def build_score(kind: str, query_dim: int, key_dim: int, coverage: bool = False) -> nn.Module:
    """The score function named ``kind``; dot products need query_dim == key_dim; coverage
    enters the additive score only."""
    if kind in ("dot", "scaled_dot") and query_dim != key_dim:
        raise ValueError(f"{kind} attention needs equal query and key sizes, not {query_dim}, {key_dim}")
    if coverage and kind != "additive":
        raise ValueError(f"coverage enters the additive score, not {kind}")
    match kind:
        case "dot":
            return DotScore(scaled=False)
        case "scaled_dot":
            return DotScore(scaled=True)
        case "general":
            return GeneralScore(query_dim, key_dim)
        case "additive":
            return AdditiveScore(query_dim, key_dim, attention_dim=query_dim, coverage=coverage)
    raise ValueError(f"unknown attention score {kind!r}")
