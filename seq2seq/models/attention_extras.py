"""What a Transformer attention may add to its keys, values and scores.

    MemorySlots       N learned key/value pairs that every query may attend to besides the
                      sequence (persistent memory, Sukhbaatar et al. 2019): a place for what
                      is not in the sentence, and for attention with nowhere better to go
    GaussianBias      a learned preference for keys near a predicted centre (Yang et al. 2018)
    LengthProjection  Linformer (Wang et al. 2020): keys and values projected along the
                      sequence to a fixed rank, so attention costs O(n k) instead of O(n^2).
                      The projection mixes every position, so it cannot be causal: encoder only

All take the heads already split: q, k, v [B,heads,S,dh].
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from seq2seq.kernels import Linear
from seq2seq.models.attention_patterns import gaussian_bias


class MemorySlots(nn.Module):
    """N learned keys and values, the same for every sentence, put before the sequence's."""

    def __init__(self, count: int, dim: int, heads: int):
        super().__init__()
        self.count, self.heads = count, heads
        self.keys = nn.Parameter(torch.randn(count, dim) / math.sqrt(dim))
        self.values = nn.Parameter(torch.randn(count, dim) / math.sqrt(dim))

    def split(self, slots: Tensor, batch: int, dtype: torch.dtype) -> Tensor:
        """[N, d] -> [B, heads, N, d/heads]."""
        return slots.to(dtype).view(self.count, self.heads, -1).transpose(0, 1).unsqueeze(0).expand(batch, -1, -1, -1)

    def extend(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        batch = k.size(0)
        return (torch.cat([self.split(self.keys, batch, k.dtype), k], dim=2),
                torch.cat([self.split(self.values, batch, v.dtype), v], dim=2))

    def extend_mask(self, mask: Tensor | None) -> Tensor | None:
        """A mask over the keys (boolean, or an additive float one), the slots always allowed."""
        if mask is None:
            return None
        front = mask.new_ones(*mask.shape[:-1], self.count) if mask.dtype == torch.bool else \
            mask.new_zeros(*mask.shape[:-1], self.count)
        return torch.cat([front, mask], dim=-1)

    def extend_bias(self, bias: Tensor | None) -> Tensor | None:
        if bias is None:
            return None
        return torch.cat([bias.new_zeros(*bias.shape[:-1], self.count), bias], dim=-1)


class GaussianBias(nn.Module):
    """-(j - P_i)^2 / (2 sigma_i^2) for query i and key j (Yang et al. 2018): the centre
    P_i = (L - 1) sigmoid(u_p^T tanh(W q_i)) and the window D_i = L sigmoid(u_d^T tanh(W q_i)),
    sigma_i = D_i / 2, with L each sentence's real length; predicted per head from its query."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.hidden = Linear(head_dim, head_dim, bias=False)
        self.centre = Linear(head_dim, 1, bias=False)
        self.window = Linear(head_dim, 1, bias=False)

    def forward(self, q: Tensor, key_mask: Tensor) -> Tensor:
        """q [B,heads,T,dh], key_mask [B,S] (True on real keys) -> bias [B,heads,T,S], float32."""
        lengths = key_mask.sum(dim=-1).float()[:, None, None]
        hidden = torch.tanh(self.hidden(q))
        centres = (lengths - 1) * torch.sigmoid(self.centre(hidden).squeeze(-1).float())
        sigmas = (lengths * torch.sigmoid(self.window(hidden).squeeze(-1).float()) / 2).clamp(min=0.5)
        return gaussian_bias(centres, sigmas, key_mask.size(-1))


class LengthProjection(nn.Module):
    """Linformer's E and F: [rank, max_length] matrices that project keys and values along the
    sequence. Padding keys are zeroed first, so they add nothing to a projection."""

    def __init__(self, rank: int, max_length: int):
        super().__init__()
        self.keys = nn.Parameter(torch.empty(rank, max_length))
        self.values = nn.Parameter(torch.empty(rank, max_length))
        for matrix in (self.keys, self.values):
            nn.init.xavier_normal_(matrix)

    def forward(self, k: Tensor, v: Tensor, key_mask: Tensor) -> tuple[Tensor, Tensor]:
        """k, v [B,heads,S,dh], key_mask [B,S] -> k, v [B,heads,rank,dh]."""
        length = k.size(2)
        if length > self.keys.size(1):
            raise ValueError(f"a sequence of {length} positions is longer than Linformer's projection "
                             f"({self.keys.size(1)}, model.max_positions)")
        real = key_mask[:, None, :, None].to(k.dtype)
        return (torch.matmul(self.keys[:, :length].to(k.dtype), k * real),
                torch.matmul(self.values[:, :length].to(v.dtype), v * real))
