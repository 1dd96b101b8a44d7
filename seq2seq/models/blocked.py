"""Sliding-window and sparse encoder self-attention computed block by block: linear in length.

A window written as a dense [S,S] mask still costs the whole score matrix, so a long input is
as dear with ``model.attention: local`` or ``sparse`` as with full attention. Here (as in
Longformer's "sliding chunks" and BigBird's blocked form) the sequence is cut into blocks of
b = max(1, window) positions, and the queries of block t score only:

    band     the keys of blocks t-1, t, t+1 (3b keys), of which |i - j| <= window are kept:
             they hold every key of the window, since window <= b
    global   the first g keys (global tokens), kept where the band does not have them already
    random   the key blocks of BigBird's random part (attention_patterns.random_block_indices),
             kept where neither the band nor the global keys have them

so each query scores 3b + g + r*b keys whatever the length. One softmax (or sparse normaliser)
runs over the three segments together, so the result is the dense mask's
(attention_patterns.encoder_sparse_mask), to rounding: every allowed key counted once, padding
never, and every position may see itself. The g global queries attend to every key; their
rows are computed apart, densely (g rows of S).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from seq2seq.kernels import dropout as fast_dropout
from seq2seq.models.attention_patterns import random_block_indices


@dataclass(frozen=True, eq=False)  # tensors: no field-wise == or hash
class BlockPattern:
    """The keys every query block may score, for one batch: built once, used by every layer.

    key_mask [B,S] (True on real tokens); random_keys [B,n,R] the positions of the random key
    blocks of each query block, and random_allowed [B,n,b,R] which of them its queries keep
    (R = 0 without random blocks)."""

    key_mask: Tensor
    window: int
    global_tokens: int
    random_keys: Tensor
    random_allowed: Tensor

    @property
    def block(self) -> int:
        return max(1, self.window)


def keys_per_query(window: int, global_tokens: int, random_count: int) -> int:
    """How many keys each query block's queries score."""
    block = max(1, window)
    return 3 * block + global_tokens + random_count * block


def blocked_pays(length: int, window: int, global_tokens: int, random_count: int) -> bool:
    """Whether the blocked form is worth its gathers: past twice the keys it scores per query
    (below that the dense mask, whose product the fused kernels compute, costs about as much)."""
    return length > 2 * keys_per_query(window, global_tokens, random_count)


def block_pattern(src_mask: Tensor, window: int, global_tokens: int = 0, random_count: int = 0,
                  seed: int = 0) -> BlockPattern:
    """The BlockPattern of a batch whose real tokens are ``src_mask`` [B,S] (True on real)."""
    batch, width = src_mask.shape
    block = max(1, window)
    blocks = -(-width // block)
    count = random_count * block
    keys = torch.zeros(batch, blocks, count, dtype=torch.long)
    allowed = torch.zeros(batch, blocks, block, count, dtype=torch.bool)
    if random_count > 0:
        queries = (torch.arange(blocks)[:, None] * block + torch.arange(block)).unsqueeze(-1)  # [n,b,1]
        for row, length in enumerate(src_mask.sum(dim=1).tolist()):
            drawn = random_block_indices(length, block, random_count, seed)  # [blocks of the sentence, <= r]
            mine, taken = drawn.shape
            positions = (drawn.unsqueeze(-1) * block + torch.arange(block)).flatten(1)  # [mine, taken*b]
            keys[row, :mine, :taken * block] = positions.clamp(max=width - 1)
            kept = ((positions[:, None, :] < length) & (queries[:mine] < length)
                    & (positions[:, None, :] >= global_tokens)
                    & ((queries[:mine] - positions[:, None, :]).abs() > window))
            allowed[row, :mine, :, :taken * block] = kept
    device = src_mask.device
    return BlockPattern(src_mask, window, global_tokens, keys.to(device), allowed.to(device))


def _blocks(x: Tensor, block: int, blocks: int, features: bool = True) -> Tensor:
    """For each block t, positions (t-1)b .. (t+2)b - 1 (zero or False outside the sequence):
    [B,h,S,d] -> [B,h,n,3b,d], or without ``features`` [B,S] -> [B,n,3b]. A view of a padded copy."""
    axis = -2 if features else -1
    pad = [block, blocks * block - x.size(axis) + block]
    padded = F.pad(x, [0, 0] + pad if features else pad)
    windows = padded.unfold(axis, 3 * block, block)  # the window axis comes last
    return windows.movedim(-1, -2) if features else windows


def blocked_attention(q: Tensor, k: Tensor, v: Tensor, pattern: BlockPattern, dropout: float,
                      normalize: Callable[[Tensor, Tensor], Tensor] | None = None) -> Tensor:
    """Self-attention of q, k, v [B,h,S,d] restricted to ``pattern``: -> [B,h,S,d]."""
    batch, heads, width, dim = q.shape
    block, window = pattern.block, pattern.window
    g = min(pattern.global_tokens, width)
    blocks = -(-width // block)
    scale = 1.0 / math.sqrt(dim)
    q_padded = F.pad(q, (0, 0, 0, blocks * block - width))
    q_blocks = q_padded.view(batch, heads, blocks, block, dim)
    k_band, v_band = _blocks(k, block, blocks), _blocks(v, block, blocks)  # [B,h,n,3b,d]

    # Query a of a block against key c of its three blocks: c - b is the key's offset from the
    # block's start, so a + b - c is the query's distance from the key.
    distance = torch.arange(block, device=q.device)[:, None] + block - torch.arange(3 * block, device=q.device)
    real = _blocks(pattern.key_mask, block, blocks, features=False)  # [B,n,3b]
    allowed = [((distance.abs() <= window) & real[:, :, None, :]) | (distance == 0)]  # each sees itself
    scores = [q_blocks @ k_band.transpose(-1, -2)]
    if g:
        positions = torch.arange(blocks * block, device=q.device).view(blocks, block, 1)
        outside = (positions - torch.arange(g, device=q.device)).abs() > window  # [n,b,g]
        allowed.append(outside & pattern.key_mask[:, None, None, :g])
        scores.append((q_padded @ k[:, :, :g].transpose(-1, -2)).view(batch, heads, blocks, block, g))
    if pattern.random_keys.size(-1):
        index = pattern.random_keys.view(batch, 1, -1, 1).expand(-1, heads, -1, dim)
        k_random, v_random = (x.gather(2, index).view(batch, heads, blocks, -1, dim) for x in (k, v))
        allowed.append(pattern.random_allowed)
        scores.append(q_blocks @ k_random.transpose(-1, -2))
    sizes = [part.size(-1) for part in scores]
    scores = torch.cat(scores, dim=-1).mul_(scale)
    mask = torch.cat([a.expand(batch, blocks, block, -1) for a in allowed], dim=-1).unsqueeze(1)
    weights = _normalise(scores.flatten(2, 3), mask.flatten(2, 3), normalize).view_as(scores)
    weights = fast_dropout(weights.to(v.dtype), dropout).split(sizes, dim=-1)
    out = weights[0] @ v_band
    if g:
        out = out + (weights[1].flatten(2, 3) @ v[:, :, :g]).view_as(out)
    if pattern.random_keys.size(-1):
        out = out + weights[-1] @ v_random
    out = out.view(batch, heads, blocks * block, dim)[:, :, :width]
    if g:  # the global queries see every key
        row_mask = pattern.key_mask[:, None, None, :] | (
            torch.arange(g, device=q.device)[:, None] == torch.arange(width, device=q.device))
        row_scores = (q[:, :, :g] @ k.transpose(-1, -2)).mul_(scale)
        row_weights = fast_dropout(_normalise(row_scores, row_mask, normalize).to(v.dtype), dropout)
        out = torch.cat([row_weights @ v, out[:, :, g:]], dim=2)
    return out


def _normalise(scores: Tensor, allowed: Tensor, normalize: Callable[[Tensor, Tensor], Tensor] | None) -> Tensor:
    """Softmax over the allowed keys, or ``normalize`` (normalizers.py) where a sparse one is asked
    for; in float32, as SDPA normalises (a bf16 model's scores are bf16)."""
    if normalize is not None:
        return normalize(scores, allowed)
    return scores.float().masked_fill(~allowed, float("-inf")).softmax(dim=-1)
