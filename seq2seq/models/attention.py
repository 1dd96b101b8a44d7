"""Attention mechanisms for RNN decoders.

Every mechanism answers the same question: given decoder queries and the encoder's outputs,
how much should each source position count, and what is the weighted sum (the context)?

    forward(queries [B,T,Dq], keys [B,S,*], values [B,S,Dv], key_mask [B,S], first_step)
        -> context [B,T,Dv], weights [B,T,S]

``T`` is 1 when the decoder runs step by step, and the whole target length when a Luong
decoder without input feeding attends for all steps at once. ``keys`` is what
``precompute(encoder_outputs)`` returned: a projection of the keys that does not depend on
the query (W_k k for additive, W k for general) is computed once per sentence, not once per
decoder step. ``key_mask`` is True on real source tokens; padding always gets exactly zero
weight. ``first_step`` is the decoder position of the first query (local_m centres on it).

Mechanisms (``build_attention`` picks one):
    additive    Bahdanau et al. 2015:  score = v^T tanh(W_q q + W_k k + b)  (Luong's "concat"
                when the query is the decoder's new output, rnn.py's luong style)
    dot         Luong et al. 2015:     score = q^T k
    general     Luong et al. 2015:     score = q^T W k
    scaled_dot  Vaswani et al. 2017:   score = q^T k / sqrt(d)
    local_m     Luong: only the window [t - D, t + D] around the decoder step t
    local_p     Luong: a predicted window centre p_t, weights scaled by a Gaussian around it
    none        no attention: an empty context, all-zero weights
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from seq2seq.kernels import Linear, tanh_
from seq2seq.models.normalizers import normalizer

# ------------------------------------------------------------------ pure functions


def dot_scores(queries: Tensor, keys: Tensor) -> Tensor:
    """q^T k for every query/key pair: [B,T,D] x [B,S,D] -> [B,T,S]."""
    return queries @ keys.transpose(1, 2)


def additive_scores(
    projected_queries: Tensor, projected_keys: Tensor, v: nn.Linear, out: Tensor | None = None
) -> Tensor:
    """v^T tanh(W_q q + W_k k): [B,T,A] and [B,S,A] -> [B,T,S].

    The [B,T,S,A] sum is the big tensor here: tanh runs in place on it (its backward needs
    only its output; ``fastops.tanh_``, several times faster than torch.tanh on this CPU), and
    without autograd the sum may be written into ``out``, a buffer of that shape kept between
    decoding steps (a fresh one costs more in page faults than the sum).
    """
    queries, keys = projected_queries.unsqueeze(2), projected_keys.unsqueeze(1)
    hidden = torch.add(queries, keys, out=out) if out is not None else queries + keys
    return v(tanh_(hidden)).squeeze(-1)


def window_mask(centres: Tensor, length: int, half_width: int) -> Tensor:
    """True where source position s lies in [centre - D, centre + D]: [...] -> [..., length]."""
    positions = torch.arange(length, device=centres.device, dtype=centres.dtype)
    return (positions - centres.unsqueeze(-1)).abs() <= half_width


def gaussian_weights(centres: Tensor, length: int, sigma: float) -> Tensor:
    """exp(-(s - centre)^2 / (2 sigma^2)) for every source position s: [...] -> [..., length]."""
    positions = torch.arange(length, device=centres.device, dtype=centres.dtype)
    distance = positions - centres.unsqueeze(-1)
    return torch.exp(-distance.square() / (2 * sigma**2))


# ------------------------------------------------------------------ score functions
# Each has precompute(keys) (the query-independent part, done once per sentence) and
# forward(queries, precomputed_keys) -> scores [B,T,S].


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
    have no b; it costs nothing here and lets the hidden layer shift its tanh.)"""

    def __init__(self, query_dim: int, key_dim: int, attention_dim: int):
        super().__init__()
        self.query_proj = Linear(query_dim, attention_dim, bias=False)
        # The one bias sits on the key side, where it is precomputed for free.
        self.key_proj = Linear(key_dim, attention_dim)
        self.v = Linear(attention_dim, 1, bias=False)

    def precompute(self, keys: Tensor) -> Tensor:
        return self.key_proj(keys)

    def forward(self, queries: Tensor, keys: Tensor) -> Tensor:
        projected = self.query_proj(queries)
        buffer = None
        if not torch.is_grad_enabled():  # decoding: reuse one buffer for the [B,T,S,A] sum
            shape = (*projected.shape[:2], keys.size(1), projected.size(2))
            buffer = getattr(self, "_buffer", None)
            if buffer is None or buffer.shape != shape or buffer.dtype != projected.dtype \
                    or buffer.device != projected.device or buffer.is_inference() != torch.is_inference_mode_enabled():
                buffer = projected.new_empty(shape)
                self._buffer = buffer
        return additive_scores(projected, keys, self.v, out=buffer)


def build_score(kind: str, query_dim: int, key_dim: int) -> nn.Module:
    """The score function named ``kind``; dot products need query_dim == key_dim."""
    if kind in ("dot", "scaled_dot") and query_dim != key_dim:
        raise ValueError(f"{kind} attention needs equal query and key sizes, not {query_dim}, {key_dim}")
    match kind:
        case "dot":
            return DotScore(scaled=False)
        case "scaled_dot":
            return DotScore(scaled=True)
        case "general":
            return GeneralScore(query_dim, key_dim)
        case "additive":
            return AdditiveScore(query_dim, key_dim, attention_dim=query_dim)
    raise ValueError(f"unknown attention score {kind!r}")


# ------------------------------------------------------------------ attention modules


class GlobalAttention(nn.Module):
    """Attend over every real source position (additive, dot, general, scaled_dot)."""

    independent_queries = True  # any queries [B,T,...] may share a memory row (beam search)

    def __init__(self, score: nn.Module, normalize: str = "softmax"):
        super().__init__()
        self.score = score
        self.normalize = normalizer(normalize)

    def precompute(self, keys: Tensor) -> Tensor:
        return self.score.precompute(keys)

    def forward(
        self, queries: Tensor, keys: Tensor, values: Tensor, key_mask: Tensor, first_step: int = 0
    ) -> tuple[Tensor, Tensor]:
        weights = self.normalize(self.score(queries, keys), key_mask.unsqueeze(1)).to(values.dtype)
        return weights @ values, weights


class LocalAttention(nn.Module):
    """Luong et al. (2015) local attention: only a window [p_t - D, p_t + D] is scored.

    local_m (monotonic): p_t = t, the decoder step, clamped to the last real source position.
    local_p (predictive): p_t = (S_real - 1) * sigmoid(v^T tanh(W_p h_t)), a real number
    inside the sentence. As in the paper, the softmax over the window is multiplied by a
    Gaussian exp(-(s - p_t)^2 / (2 sigma^2)), sigma = D / 2, *after* the softmax and without
    renormalising: the softmax sums to 1 over the window, the returned weights to at most 1.
    The Gaussian is what lets gradients reach the position predictor.

    Positions outside the window get exactly zero weight: they are masked before the softmax.
    """

    def __init__(self, score: nn.Module, half_width: int, query_dim: int, predictive: bool,
                 normalize: str = "softmax"):
        super().__init__()
        self.score = score
        self.normalize = normalizer(normalize)
        self.half_width = half_width
        self.predictive = predictive
        # local_m centres each query on its time step, so its queries are not interchangeable.
        self.independent_queries = predictive
        if predictive:
            self.position = nn.Sequential(  # v^T tanh(W_p h_t)
                Linear(query_dim, query_dim, bias=False),
                nn.Tanh(),
                Linear(query_dim, 1, bias=False),
            )

    def precompute(self, keys: Tensor) -> Tensor:
        return self.score.precompute(keys)

    def centres(self, queries: Tensor, source_lengths: Tensor, first_step: int) -> Tensor:
        """The window centre p_t of every query: [B,T], float32 whatever the model's precision
        (bf16 cannot count past 256: its positions 281-283 all read 280)."""
        last = (source_lengths - 1).float().unsqueeze(1)  # [B,1]
        if self.predictive:
            return last * torch.sigmoid(self.position(queries).squeeze(-1).float())
        steps = torch.arange(queries.size(1), device=queries.device, dtype=torch.float32) + first_step
        return torch.minimum(steps.unsqueeze(0), last)

    def forward(
        self, queries: Tensor, keys: Tensor, values: Tensor, key_mask: Tensor, first_step: int = 0
    ) -> tuple[Tensor, Tensor]:
        length = keys.size(1)
        centres = self.centres(queries, key_mask.sum(dim=1), first_step)
        allowed = window_mask(centres, length, self.half_width) & key_mask.unsqueeze(1)
        weights = self.normalize(self.score(queries, keys), allowed).to(values.dtype)
        if self.predictive:
            weights = weights * gaussian_weights(centres, length, sigma=self.half_width / 2).to(weights.dtype)
        return weights @ values, weights


class NoAttention(nn.Module):
    """No attention: an empty context (width 0) and zero weights, so decoders need no special case."""

    independent_queries = True

    def precompute(self, keys: Tensor) -> Tensor:
        return keys

    def forward(
        self, queries: Tensor, keys: Tensor, values: Tensor, key_mask: Tensor, first_step: int = 0
    ) -> tuple[Tensor, Tensor]:
        batch, steps = queries.shape[:2]
        context = values.new_zeros(batch, steps, 0)
        weights = values.new_zeros(batch, steps, values.size(1))
        return context, weights


def build_attention(
    kind: str, query_dim: int, key_dim: int, window: int = 8, local_score: str = "general",
    normalize: str = "softmax",
) -> nn.Module:
    """The RNN attention mechanism named ``kind`` (see the module docstring), its weights from
    the normaliser ``normalize`` (normalizers.py)."""
    match kind:
        case "additive" | "dot" | "general" | "scaled_dot":
            return GlobalAttention(build_score(kind, query_dim, key_dim), normalize)
        case "local_m" | "local_p":
            score = build_score(local_score, query_dim, key_dim)
            return LocalAttention(score, window, query_dim, predictive=kind == "local_p", normalize=normalize)
        case "none":
            return NoAttention()
    raise ValueError(f"unknown RNN attention {kind!r}")


def context_size(kind: str, key_dim: int) -> int:
    """Width of the context vector the mechanism returns (0 for ``none``)."""
    return 0 if kind == "none" else key_dim
