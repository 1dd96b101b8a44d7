"""Which keys each query of a Transformer may attend to, and a Gaussian bias on top.

Sparse attention (``model.attention: sparse``) lets each query attend to a few keys only:

    window   |i - j| <= w: the sliding window of Longformer (Beltagy et al. 2020)
    global   the first g positions attend to every key and every query attends to them
             (Longformer's global tokens; BigBird's "global" part, Zaheer et al. 2020)
    random   in the encoder, each query block of w positions also attends to r random key
             blocks of w positions (BigBird's random part)

The decoder's self-attention is causal: the window and global tokens, both cut at j <= i;
random blocks would let later positions decide which earlier ones are read, so it has none.

The random blocks of a sentence depend only on its real length and the seed, not on the
padded width of its batch, so padding a sentence never changes what it attends to.

Gaussian localness (Yang et al. 2018) adds -(j - P_i)^2 / (2 sigma_i^2) to the scores of
query i: a learned preference for keys near a predicted centre P_i.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor


def sparse_pattern(num_queries: int, num_keys: int, window: int, global_tokens: int, causal: bool,
                   query_offset: int = 0, device: torch.device | None = None) -> Tensor:
    """[T,S] True where query i (at position query_offset + i) may attend to key j: the window
    and the global tokens, causal if asked."""
    queries = torch.arange(num_queries, device=device).unsqueeze(1) + query_offset
    keys = torch.arange(num_keys, device=device)
    allowed = ((queries - keys).abs() <= window) | (keys < global_tokens) | (queries < global_tokens)
    if causal:
        allowed &= keys <= queries
    return allowed


@functools.lru_cache(maxsize=4096)
def random_block_indices(length: int, block: int, count: int, seed: int) -> Tensor:
    """[blocks, min(count, blocks)]: BigBird's random key blocks (of ``block`` positions) for
    each query block of a sentence of ``length`` real tokens, the same for every sentence of
    that length and seed."""
    blocks = -(-length // block)
    drawn = [torch.randperm(blocks, generator=torch.Generator().manual_seed(
        seed * 1_000_003 + length * 1009 + query_block))[:count] for query_block in range(blocks)]
    return torch.stack(drawn) if drawn else torch.zeros(0, 0, dtype=torch.long)


@functools.lru_cache(maxsize=4096)
def random_blocks(length: int, block: int, count: int, seed: int) -> Tensor:
    """[L,L] True where a query of a sentence of ``length`` real tokens attends by BigBird's
    random part (random_block_indices)."""
    allowed = torch.zeros(length, length, dtype=torch.bool)
    for query_block, key_blocks in enumerate(random_block_indices(length, block, count, seed).tolist()):
        for key_block in key_blocks:
            allowed[query_block * block:(query_block + 1) * block, key_block * block:(key_block + 1) * block] = True
    return allowed


def encoder_sparse_mask(src_mask: Tensor, window: int, global_tokens: int, random_count: int,
                        seed: int = 0) -> Tensor:
    """The encoder's self-attention mask [B,1,S,S] for ``src_mask`` [B,S] (True on real tokens):
    window, global tokens and random blocks over each sentence's real tokens. Every position may
    see itself, so that no row (a padding position's) is empty."""
    batch, width = src_mask.shape
    device = src_mask.device
    allowed = sparse_pattern(width, width, window, global_tokens, causal=False, device=device)
    allowed = allowed & src_mask[:, None, :]  # [B,S,S]
    if random_count > 0:
        lengths = src_mask.sum(dim=1).tolist()
        extra = torch.zeros(batch, width, width, dtype=torch.bool)
        for row, length in enumerate(lengths):
            extra[row, :length, :length] = random_blocks(length, max(1, window), random_count, seed)
        allowed = allowed | extra.to(device)
    return (allowed | torch.eye(width, dtype=torch.bool, device=device)).unsqueeze(1)


def gaussian_bias(centres: Tensor, sigmas: Tensor, num_keys: int) -> Tensor:
    """-(j - P_i)^2 / (2 sigma_i^2) for every key j: centres, sigmas [...,T] -> [...,T,S]."""
    keys = torch.arange(num_keys, device=centres.device, dtype=torch.float32)
    distance = keys - centres.float().unsqueeze(-1)
    return -distance.square() / (2 * sigmas.float().unsqueeze(-1).square())
