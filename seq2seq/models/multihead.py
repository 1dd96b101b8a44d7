"""Multi-head attention for the Transformer: masks, the attention itself (SDPA, or explicit
weights where they are wanted), self-attention with its key/value cache for step-by-step
decoding, and cross-attention over the encoder's output.

Masks are boolean, True = may attend. SDPA does not return its weights, so
``attention_with_weights`` computes them explicitly for the layer whose weights are plotted.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seq2seq.data.special import PAD_ID
from seq2seq.kernels import Linear
from seq2seq.kernels import dropout as fast_dropout
from seq2seq.models.attention_extras import GaussianBias, LengthProjection, MemorySlots
from seq2seq.models.blocked import BlockPattern, blocked_attention
from seq2seq.models.normalizers import normalizer
from seq2seq.models.performer import (attend_summary, causal_linear_attention, feature_map, feature_weights,
                                      key_features, orthogonal_features, recurrent_step, summarise_keys)

def padding_mask(tokens: Tensor) -> Tensor:
    """True on real tokens: [B,S] -> [B,S]."""
    return tokens != PAD_ID


def band_mask(
    num_queries: int,
    num_keys: int,
    half_width: int | None,
    causal: bool,
    query_offset: int = 0,
    device: torch.device | None = None,
) -> Tensor:
    """[T,S] True where query i, at position query_offset + i, may attend to key j.

    Allowed: |i - j| <= half_width (None: any distance) and, when causal, j <= i.
    """
    queries = torch.arange(num_queries, device=device).unsqueeze(1) + query_offset
    keys = torch.arange(num_keys, device=device)
    allowed = torch.ones(num_queries, num_keys, dtype=torch.bool, device=device)
    if half_width is not None:
        allowed = (queries - keys).abs() <= half_width
    if causal:
        allowed = allowed & (keys <= queries)
    return allowed


def causal_mask(length: int, device: torch.device | None = None) -> Tensor:
    """[T,T] True where j <= i: a decoder position sees itself and the past."""
    return band_mask(length, length, None, causal=True, device=device)


def encoder_self_mask(src_mask: Tensor, half_width: int | None) -> Tensor:
    """Encoder self-attention mask, [B,1,1,S] (full) or [B,1,S,S] (sliding window)."""
    keys = src_mask[:, None, None, :]
    if half_width is None:
        return keys  # every row keeps EOS, so no row is fully masked
    length = src_mask.size(1)
    band = band_mask(length, length, half_width, causal=False, device=src_mask.device)
    # A padding position far past the end sees only padding inside its band. A fully masked
    # row makes SDPA return NaN, which later layers would spread (0 * NaN = NaN), so every
    # position may always see itself. Real positions are unaffected: they are real keys.
    itself = torch.eye(length, dtype=torch.bool, device=src_mask.device)
    return (band & keys) | itself


def split_heads(x: Tensor, heads: int) -> Tensor:
    """[B,T,d] -> [B,heads,T,d/heads]."""
    batch, length, dim = x.shape
    return x.view(batch, length, heads, dim // heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """[B,heads,T,d/heads] -> [B,T,d]."""
    batch, heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * head_dim)


# Up to this many queries (decoding: one per row, or a sentence's beams), without autograd,
# plain matmul + softmax beats SDPA's fused CPU kernel, which is made for long sequences.
_FEW_QUERIES = 16


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout: float, is_causal: bool = False) -> Tensor:
    """``F.scaled_dot_product_attention``; ``mask`` is boolean (True = may attend) or an
    additive float bias (0 / -inf).

    On the CPU two cases run here instead: attention dropout (SDPA then falls back to its
    unfused math path, whose dropout draws a Bernoulli number per weight; this is the same
    math with the fast noise of ``fastops``), and decoding (see _FEW_QUERIES)."""
    if q.device.type == "cpu":
        if dropout > 0.0:
            return attention_with_weights(q, k, v, mask, dropout, is_causal)[0]
        if q.size(-2) <= _FEW_QUERIES and not (q.requires_grad or k.requires_grad or v.requires_grad):
            return attention_with_weights(q, k, v, mask, 0.0, is_causal)[0]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal)


def attention_with_weights(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout: float, is_causal: bool = False,
    normalize: Callable[[Tensor, Tensor], Tensor] | None = None, bias: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """What SDPA computes, but also returning the weights [B,heads,T,S] (before dropout); with
    ``bias`` added to the scores, and weights from ``normalize`` (normalizers.py, in float32)
    instead of the softmax if given."""
    scores = torch.matmul(q, k.transpose(-2, -1)).mul_(1.0 / math.sqrt(q.size(-1)))
    if bias is not None:
        scores = scores + bias.to(scores.dtype)
    if is_causal:
        mask = band_mask(q.size(-2), k.size(-2), None, causal=True, device=q.device)
    if normalize is not None:
        allowed = torch.ones((), dtype=torch.bool, device=q.device) if mask is None else (
            mask if mask.dtype == torch.bool else mask == 0)
        weights = normalize(scores, allowed).to(v.dtype)
    else:
        if mask is not None:
            # In place: the matmul's backward needs neither its output nor the scores.
            scores = scores.masked_fill_(~mask, float("-inf")) if mask.dtype == torch.bool else scores.add_(mask)
        weights = scores.softmax(dim=-1)
    return torch.matmul(fast_dropout(weights, dropout), v), weights


def additive_mask(mask: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Boolean mask (True = may attend) -> float bias, 0 where allowed and -inf elsewhere."""
    return torch.zeros(mask.shape, device=mask.device, dtype=dtype).masked_fill_(~mask, float("-inf"))


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused QKV projection; optional cached past keys.

    Options (attention_extras.py): weights from a sparse ``normalize``r instead of the softmax,
    ``slots`` memory slots, a Gaussian bias (``gaussian``), Linformer's projection of the keys
    and values to ``linformer_rank`` (up to ``max_length`` positions; no cache then).
    """

    def __init__(self, dim: int, heads: int, dropout: float, normalize: str = "softmax", slots: int = 0,
                 gaussian: bool = False, linformer_rank: int | None = None, max_length: int = 1024,
                 performer_features: int | None = None):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = Linear(dim, 3 * dim)
        self.out = Linear(dim, dim)
        self.normalize = None if normalize == "softmax" else normalizer(normalize, (heads, 1, 1))
        self.slots = MemorySlots(slots, dim, heads) if slots else None
        self.gaussian = GaussianBias(dim // heads) if gaussian else None
        self.projection = LengthProjection(linformer_rank, max_length) if linformer_rank else None
        self.performer = PerformerFeatures(performer_features, dim // heads) if performer_features else None

    def forward(
        self, x: Tensor, mask: Tensor | BlockPattern | None, cache: KVCache | None = None, is_causal: bool = False,
        key_mask: Tensor | None = None,
    ) -> tuple[Tensor, KVCache | None]:
        """x [B,T,d] -> output [B,T,d]; with a cache (one new position), the cache grown by it.
        ``key_mask`` [B,S] (True on real tokens) for the Gaussian bias and Linformer. A
        BlockPattern for ``mask`` computes a window (and sparse's extras) block by block."""
        q, k, v = (split_heads(part, self.heads) for part in self.qkv(x).chunk(3, dim=-1))
        if self.performer is not None:
            return self._performer(x, q, k, v, cache, is_causal, key_mask)
        if isinstance(mask, BlockPattern):
            out = blocked_attention(q, k, v, mask, self.dropout if self.training else 0.0, self.normalize)
            return self.out(merge_heads(out.to(x.dtype))), cache
        if cache is not None:
            cache = cache.append(k, v)
            k, v = cache.keys_values()
        bias = self.gaussian(q, key_mask) if self.gaussian is not None else None
        if self.projection is not None:
            k, v = self.projection(k, v, key_mask)
            mask = None  # every projected key mixes real positions only
        if self.slots is not None:
            k, v = self.slots.extend(k, v)
            mask, bias = self.slots.extend_mask(mask), self.slots.extend_bias(bias)
        dropout = self.dropout if self.training else 0.0
        if self.normalize is None and bias is None:
            out = attend(q.to(k.dtype), k, v, mask, dropout, is_causal=is_causal)
        else:
            out = attention_with_weights(q.to(k.dtype), k, v, mask, dropout, is_causal, self.normalize, bias)[0]
        return self.out(merge_heads(out.to(x.dtype))), cache

    def _performer(self, x: Tensor, q: Tensor, k: Tensor, v: Tensor, cache: FeatureState | None, is_causal: bool,
                   key_mask: Tensor | None) -> tuple[Tensor, FeatureState | None]:
        """FAVOR+ (performer.py): over every real key in an encoder, over the past by prefix sums
        in a decoder's full pass, and by its recurrent state one step at a time."""
        q_features = self.performer(q, is_query=True)
        if cache is not None:
            out, state = recurrent_step(q_features, self.performer(k), v, cache.state)
            cache = FeatureState(state)
        elif is_causal:
            out = causal_linear_attention(q_features, self.performer(k), v)
        else:
            if self.slots is not None:
                k, v = self.slots.extend(k, v)
                key_mask = None if key_mask is None else self.slots.extend_mask(key_mask)
            out = attend_summary(q_features, *self.performer.summary(k, v, key_mask))
        return self.out(merge_heads(out.to(x.dtype))), cache


class PerformerFeatures(nn.Module):
    """FAVOR+'s random features of one attention, drawn once (from torch's generator, which
    train.seed seeds) and saved with the model, so that decoding uses the ones trained with."""

    def __init__(self, count: int, head_dim: int):
        super().__init__()
        generator = torch.Generator().manual_seed(int(torch.randint(2**62, ())))
        self.register_buffer("features", orthogonal_features(count, head_dim, generator))

    def forward(self, x: Tensor, is_query: bool = False) -> Tensor:
        return feature_map(x, self.features, is_query)

    def keys(self, k: Tensor, key_mask: Tensor | None) -> Tensor:
        """The features of keys known all at once (performer.key_features)."""
        return key_features(k, self.features, key_mask)

    def summary(self, k: Tensor, v: Tensor, key_mask: Tensor) -> tuple[Tensor, Tensor]:
        """What attention over a fixed memory needs of it: (kv, k_sum), computed once."""
        return summarise_keys(self.keys(k, key_mask), v, key_mask)


class FeatureState:
    """A Performer decoder layer's recurrent state (performer.recurrent_step) where a softmax
    layer keeps its KVCache; None before the first position."""

    __slots__ = ("state",)

    def __init__(self, state: dict[str, Tensor] | None = None):
        self.state = state

    def reorder_rows(self, indices: Tensor, moved: Tensor | None = None) -> FeatureState:
        if self.state is None:
            return self
        return FeatureState({key: value.index_select(0, indices) for key, value in self.state.items()})


class KVCache:
    """One decoder layer's self-attention keys/values for the positions decoded so far.

    Buffers [B, heads, capacity, d/heads] filled up to ``length``: appending a position
    writes into the buffer (doubling it when full) instead of concatenating the whole past
    at every step. ``append`` returns a new cache object over the same buffers, and so may
    ``reorder_rows``, which copies only the rows that change when they are few (beam search,
    whose beams mostly stay in their rows). So a state must be stepped from or reordered only
    once, as every search does.
    """

    __slots__ = ("keys", "values", "length")

    def __init__(self, keys: Tensor, values: Tensor, length: int):
        self.keys, self.values, self.length = keys, values, length

    @classmethod
    def empty(cls, batch: int, heads: int, head_dim: int, like: Tensor, capacity: int = 16) -> KVCache:
        # On the CPU a bf16 cache would cost more than it saves: the bf16 batched matmul
        # copies the cache's strided view to a contiguous one at every step. So a bf16 model
        # keeps a float32 cache, and SelfAttention casts its query to the cache's dtype.
        dtype = torch.float32 if like.device.type == "cpu" and like.dtype == torch.bfloat16 else like.dtype
        buffer = like.new_empty(batch, heads, capacity, head_dim, dtype=dtype)
        return cls(buffer, torch.empty_like(buffer), 0)

    def append(self, k: Tensor, v: Tensor) -> KVCache:
        """k, v [B, heads, n, d/heads] -> a cache with n more positions."""
        keys, values, length = self.keys, self.values, self.length
        end = length + k.size(2)
        if end > keys.size(2):
            capacity = max(2 * keys.size(2), end)
            grown = [t.new_empty(t.size(0), t.size(1), capacity, t.size(3)) for t in (keys, values)]
            for new, old in zip(grown, (keys, values)):
                new[:, :, :length] = old[:, :, :length]
            keys, values = grown
        keys[:, :, length:end] = k
        values[:, :, length:end] = v
        return KVCache(keys, values, end)

    def keys_values(self) -> tuple[Tensor, Tensor]:
        """Views [B, heads, length, d/heads] of the filled part."""
        return self.keys[:, :, : self.length], self.values[:, :, : self.length]

    def reorder_rows(self, indices: Tensor, moved: Tensor | None = None) -> KVCache:
        """The cache of rows ``indices``; ``moved`` is ``moved_rows(indices)`` if the caller has
        it already (every layer's cache moves the same rows)."""
        rows = indices.numel()
        if rows <= self.keys.size(0):
            # Beam search keeps most beams in their own row (search_helpers.keep_parents_in_place), so
            # only the rows that changed are copied, within the same buffers. That reads and
            # writes them twice (through a temporary), so it pays up to half the rows.
            if moved is None:
                moved = moved_rows(indices)
            if 2 * moved.numel() <= rows:
                for buffer in (self.keys, self.values):
                    filled = buffer[:, :, : self.length]
                    filled.index_copy_(0, moved, filled.index_select(0, indices[moved]))
                return KVCache(self.keys[:rows], self.values[:rows], self.length)
        # New buffers of the same capacity, so there is room to append, but only the filled
        # part is copied (up to half a buffer is empty).
        copies = []
        for buffer in (self.keys, self.values):
            new = buffer.new_empty(rows, *buffer.shape[1:])
            torch.index_select(buffer[:, :, : self.length], 0, indices, out=new[:, :, : self.length])
            copies.append(new)
        return KVCache(*copies, self.length)


def moved_rows(indices: Tensor) -> Tensor:
    """The rows i where ``indices[i] != i``: those a reorder by ``indices`` changes. (Their
    number decides how a cache is reordered: on a GPU, a wait for the device.)"""
    return (indices != torch.arange(indices.numel(), device=indices.device)).nonzero().squeeze(1)


class CrossAttention(nn.Module):
    """Multi-head attention from decoder positions to the encoder output (the memory)."""

    def __init__(self, dim: int, heads: int, dropout: float, normalize: str = "softmax", slots: int = 0,
                 performer_features: int | None = None):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.query = Linear(dim, dim)
        self.key_value = Linear(dim, 2 * dim)
        self.out = Linear(dim, dim)
        self.normalize = None if normalize == "softmax" else normalizer(normalize, (heads, 1, 1))
        self.slots = MemorySlots(slots, dim, heads) if slots else None
        self.performer = PerformerFeatures(performer_features, dim // heads) if performer_features else None

    def memory_keys_values(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Project the memory once per sentence: [B,S,d] -> keys, values [B,heads,S,d/heads]
        (memory slots first, when the model has them: they enter a decoder's state once)."""
        k, v = self.key_value(memory).chunk(2, dim=-1)
        k, v = split_heads(k, self.heads), split_heads(v, self.heads)
        return (k, v) if self.slots is None else self.slots.extend(k, v)

    def memory_mask(self, mask: Tensor) -> Tensor:
        """The mask over what ``memory_keys_values`` returns, from the one over the source."""
        return mask if self.slots is None else self.slots.extend_mask(mask)

    def forward(
        self, x: Tensor, keys: Tensor, values: Tensor, mask: Tensor, need_weights: bool = False,
        group: int = 1, summary: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """x [B,T,d] -> output [B,T,d], and weights [B,heads,T,S] when need_weights. ``summary``:
        Performer's summary of the memory (PerformerFeatures.summary), where a state keeps it.

        ``group`` > 1 (decoding, T = 1): keys, values and mask have one entry per group of
        ``group`` consecutive rows of x (a sentence's beams); the group's rows attend as that
        many queries of their one entry, so the memory is never copied per row.
        """
        batch, length, dim = x.shape
        if group > 1:
            x = x.reshape(batch // group, group * length, dim)
        q = split_heads(self.query(x), self.heads)
        dropout = self.dropout if self.training else 0.0
        if self.performer is not None:
            out, weights = self._performer(q, keys, values, mask, need_weights, summary)
        elif need_weights or self.normalize is not None:
            out, weights = attention_with_weights(q, keys, values, mask, dropout, normalize=self.normalize)
            if self.slots is not None:  # what is shown is the attention on the source
                weights = weights[..., self.slots.count:]
            weights = weights if need_weights else None
        else:
            out = attend(q, keys, values, mask, dropout)
            weights = None
        out = merge_heads(out.to(x.dtype))
        if group > 1:
            out = out.reshape(batch, length, dim)
            if weights is not None:  # [B/g, heads, g, S] -> [B, heads, 1, S]
                weights = weights.transpose(1, 2).reshape(batch, length, self.heads, -1).transpose(1, 2)
        return self.out(out), weights

    def _performer(self, q: Tensor, keys: Tensor, values: Tensor, mask: Tensor, need_weights: bool,
                   summary: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor | None]:
        """FAVOR+ over the memory: its summary (linear in its length; a decoder's state holds it,
        computed once per sentence), or, to show the weights, the matrix phi(Q) phi(K)^T that the
        summary stands for, normalised (in float32 too)."""
        real = (mask if mask.dtype == torch.bool else mask == 0).expand(-1, -1, -1, keys.size(2))
        q_features = self.performer(q, is_query=True)
        if not need_weights:
            return attend_summary(q_features, *(summary or self.performer.summary(keys, values, real))), None
        weights = feature_weights(q_features, self.performer.keys(keys, real), real)
        with torch.autocast(q.device.type, enabled=False):
            out = weights @ values.float()
        if self.slots is not None:
            weights = weights[..., self.slots.count:]
        return out, weights
