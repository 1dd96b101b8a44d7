"""Transformer encoder-decoder (Vaswani et al. 2017).

    encoder: embed * sqrt(d) + positions -> N x [self-attention, feed-forward]
    decoder: embed * sqrt(d) + positions -> N x [causal self-attention, cross-attention,
             feed-forward] -> vocabulary projection (tied to the target embedding)

Each sublayer sits in a residual connection, normalised before the sublayer (pre-norm, with
a final LayerNorm after the stack) or after the sum (post-norm), per model.norm.

Attention runs through ``F.scaled_dot_product_attention`` with boolean masks, True = may
attend. SDPA does not return its weights, so the one decoder layer whose cross-attention is
plotted (``model.attention_layer``) computes them explicitly, and only when asked.

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
from seq2seq.models.state import reorder_state

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


def attention_with_weights(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor, dropout: float
) -> tuple[Tensor, Tensor]:
    """What SDPA computes, but also returning the weights [B,heads,T,S] (before dropout)."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    weights = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
    return F.dropout(weights, dropout) @ v, weights


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
        self.dropout = nn.Dropout(cfg.dropout)

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
        return self.dropout(self.tokens(tokens) * math.sqrt(self.dim) + position_vectors)


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused QKV projection; optional cached past keys."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(
        self, x: Tensor, mask: Tensor, past: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x [B,T,d] -> output [B,T,d], and keys/values [B,heads,past+T,d/heads] for the cache."""
        q, k, v = (split_heads(part, self.heads) for part in self.qkv(x).chunk(3, dim=-1))
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        dropout = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return self.out(merge_heads(out)), (k, v)


class CrossAttention(nn.Module):
    """Multi-head attention from decoder positions to the encoder output (the memory)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def memory_keys_values(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Project the memory once per sentence: [B,S,d] -> keys, values [B,heads,S,d/heads]."""
        k, v = self.key_value(memory).chunk(2, dim=-1)
        return split_heads(k, self.heads), split_heads(v, self.heads)

    def forward(
        self, x: Tensor, keys: Tensor, values: Tensor, mask: Tensor, need_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """x [B,T,d] -> output [B,T,d], and weights [B,heads,T,S] when need_weights."""
        q = split_heads(self.query(x), self.heads)
        dropout = self.dropout if self.training else 0.0
        if need_weights:
            out, weights = attention_with_weights(q, keys, values, mask, dropout)
        else:
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, dropout_p=dropout)
            weights = None
        return self.out(merge_heads(out)), weights


class FeedForward(nn.Module):
    """Position-wise d -> ffn_dim -> d network."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(cfg.hidden_dim, cfg.ffn_dim),
            ACTIVATIONS[cfg.activation](),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.ffn_dim, cfg.hidden_dim),
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
        self.dropout = nn.Dropout(dropout)
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
        self_mask: Tensor,
        memory_keys: Tensor,
        memory_values: Tensor,
        memory_mask: Tensor,
        past: tuple[Tensor, Tensor] | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, tuple[Tensor, Tensor], Tensor | None]:
        """-> output [B,T,d], self-attention keys/values for the cache, cross-attention weights."""
        out, keys_values = self.self_attention(
            self.self_attention_residual.sublayer_input(x), self_mask, past
        )
        x = self.self_attention_residual.add(x, out)
        out, weights = self.cross_attention(
            self.cross_attention_residual.sublayer_input(x),
            memory_keys,
            memory_values,
            memory_mask,
            need_weights,
        )
        x = self.cross_attention_residual.add(x, out)
        out = self.feed_forward(self.feed_forward_residual.sublayer_input(x))
        return self.feed_forward_residual.add(x, out), keys_values, weights


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
        self.output = nn.Linear(cfg.hidden_dim, vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = tokens.weight
        self.window = cfg.window if cfg.attention == "local" else None

    def forward(
        self, tgt_in: Tensor, memory: Tensor, memory_mask: Tensor, weights_layer: int | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Teacher forcing: -> logits [B,T,V], layer ``weights_layer``'s cross-attention [B,heads,T,S].

        No target padding mask is needed: padding only follows the real tokens, and the
        causal mask already hides every later position.
        """
        length = tgt_in.size(1)
        x = self.embed(tgt_in)
        self_mask = band_mask(length, length, self.window, causal=True, device=tgt_in.device)
        memory_mask = memory_mask[:, None, None, :]
        weights = None
        for i, layer in enumerate(self.layers):
            keys, values = layer.cross_attention.memory_keys_values(memory)
            x, _, layer_weights = layer(
                x, self_mask, keys, values, memory_mask, need_weights=i == weights_layer
            )
            weights = layer_weights if i == weights_layer else weights
        return self.output(self.final_norm(x)), weights

    def init_state(self, memory: Tensor, memory_mask: Tensor) -> dict:
        """The memory enters the state already projected to each layer's cross-attention
        keys/values; every layer's self-attention cache starts empty."""
        batch = memory.size(0)
        head_dim = memory.size(-1) // self.heads
        layers = []
        for layer in self.layers:
            keys, values = layer.cross_attention.memory_keys_values(memory)
            no_past = memory.new_zeros(batch, self.heads, 0, head_dim)
            layers.append(
                {"memory_keys": keys, "memory_values": values, "past_keys": no_past, "past_values": no_past}
            )
        return {"memory_mask": memory_mask, "layers": layers, "step": 0}

    def step(
        self, prev_tokens: Tensor, state: dict, weights_layer: int | None
    ) -> tuple[Tensor, dict, Tensor | None]:
        """One position: prev_tokens [B] -> logits [B,V], new state, weights [B,heads,1,S]."""
        position = state["step"]
        x = self.embed(prev_tokens.unsqueeze(1), start=position)
        self_mask = band_mask(
            1, position + 1, self.window, causal=True, query_offset=position, device=x.device
        )
        memory_mask = state["memory_mask"][:, None, None, :]
        new_layers, weights = [], None
        for i, (layer, cache) in enumerate(zip(self.layers, state["layers"])):
            x, (keys, values), layer_weights = layer(
                x,
                self_mask,
                cache["memory_keys"],
                cache["memory_values"],
                memory_mask,
                past=(cache["past_keys"], cache["past_values"]),
                need_weights=i == weights_layer,
            )
            new_layers.append({**cache, "past_keys": keys, "past_values": values})
            weights = layer_weights if i == weights_layer else weights
        logits = self.output(self.final_norm(x)).squeeze(1)
        return logits, {**state, "layers": new_layers, "step": position + 1}, weights


class Transformer(nn.Module):
    """The Transformer behind attn's model interface (encode, init_state, step, ...).

    ``attention_layer`` (default -1, the last) and ``attention_head`` (default None, the mean
    over heads) choose which cross-attention ``forward(return_attention=True)`` and ``step``
    return.
    """

    def __init__(self, cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int):
        super().__init__()
        self.config = cfg
        self.src_vocab_size = src_vocab_size
        self.tgt_vocab_size = tgt_vocab_size
        # Learned positions end at max_positions; sinusoidal ones do not end.
        self.max_source_positions = cfg.max_positions if cfg.positions == "learned" else None
        self.attention_layer = -1
        self.attention_head: int | None = None
        src_tokens = nn.Embedding(src_vocab_size, cfg.hidden_dim)
        tgt_tokens = src_tokens if cfg.share_vocab else nn.Embedding(tgt_vocab_size, cfg.hidden_dim)
        self.encoder = TransformerEncoder(cfg, src_tokens)
        self.decoder = TransformerDecoder(cfg, tgt_tokens, tgt_vocab_size)

    def encode(self, src: Tensor) -> dict:
        mask = padding_mask(src)
        return {"memory": self.encoder(src, mask), "mask": mask}

    def init_state(self, encoded: dict) -> dict:
        return self.decoder.init_state(encoded["memory"], encoded["mask"])

    def forward(
        self, src: Tensor, tgt_in: Tensor, return_attention: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        encoded = self.encode(src)
        weights_layer = self._weights_layer() if return_attention else None
        logits, weights = self.decoder(tgt_in, encoded["memory"], encoded["mask"], weights_layer)
        return (logits, self._select_head(weights)) if return_attention else logits

    def step(self, prev_tokens: Tensor, state: dict) -> tuple[Tensor, dict, Tensor]:
        logits, state, weights = self.decoder.step(prev_tokens, state, self._weights_layer())
        return logits, state, self._select_head(weights).squeeze(1)

    def reorder(self, state: dict, indices: Tensor) -> dict:
        return reorder_state(state, indices)

    def _weights_layer(self) -> int:
        return self.attention_layer % len(self.decoder.layers)

    def _select_head(self, weights: Tensor) -> Tensor:
        """[B,heads,T,S] -> [B,T,S]: one head, or their mean."""
        return weights.mean(dim=1) if self.attention_head is None else weights[:, self.attention_head]
