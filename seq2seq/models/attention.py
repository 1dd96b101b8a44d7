"""Attention mechanisms for RNN decoders.

Every mechanism answers the same question: given decoder queries and the encoder's outputs,
how much should each source position count, and what is the weighted sum (the context)?

    forward(queries [B,T,Dq], keys, values [B,S,Dv], key_mask [B,S], first_step, state)
        -> Attended(context [B,T,Dv], weights [B,T,S], state, log_probs)   (scores.py)

``T`` is 1 when the decoder runs step by step, and the whole target length when a Luong
decoder without input feeding attends for all steps at once (stateless mechanisms only).
``keys`` is what ``precompute(encoder_outputs)`` returned: a projection of the keys that
does not depend on the query (W_k k for additive, W k for general) is computed once per
sentence, not once per decoder step. ``key_mask`` is True on real source tokens; padding
always gets exactly zero weight. ``first_step`` is the decoder position of the first query
(local_m centres on it). ``state`` is what the previous step returned (``initial_state`` at
the first): the decoder keeps it in its own state, batch on dim 0, so beam search reorders it.

Mechanisms (``build_attention`` picks one; scores in scores.py):
    additive, dot, general, scaled_dot   global: every real source position is scored
    local_m     Luong et al. 2015: only the window [t - D, t + D] around the decoder step t
    local_p     Luong: a predicted window centre p_t, weights scaled by a Gaussian around it
    hard        one position per step, drawn or argmax (hard_attention.py)
    monotonic   left to right, never back; chunkwise with chunk_size > 1 (monotonic.py)
    gmm         K Gaussians whose means only move forward (gmm_attention.py)
    none        no attention: an empty context, all-zero weights
Coverage (Tu et al. 2016) adds the attention each position has received so far to the
additive score; its state is that running sum.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from seq2seq.kernels import Linear
from seq2seq.models.gmm_attention import GMMAttention
from seq2seq.models.hard_attention import HardAttention
from seq2seq.models.monotonic import MonotonicAttention
from seq2seq.models.normalizers import normalizer
from seq2seq.models.scores import Attended, build_score

STATELESS: dict = {}  # the state of a mechanism that carries nothing from step to step


def window_mask(centres: Tensor, length: int, half_width: int) -> Tensor:
    """True where source position s lies in [centre - D, centre + D]: [...] -> [..., length]."""
    positions = torch.arange(length, device=centres.device, dtype=centres.dtype)
    return (positions - centres.unsqueeze(-1)).abs() <= half_width


def gaussian_weights(centres: Tensor, length: int, sigma: float) -> Tensor:
    """exp(-(s - centre)^2 / (2 sigma^2)) for every source position s: [...] -> [..., length]."""
    positions = torch.arange(length, device=centres.device, dtype=centres.dtype)
    distance = positions - centres.unsqueeze(-1)
    return torch.exp(-distance.square() / (2 * sigma**2))


# ------------------------------------------------------------------ attention modules


class GlobalAttention(nn.Module):
    """Attend over every real source position (additive, dot, general, scaled_dot), with
    coverage optionally: the additive score also reads how much attention each position has
    received so far, a running sum kept in the state."""

    def __init__(self, score: nn.Module, normalize: str = "softmax", coverage: bool = False):
        super().__init__()
        self.score = score
        self.normalize = normalizer(normalize)
        self.coverage = coverage
        # Any queries [B,T,...] may share a memory row (beam search), unless each reads its own
        # row's coverage.
        self.independent_queries = not coverage

    def initial_state(self, keys: Tensor, mask: Tensor) -> dict:
        if not self.coverage:
            return STATELESS
        return {"coverage": torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)}

    def precompute(self, keys: Tensor) -> Tensor:
        return self.score.precompute(keys)

    def forward(
        self, queries: Tensor, keys: Tensor, values: Tensor, key_mask: Tensor, first_step: int = 0,
        state: dict | None = None,
    ) -> Attended:
        if not self.coverage:
            weights = self.normalize(self.score(queries, keys), key_mask.unsqueeze(1)).to(values.dtype)
            return Attended(weights @ values, weights, STATELESS)
        if queries.size(1) != 1:
            raise ValueError("coverage attention runs one decoder step at a time")
        coverage = state["coverage"]
        weights = self.normalize(self.score(queries, keys, coverage), key_mask.unsqueeze(1))
        new_state = {"coverage": coverage + weights.squeeze(1).float()}
        weights = weights.to(values.dtype)
        return Attended(weights @ values, weights, new_state)


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

    def initial_state(self, keys: Tensor, mask: Tensor) -> dict:
        return STATELESS

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
        self, queries: Tensor, keys: Tensor, values: Tensor, key_mask: Tensor, first_step: int = 0,
        state: dict | None = None,
    ) -> Attended:
        length = keys.size(1)
        centres = self.centres(queries, key_mask.sum(dim=1), first_step)
        allowed = window_mask(centres, length, self.half_width) & key_mask.unsqueeze(1)
        weights = self.normalize(self.score(queries, keys), allowed).to(values.dtype)
        if self.predictive:
            weights = weights * gaussian_weights(centres, length, sigma=self.half_width / 2).to(weights.dtype)
        return Attended(weights @ values, weights, STATELESS)


class NoAttention(nn.Module):
    """No attention: an empty context (width 0) and zero weights, so decoders need no special case."""

    independent_queries = True

    def initial_state(self, keys: Tensor, mask: Tensor) -> dict:
        return STATELESS

    def precompute(self, keys: Tensor) -> Tensor:
        return keys

    def forward(
        self, queries: Tensor, keys: Tensor, values: Tensor, key_mask: Tensor, first_step: int = 0,
        state: dict | None = None,
    ) -> Attended:
        batch, steps = queries.shape[:2]
        context = values.new_zeros(batch, steps, 0)
        weights = values.new_zeros(batch, steps, values.size(1))
        return Attended(context, weights, STATELESS)


def build_attention(cfg, query_dim: int, key_dim: int) -> nn.Module:
    """The RNN attention mechanism of the model section ``cfg`` (see the module docstring):
    cfg.attention, its score functions (cfg.local_score for the mechanisms that are not a
    score themselves), cfg.attention_normalizer, cfg.coverage and the mechanisms' own keys."""
    score = lambda kind, coverage=False: build_score(kind, query_dim, key_dim, coverage)  # noqa: E731
    match cfg.attention:
        case "additive" | "dot" | "general" | "scaled_dot":
            return GlobalAttention(score(cfg.attention, cfg.coverage), cfg.attention_normalizer, cfg.coverage)
        case "local_m" | "local_p":
            return LocalAttention(score(cfg.local_score), cfg.window, query_dim, predictive=cfg.attention == "local_p",
                                  normalize=cfg.attention_normalizer)
        case "hard":
            return HardAttention(score(cfg.local_score), cfg.hard_attention, cfg.gumbel_temperature)
        case "monotonic":
            chunk_score = score(cfg.local_score) if cfg.chunk_size > 1 else None
            return MonotonicAttention(score(cfg.local_score), chunk_score, cfg.chunk_size)
        case "gmm":
            return GMMAttention(query_dim, cfg.gmm_components)
        case "none":
            return NoAttention()
    raise ValueError(f"unknown RNN attention {cfg.attention!r}")


def context_size(kind: str, key_dim: int) -> int:
    """Width of the context vector the mechanism returns (0 for ``none``)."""
    return 0 if kind == "none" else key_dim
