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

Self-attention, per model.attention (the Transformer half of README's attention taxonomy):

    scaled_dot  every key (the decoder's: every earlier one)
    local       a sliding window |i - j| <= window, causal in the decoder
    sparse      the window plus global tokens, and random blocks in the encoder
                (attention_patterns.py: Longformer, BigBird); in the encoder, past a
                few windows' length, both are computed block by block (blocked.py), so
                their cost grows linearly with the length
    performer   FAVOR+ kernel attention (performer.py), in cross-attention too; the decoder
                keeps a recurrent state instead of a key/value cache
    linformer   the encoder's keys and values projected along the sequence to model.rank
                (attention_extras.py); the decoder stays full
Any of the softmax ones may normalise with a sparse model.attention_normalizer, add a Gaussian
bias in the lower encoder layers (model.gaussian_bias) and memory slots to the encoder's self-
and the decoder's cross-attention (model.memory_slots). Cross-attention sees the whole source.

Incremental decoding caches each layer's self-attention keys/values, and projects the
encoder output to cross-attention keys/values once, in ``init_state``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from seq2seq.config import ModelConfig
from seq2seq.kernels import Dropout, Linear, ReLUDropout
from seq2seq.models.attention_patterns import encoder_sparse_mask, sparse_pattern
from seq2seq.models.blocked import BlockPattern, block_pattern, blocked_pays
from seq2seq.models.multihead import (CrossAttention, FeatureState, KVCache, SelfAttention, additive_mask,
                                      encoder_self_mask, moved_rows, padding_mask)
from seq2seq.models.state import SharedRows, reorder_state

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}

# ------------------------------------------------------------------ building blocks


def sinusoidal_positions(positions: Tensor, dim: int) -> Tensor:
    """sin/cos position encodings (Vaswani et al. 2017): [T] -> [T, dim]."""
    frequencies = torch.exp(
        torch.arange(0, dim, 2, device=positions.device, dtype=torch.float) * (-math.log(10000.0) / dim)
    )
    angles = positions.float().unsqueeze(1) * frequencies  # [T, ceil(dim / 2)]
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)[:, :dim]


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


def performer_features(cfg: ModelConfig) -> int | None:
    """FAVOR+'s feature count where the model's attention is Performer's (every attention)."""
    return cfg.features if cfg.attention == "performer" else None


class EncoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, index: int = 0):
        super().__init__()
        pre_norm = cfg.norm == "pre"
        self.self_attention = SelfAttention(
            cfg.hidden_dim, cfg.heads, cfg.dropout, cfg.attention_normalizer, cfg.memory_slots,
            # Yang et al. found localness pays in the lower layers, which model local context.
            gaussian=cfg.gaussian_bias and index < (cfg.encoder_layers + 1) // 2,
            linformer_rank=cfg.rank if cfg.attention == "linformer" else None, max_length=cfg.max_positions,
            performer_features=performer_features(cfg))
        self.self_attention_residual = Residual(cfg.hidden_dim, cfg.dropout, pre_norm)
        self.feed_forward = FeedForward(cfg)
        self.feed_forward_residual = Residual(cfg.hidden_dim, cfg.dropout, pre_norm)

    def forward(self, x: Tensor, mask: Tensor | BlockPattern, key_mask: Tensor | None = None) -> Tensor:
        out, _ = self.self_attention(self.self_attention_residual.sublayer_input(x), mask, key_mask=key_mask)
        x = self.self_attention_residual.add(x, out)
        out = self.feed_forward(self.feed_forward_residual.sublayer_input(x))
        return self.feed_forward_residual.add(x, out)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        pre_norm = cfg.norm == "pre"
        self.self_attention = SelfAttention(cfg.hidden_dim, cfg.heads, cfg.dropout, cfg.attention_normalizer,
                                            performer_features=performer_features(cfg))
        self.self_attention_residual = Residual(cfg.hidden_dim, cfg.dropout, pre_norm)
        self.cross_attention = CrossAttention(cfg.hidden_dim, cfg.heads, cfg.dropout, cfg.attention_normalizer,
                                              cfg.memory_slots, performer_features(cfg))
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
        cache: KVCache | FeatureState | None = None,
        need_weights: bool = False,
        is_causal: bool = False,
        group: int = 1,
        memory_summary: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, KVCache | FeatureState | None, Tensor | None]:
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
            memory_summary,
        )
        x = self.cross_attention_residual.add(x, out)
        out = self.feed_forward(self.feed_forward_residual.sublayer_input(x))
        return self.feed_forward_residual.add(x, out), cache, weights


# ------------------------------------------------------------------ encoder and decoder


class TransformerEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig, tokens: nn.Embedding):
        super().__init__()
        self.embed = TransformerEmbedding(tokens, cfg)
        self.layers = nn.ModuleList(EncoderLayer(cfg, i) for i in range(cfg.encoder_layers))
        # Pre-norm leaves the residual stream unnormalised; post-norm already ends in a LayerNorm.
        self.final_norm = nn.LayerNorm(cfg.hidden_dim) if cfg.norm == "pre" else nn.Identity()
        self.cfg = cfg

    def forward(self, src: Tensor, src_mask: Tensor) -> Tensor:
        """src [B,S] -> memory [B,S,d]."""
        x = self.embed(src)
        mask = self.attention_pattern(src_mask)
        for layer in self.layers:
            x = layer(x, mask, src_mask)
        return self.final_norm(x)

    def attention_pattern(self, src_mask: Tensor, blocked: bool = True) -> Tensor | BlockPattern:
        """What the self-attention of a batch with real tokens ``src_mask`` [B,S] may attend to:
        a mask, or where it pays (and ``blocked``), the BlockPattern of its blocked form."""
        cfg = self.cfg
        sparse = cfg.attention == "sparse"
        extras = (cfg.global_tokens, cfg.random_blocks) if sparse else (0, 0)
        if (blocked and cfg.attention in ("local", "sparse") and blocked_pays(src_mask.size(1), cfg.window, *extras)
                and not cfg.gaussian_bias and not cfg.memory_slots):  # those two need the dense scores
            return block_pattern(src_mask, cfg.window, *extras)
        if sparse:
            return encoder_sparse_mask(src_mask, cfg.window, cfg.global_tokens, cfg.random_blocks)
        return encoder_self_mask(src_mask, cfg.window if cfg.attention == "local" else None)


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
        # Restricted self-attention: a causal window, and sparse's global tokens.
        self.window = cfg.window if cfg.attention in ("local", "sparse") else None
        self.global_tokens = cfg.global_tokens if cfg.attention == "sparse" else 0

    def self_mask(self, queries: int, keys: int, first: int, device: torch.device) -> Tensor:
        """The causal window (and global tokens) of queries at positions first.. over keys 0.."""
        return sparse_pattern(queries, keys, self.window, self.global_tokens, causal=True, query_offset=first,
                              device=device)

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
            self_mask, causal = self.self_mask(length, length, 0, tgt_in.device), False
        memory_mask = self.layers[0].cross_attention.memory_mask(memory_mask[:, None, None, :])
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
        mask = self.layers[0].cross_attention.memory_mask(memory_mask[:, None, None, :])
        entries = {"keys": list(keys), "values": list(values), "mask": additive_mask(mask, memory.dtype)}
        if self.layers[0].cross_attention.performer is not None:  # Performer's summaries, once a sentence
            entries["summaries"] = [layer.cross_attention.performer.summary(k, v, mask)
                                    for layer, k, v in zip(self.layers, keys, values)]
        shared = SharedRows(entries)
        caches = [FeatureState() if layer.self_attention.performer is not None
                  else KVCache.empty(batch, self.heads, head_dim, memory) for layer in self.layers]
        return {"memory": shared, "caches": caches, "step": 0}

    def step(
        self, prev_tokens: Tensor, state: dict, weights_layer: int | None
    ) -> tuple[Tensor, dict, Tensor | None]:
        """One position: prev_tokens [B] -> logits [B,V], new state, weights [B,heads,1,S]."""
        position = state["step"]
        x = self.embed(prev_tokens.unsqueeze(1), start=position)
        self_mask = None  # the one query may see every cached position
        if self.window is not None:
            self_mask = self.self_mask(1, position + 1, position, x.device)
        memory: SharedRows = state["memory"]
        m = memory.entries
        new_caches, weights = [], None
        for i, (layer, cache) in enumerate(zip(self.layers, state["caches"])):
            x, cache, layer_weights = layer(
                x, self_mask, m["keys"][i], m["values"][i], m["mask"], cache=cache,
                need_weights=i == weights_layer, group=memory.group,
                memory_summary=m["summaries"][i] if "summaries" in m else None,
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
        # Learned positions end at max_positions, on either side, and so does Linformer's
        # projection; sinusoidal positions do not end.
        self.max_positions = cfg.max_positions if cfg.positions == "learned" or cfg.attention == "linformer" else None
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
        self, src: Tensor, tgt_in: Tensor, return_attention: bool = False, features_only: bool = False,
        host_lengths: Tensor | None = None,  # (the RNN's, for packing on a GPU; masks do here)
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
        moved = None
        if caches and isinstance(caches[0], KVCache) and indices.numel() <= caches[0].keys.size(0):
            moved = moved_rows(indices)
        others = reorder_state({key: value for key, value in state.items() if key != "caches"}, indices)
        return {**others, "caches": [cache.reorder_rows(indices, moved) for cache in caches]}

    def _weights_layer(self) -> int:
        return self.attention_layer % len(self.decoder.layers)

    def _select_head(self, weights: Tensor) -> Tensor:
        """[B,heads,T,S] -> [B,T,S]: one head, or their mean."""
        return weights.mean(dim=1) if self.attention_head is None else weights[:, self.attention_head]
