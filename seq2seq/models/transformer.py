"""Transformer encoder-decoder (Vaswani et al. 2017).

    encoder: embed * sqrt(d) + positions -> N x [self-attention, feed-forward]
    decoder: embed * sqrt(d) + positions -> N x [causal self-attention, cross-attention,
             feed-forward] -> vocabulary projection (tied to the target embedding)

Each sublayer sits in a residual connection, normalised before the sublayer (pre-norm, with
a final LayerNorm after the stack) or after the sum (post-norm), per model.norm.

Attention runs through ``F.scaled_dot_product_attention`` with boolean masks, True = may
attend. SDPA does not return its weights, so the one decoder layer whose cross-attention is
plotted (``model.attention_layer``) computes them explicitly, and only when asked: by
``forward(return_attention=True)``, or in ``step`` while ``model.step_attention`` is on (the
searches turn it off unless they return attention).

With model.attention ``local`` self-attention is a sliding window (|i - j| <= window, and
causal in the decoder); cross-attention always sees the whole source.

Incremental decoding caches each layer's self-attention keys/values, and projects the
encoder output to cross-attention keys/values once, in ``init_state``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seq2seq.config import ModelConfig
from seq2seq.data.special import PAD_ID
from seq2seq.kernels import Dropout, Linear, ReLUDropout
from seq2seq.kernels import dropout as fast_dropout
from seq2seq.models.state import SharedRows, reorder_state

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}

# ------------------------------------------------------------------ pure functions


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


def sinusoidal_positions(positions: Tensor, dim: int) -> Tensor:
    """sin/cos position encodings (Vaswani et al. 2017): [T] -> [T, dim]."""
    frequencies = torch.exp(
        torch.arange(0, dim, 2, device=positions.device, dtype=torch.float) * (-math.log(10000.0) / dim)
    )
    angles = positions.float().unsqueeze(1) * frequencies  # [T, ceil(dim / 2)]
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)[:, :dim]


def split_heads(x: Tensor, heads: int) -> Tensor:
    """[B,T,d] -> [B,heads,T,d/heads]."""
    batch, length, dim = x.shape
    return x.view(batch, length, heads, dim // heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """[B,heads,T,d/heads] -> [B,T,d]."""
    batch, heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * head_dim)


# Up to this many queries (decoding: one per row, or a sentence's beams), without autograd,
# plain matmul + softmax beats SDPA's fused CPU kernel several times over (0.6 vs 2 ms for
# 320 rows of one query over 40 keys), since the fused kernel is made for long sequences.
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
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout: float, is_causal: bool = False
) -> tuple[Tensor, Tensor]:
    """What SDPA computes, but also returning the weights [B,heads,T,S] (before dropout)."""
    scores = torch.matmul(q, k.transpose(-2, -1)).mul_(1.0 / math.sqrt(q.size(-1)))
    if is_causal:
        mask = band_mask(q.size(-2), k.size(-2), None, causal=True, device=q.device)
    if mask is not None:
        # In place: the matmul's backward needs neither its output nor the scores.
        scores = scores.masked_fill_(~mask, float("-inf")) if mask.dtype == torch.bool else scores.add_(mask)
    weights = scores.softmax(dim=-1)
    return torch.matmul(fast_dropout(weights, dropout), v), weights


def additive_mask(mask: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Boolean mask (True = may attend) -> float bias, 0 where allowed and -inf elsewhere."""
    return torch.zeros(mask.shape, device=mask.device, dtype=dtype).masked_fill_(~mask, float("-inf"))


# ------------------------------------------------------------------ building blocks


class TransformerEmbedding(nn.Module):
    """Token embedding scaled by sqrt(d), plus sinusoidal or learned positions, then dropout."""

    def __init__(self, tokens: nn.Embedding, cfg: ModelConfig):
        super().__init__()
        self.tokens = tokens
        self.dim = cfg.hidden_dim
        self.learned = None
        if cfg.positions == "learned":
            self.learned = nn.Embedding(cfg.max_positions, cfg.hidden_dim)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, tokens: Tensor, start: int = 0) -> Tensor:
        """tokens [B,T], the first at position ``start`` -> [B,T,d]."""
        positions = torch.arange(start, start + tokens.size(1), device=tokens.device)
        if self.learned is None:
            position_vectors = sinusoidal_positions(positions, self.dim)
        elif start + tokens.size(1) > self.learned.num_embeddings:
            raise ValueError(
                f"position {start + tokens.size(1) - 1} is past model.max_positions "
                f"({self.learned.num_embeddings}) of learned positions"
            )
        else:
            position_vectors = self.learned(positions)
        embedded = self.tokens(tokens)
        return self.dropout(embedded * math.sqrt(self.dim) + position_vectors.to(embedded.dtype))


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused QKV projection; optional cached past keys."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = Linear(dim, 3 * dim)
        self.out = Linear(dim, dim)

    def forward(
        self, x: Tensor, mask: Tensor | None, cache: KVCache | None = None, is_causal: bool = False
    ) -> tuple[Tensor, KVCache | None]:
        """x [B,T,d] -> output [B,T,d]; with a cache (one new position), the cache grown by it."""
        q, k, v = (split_heads(part, self.heads) for part in self.qkv(x).chunk(3, dim=-1))
        if cache is not None:
            cache = cache.append(k, v)
            k, v = cache.keys_values()
        dropout = self.dropout if self.training else 0.0
        out = attend(q.to(k.dtype), k, v, mask, dropout, is_causal=is_causal).to(x.dtype)
        return self.out(merge_heads(out)), cache


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
            # Beam search keeps most beams in their own row (search.keep_parents_in_place), so
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

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.query = Linear(dim, dim)
        self.key_value = Linear(dim, 2 * dim)
        self.out = Linear(dim, dim)

    def memory_keys_values(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Project the memory once per sentence: [B,S,d] -> keys, values [B,heads,S,d/heads]."""
        k, v = self.key_value(memory).chunk(2, dim=-1)
        return split_heads(k, self.heads), split_heads(v, self.heads)

    def forward(
        self, x: Tensor, keys: Tensor, values: Tensor, mask: Tensor, need_weights: bool = False,
        group: int = 1,
    ) -> tuple[Tensor, Tensor | None]:
        """x [B,T,d] -> output [B,T,d], and weights [B,heads,T,S] when need_weights.

        ``group`` > 1 (decoding, T = 1): keys, values and mask have one entry per group of
        ``group`` consecutive rows of x (a sentence's beams); the group's rows attend as that
        many queries of their one entry, so the memory is never copied per row.
        """
        batch, length, dim = x.shape
        if group > 1:
            x = x.reshape(batch // group, group * length, dim)
        q = split_heads(self.query(x), self.heads)
        dropout = self.dropout if self.training else 0.0
        if need_weights:
            out, weights = attention_with_weights(q, keys, values, mask, dropout)
        else:
            out = attend(q, keys, values, mask, dropout)
            weights = None
        out = merge_heads(out)
        if group > 1:
            out = out.reshape(batch, length, dim)
            if weights is not None:  # [B/g, heads, g, S] -> [B, heads, 1, S]
                weights = weights.transpose(1, 2).reshape(batch, length, self.heads, -1).transpose(1, 2)
        return self.out(out), weights


class FeedForward(nn.Module):
    """Position-wise d -> ffn_dim -> d network."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        # ReLU and dropout as one node (fastops.relu_dropout): less memory, fewer passes. The
        # Identity keeps the second Linear at index 3, so checkpoints keep their keys.
        activation = [ReLUDropout(cfg.dropout), nn.Identity()] if cfg.activation == "relu" else [
            ACTIVATIONS[cfg.activation](), Dropout(cfg.dropout)]
        self.net = nn.Sequential(
            Linear(cfg.hidden_dim, cfg.ffn_dim),
            *activation,
            Linear(cfg.ffn_dim, cfg.hidden_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Residual(nn.Module):
    """The wiring around a sublayer f: pre-norm x + f(LN(x)), post-norm LN(x + f(x)).

    Used in two halves, ``sublayer_input(x)`` then ``add(x, f_output)``, because some
    sublayers return more than their output (a cache, attention weights).
    """

    def __init__(self, dim: int, dropout: float, pre_norm: bool):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.dropout = Dropout(dropout)
        self.pre_norm = pre_norm

    def sublayer_input(self, x: Tensor) -> Tensor:
        return self.norm(x) if self.pre_norm else x

    def add(self, x: Tensor, sublayer_output: Tensor) -> Tensor:
        x = x + self.dropout(sublayer_output)
        return x if self.pre_norm else self.norm(x)


class EncoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        pre_norm = cfg.norm == "pre"
        self.self_attention = SelfAttention(cfg.hidden_dim, cfg.heads, cfg.dropout)
        self.self_attention_residual = Residual(cfg.hidden_dim, cfg.dropout, pre_norm)
        self.feed_forward = FeedForward(cfg)
        self.feed_forward_residual = Residual(cfg.hidden_dim, cfg.dropout, pre_norm)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        out, _ = self.self_attention(self.self_attention_residual.sublayer_input(x), mask)
        x = self.self_attention_residual.add(x, out)
        out = self.feed_forward(self.feed_forward_residual.sublayer_input(x))
        return self.feed_forward_residual.add(x, out)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        pre_norm = cfg.norm == "pre"
        self.self_attention = SelfAttention(cfg.hidden_dim, cfg.heads, cfg.dropout)
        self.self_attention_residual = Residual(cfg.hidden_dim, cfg.dropout, pre_norm)
        self.cross_attention = CrossAttention(cfg.hidden_dim, cfg.heads, cfg.dropout)
        self.cross_attention_residual = Residual(cfg.hidden_dim, cfg.dropout, pre_norm)
        self.feed_forward = FeedForward(cfg)
        self.feed_forward_residual = Residual(cfg.hidden_dim, cfg.dropout, pre_norm)

    def forward(
        self,
        x: Tensor,
        self_mask: Tensor | None,
        memory_keys: Tensor,
        memory_values: Tensor,
        memory_mask: Tensor,
        cache: KVCache | None = None,
        need_weights: bool = False,
        is_causal: bool = False,
        group: int = 1,
    ) -> tuple[Tensor, KVCache | None, Tensor | None]:
        """-> output [B,T,d], the grown self-attention cache (if given), cross-attention weights."""
        out, cache = self.self_attention(
            self.self_attention_residual.sublayer_input(x), self_mask, cache, is_causal
        )
        x = self.self_attention_residual.add(x, out)
        out, weights = self.cross_attention(
            self.cross_attention_residual.sublayer_input(x),
            memory_keys,
            memory_values,
            memory_mask,
            need_weights,
            group,
        )
        x = self.cross_attention_residual.add(x, out)
        out = self.feed_forward(self.feed_forward_residual.sublayer_input(x))
        return self.feed_forward_residual.add(x, out), cache, weights


# ------------------------------------------------------------------ encoder and decoder


class TransformerEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig, tokens: nn.Embedding):
        super().__init__()
        self.embed = TransformerEmbedding(tokens, cfg)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        # Pre-norm leaves the residual stream unnormalised; post-norm already ends in a LayerNorm.
        self.final_norm = nn.LayerNorm(cfg.hidden_dim) if cfg.norm == "pre" else nn.Identity()
        self.window = cfg.window if cfg.attention == "local" else None

    def forward(self, src: Tensor, src_mask: Tensor) -> Tensor:
        """src [B,S] -> memory [B,S,d]."""
        x = self.embed(src)
        mask = encoder_self_mask(src_mask, self.window)
        for layer in self.layers:
            x = layer(x, mask)
        return self.final_norm(x)


class TransformerDecoder(nn.Module):
    def __init__(self, cfg: ModelConfig, tokens: nn.Embedding, vocab_size: int):
        super().__init__()
        self.heads = cfg.heads
        self.embed = TransformerEmbedding(tokens, cfg)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.final_norm = nn.LayerNorm(cfg.hidden_dim) if cfg.norm == "pre" else nn.Identity()
        self.output = Linear(cfg.hidden_dim, vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = tokens.weight
        self.window = cfg.window if cfg.attention == "local" else None

    def forward(
        self, tgt_in: Tensor, memory: Tensor, memory_mask: Tensor, weights_layer: int | None = None,
        project: bool = True,
    ) -> tuple[Tensor, Tensor | None]:
        """Teacher forcing: -> logits [B,T,V], layer ``weights_layer``'s cross-attention [B,heads,T,S].
        With ``project=False`` the vectors [B,T,D] that ``self.output`` would project.

        No target padding mask is needed: padding only follows the real tokens, and the
        causal mask already hides every later position.
        """
        length = tgt_in.size(1)
        x = self.embed(tgt_in)
        # Plain causal attention needs no mask tensor: SDPA's is_causal flag.
        self_mask, causal = None, True
        if self.window is not None:
            self_mask = band_mask(length, length, self.window, causal=True, device=tgt_in.device)
            causal = False
        memory_mask = memory_mask[:, None, None, :]
        weights = None
        for i, layer in enumerate(self.layers):
            keys, values = layer.cross_attention.memory_keys_values(memory)
            x, _, layer_weights = layer(
                x, self_mask, keys, values, memory_mask, need_weights=i == weights_layer, is_causal=causal
            )
            weights = layer_weights if i == weights_layer else weights
        features = self.final_norm(x)
        return (self.output(features) if project else features), weights

    def init_state(self, memory: Tensor, memory_mask: Tensor) -> dict:
        """The memory enters the state already projected to each layer's cross-attention
        keys/values, shared by the rows (beams) of a sentence (state.SharedRows); every
        layer's self-attention cache starts empty."""
        batch = memory.size(0)
        head_dim = memory.size(-1) // self.heads
        # Contiguous once per sentence, so that no step copies them for its matmuls.
        keys, values = zip(*(
            (k.contiguous(), v.contiguous())
            for k, v in (layer.cross_attention.memory_keys_values(memory) for layer in self.layers)
        ))
        shared = SharedRows(
            {"keys": list(keys), "values": list(values), "mask": additive_mask(memory_mask[:, None, None, :], memory.dtype)}
        )
        caches = [KVCache.empty(batch, self.heads, head_dim, memory) for _ in self.layers]
        return {"memory": shared, "caches": caches, "step": 0}

    def step(
        self, prev_tokens: Tensor, state: dict, weights_layer: int | None
    ) -> tuple[Tensor, dict, Tensor | None]:
        """One position: prev_tokens [B] -> logits [B,V], new state, weights [B,heads,1,S]."""
        position = state["step"]
        x = self.embed(prev_tokens.unsqueeze(1), start=position)
        self_mask = None  # the one query may see every cached position
        if self.window is not None:
            self_mask = band_mask(
                1, position + 1, self.window, causal=True, query_offset=position, device=x.device
            )
        memory: SharedRows = state["memory"]
        m = memory.entries
        new_caches, weights = [], None
        for i, (layer, cache) in enumerate(zip(self.layers, state["caches"])):
            x, cache, layer_weights = layer(
                x, self_mask, m["keys"][i], m["values"][i], m["mask"], cache=cache,
                need_weights=i == weights_layer, group=memory.group,
            )  # fmt: skip
            new_caches.append(cache)
            weights = layer_weights if i == weights_layer else weights
        logits = self.output(self.final_norm(x)).squeeze(1)
        return logits, {**state, "caches": new_caches, "step": position + 1}, weights


class Transformer(nn.Module):
    """The Transformer behind attn's model interface (encode, init_state, step, ...).

    ``attention_layer`` (default -1, the last) and ``attention_head`` (default None, the mean
    over heads) choose which cross-attention ``forward(return_attention=True)`` and ``step``
    return. ``step_attention`` (default on) says whether ``step`` computes it at all: SDPA
    cannot return its weights, so that layer then runs a slower explicit attention at every
    step. Off, ``step`` returns None for the weights.
    """

    def __init__(self, cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int):
        super().__init__()
        self.config = cfg
        self.src_vocab_size = src_vocab_size
        self.tgt_vocab_size = tgt_vocab_size
        # Learned positions end at max_positions, on either side; sinusoidal ones do not end.
        self.max_positions = cfg.max_positions if cfg.positions == "learned" else None
        self.attention_layer = -1
        self.attention_head: int | None = None
        self.step_attention = True
        src_tokens = nn.Embedding(src_vocab_size, cfg.hidden_dim)
        tgt_tokens = src_tokens if cfg.share_vocab else nn.Embedding(tgt_vocab_size, cfg.hidden_dim)
        self.encoder = TransformerEncoder(cfg, src_tokens)
        self.decoder = TransformerDecoder(cfg, tgt_tokens, tgt_vocab_size)

    def encode(self, src: Tensor) -> dict:
        mask = padding_mask(src)
        return {"memory": self.encoder(src, mask), "mask": mask}

    def init_state(self, encoded: dict) -> dict:
        return self.decoder.init_state(encoded["memory"], encoded["mask"])

    @property
    def output_layer(self) -> nn.Linear:
        return self.decoder.output

    def forward(
        self, src: Tensor, tgt_in: Tensor, return_attention: bool = False, features_only: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        encoded = self.encode(src)
        weights_layer = self._weights_layer() if return_attention else None
        logits, weights = self.decoder(tgt_in, encoded["memory"], encoded["mask"], weights_layer,
                                       project=not features_only)
        return (logits, self._select_head(weights)) if return_attention else logits

    def step(self, prev_tokens: Tensor, state: dict) -> tuple[Tensor, dict, Tensor | None]:
        weights_layer = self._weights_layer() if self.step_attention else None
        logits, state, weights = self.decoder.step(prev_tokens, state, weights_layer)
        return logits, state, None if weights is None else self._select_head(weights).squeeze(1)

    def reorder(self, state: dict, indices: Tensor) -> dict:
        # The rows that move are the same in every layer's cache: found once here, not per layer.
        caches = state["caches"]
        moved = moved_rows(indices) if caches and indices.numel() <= caches[0].keys.size(0) else None
        others = reorder_state({key: value for key, value in state.items() if key != "caches"}, indices)
        return {**others, "caches": [cache.reorder_rows(indices, moved) for cache in caches]}

    def _weights_layer(self) -> int:
        return self.attention_layer % len(self.decoder.layers)

    def _select_head(self, weights: Tensor) -> Tensor:
        """[B,heads,T,S] -> [B,T,S]: one head, or their mean."""
        return weights.mean(dim=1) if self.attention_head is None else weights[:, self.attention_head]
