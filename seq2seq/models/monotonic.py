"""Monotonic attention (Raffel et al. 2017) and its chunkwise form, MoChA (Chiu and Raffel 2018).

The decoder reads the source left to right and never back. At output step i it starts at the
position t_{i-1} where the previous step stopped and, for j = t_{i-1}, t_{i-1} + 1, ..., stops
at j with probability p_ij = sigmoid(energy_ij); it attends to the position where it stops
(and to nothing, from then on, if it runs off the end).

    decoding   hard and online: stop at the first j >= t_{i-1} with p_ij >= 0.5
    training   the expected alignment over every way of stopping, which is differentiable:
               alpha_ij = p_ij sum_{k<=j} alpha_{i-1,k} prod_{l=k}^{j-1} (1 - p_il),
               the products taken in log space (sums of log(1 - p)) so that long sources
               neither underflow nor divide by zero; Gaussian noise on the energies
               (std ``noise``) pushes p towards 0 or 1, so that training sees what decoding does.

MoChA then spreads each stop over a chunk of the ``chunk_size`` positions ending there, with a
softmax over a second score (``chunk_score``): beta_j = sum_{k=j}^{j+w-1} alpha_k *
exp(u_j) / sum_{l=k-w+1}^{k} exp(u_l). chunk_size 1 is plain monotonic attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seq2seq.models.scores import Attended


def expected_alignment(energies: Tensor, mask: Tensor, previous: Tensor) -> Tensor:
    """alpha_i [B,S] from energies [B,S] and alpha_{i-1} [B,S]; padding never stops."""
    p = torch.sigmoid(energies).masked_fill(~mask, 0.0)
    log_keep = F.logsigmoid(-energies).masked_fill(~mask, 0.0)  # log(1 - p), 0 on padding
    before = log_keep.cumsum(dim=-1) - log_keep  # L_j = sum_{l<j} log(1 - p_l)
    # transfer[k, j] = prod_{l=k}^{j-1} (1 - p_l) = exp(L_j - L_k) for k <= j, else 0.
    length = energies.size(-1)
    upper = torch.ones(length, length, dtype=torch.bool, device=energies.device).triu()
    transfer = (before.unsqueeze(-2) - before.unsqueeze(-1)).masked_fill(~upper, float("-inf")).exp()
    with torch.autocast(energies.device.type, enabled=False):  # autocast would round it to 16 bits
        return p * (previous.float().unsqueeze(-2) @ transfer).squeeze(-2)


def hard_alignment(energies: Tensor, mask: Tensor, previous: Tensor) -> Tensor:
    """The decoding rule: one-hot [B,S] at the first real position j >= t_{i-1} (the previous
    one-hot's position) with p >= 0.5, i.e. energy >= 0; all zeros where there is none, or
    where ``previous`` is all zeros (the source was read to its end)."""
    positions = torch.arange(energies.size(-1), device=energies.device)
    start = previous.argmax(dim=-1, keepdim=True)
    reading = previous.sum(dim=-1, keepdim=True) > 0
    stops = (energies >= 0) & mask & (positions >= start) & reading
    first = stops.int().argmax(dim=-1, keepdim=True)  # argmax returns the first maximum
    return torch.zeros_like(previous).scatter_(-1, first, 1.0) * stops.any(dim=-1, keepdim=True)


def chunk_weights(alignment: Tensor, chunk_energies: Tensor, mask: Tensor, chunk_size: int) -> Tensor:
    """MoChA's beta [B,S]: each stop k of ``alignment`` spread by a softmax of
    ``chunk_energies`` over the real positions of [k - chunk_size + 1, k]."""
    length = alignment.size(-1)
    k = torch.arange(length, device=alignment.device)
    offset = k.unsqueeze(1) - k.unsqueeze(0)  # [k, j] = k - j
    in_chunk = (offset >= 0) & (offset < chunk_size)
    # A padded stop k (alpha_k = 0) still gets a non-empty row: its own position.
    allowed = (in_chunk & mask.unsqueeze(-2)) | (offset == 0)
    spread = chunk_energies.float().unsqueeze(-2).masked_fill(~allowed, float("-inf")).softmax(dim=-1)
    with torch.autocast(alignment.device.type, enabled=False):
        return (alignment.float().unsqueeze(-2) @ spread).squeeze(-2)


class MonotonicAttention(nn.Module):
    """Monotonic (chunk_size 1) or chunkwise (MoChA) attention over the source; stateful: the
    state is the previous step's alignment, expected in training and one-hot in decoding."""

    independent_queries = False

    def __init__(self, score: nn.Module, chunk_score: nn.Module | None = None, chunk_size: int = 1,
                 noise: float = 1.0):
        super().__init__()
        self.score = score
        self.chunk_score = chunk_score if chunk_size > 1 else None
        self.chunk_size = chunk_size
        self.noise = noise
        # The learned offset r of the energy (Raffel et al.). It starts at 0, TensorFlow's default:
        # p near 1/2 advances about one position per step, a translation's pace. Raffel et al.
        # start lower (-4) for long memories, where p = 1/2 stops too early.
        self.bias = nn.Parameter(torch.zeros(()))

    def initial_state(self, keys: Tensor, mask: Tensor) -> dict:
        start = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
        start[:, 0] = 1.0  # alpha_0: the reading starts at the first position
        return {"alignment": start}

    def precompute(self, keys: Tensor) -> tuple[Tensor, ...]:
        if self.chunk_score is None:
            return (self.score.precompute(keys),)
        return self.score.precompute(keys), self.chunk_score.precompute(keys)

    def forward(
        self, queries: Tensor, keys: tuple[Tensor, ...], values: Tensor, key_mask: Tensor, first_step: int = 0,
        state: dict | None = None,
    ) -> Attended:
        if queries.size(1) != 1:
            raise ValueError("monotonic attention runs one decoder step at a time")
        energies = self.score(queries, keys[0]).squeeze(1).float() + self.bias
        previous = state["alignment"]
        if self.training:
            if self.noise > 0:
                energies = energies + self.noise * torch.randn_like(energies)
            alignment = expected_alignment(energies, key_mask, previous)
        else:
            alignment = hard_alignment(energies, key_mask, previous)
        weights = alignment
        if self.chunk_score is not None:
            chunk_energies = self.chunk_score(queries, keys[1]).squeeze(1)
            weights = chunk_weights(alignment, chunk_energies, key_mask, self.chunk_size)
        weights = weights.unsqueeze(1).to(values.dtype)
        return Attended(weights @ values, weights, {"alignment": alignment})
