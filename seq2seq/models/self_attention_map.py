"""The weights of one Transformer encoder layer's self-attention, for heatmaps
(``attn translate --attention-plots DIR --self-attention``): where local and sparse attention
show their pattern, and Gaussian localness its band.

Training and decoding never form these [S,S] matrices (SDPA, the blocked form and Performer's
summary do without them), so they are computed here apart, from the layer's own modules: the
dense mask of the model's pattern, the Gaussian bias, memory slots (their columns dropped: the
picture is of source positions) and a sparse normaliser; for Performer, the normalised
products of the features that its summary stands for. Linformer has none to show: its weights
are over model.rank mixtures of positions.
"""

from __future__ import annotations

import torch
from torch import Tensor

from seq2seq.models.multihead import SelfAttention, attention_with_weights, padding_mask, split_heads
from seq2seq.models.performer import feature_weights
from seq2seq.models.transformer import Transformer


def has_self_attention_map(model: object) -> str | None:
    """None where ``encoder_self_attention`` can draw ``model``; else why not, for a message."""
    if not isinstance(model, Transformer):
        return "the model's encoder is an RNN, which has no self-attention"
    if model.config.attention == "linformer":
        return "Linformer's self-attention weights are over model.rank projected positions, not source positions"
    return None


@torch.no_grad()
def encoder_self_attention(model: Transformer, src: Tensor, layer: int = -1, head: int | None = None) -> Tensor:
    """src [B,S] -> weights [B,S,S] (query, key) of encoder layer ``layer`` (-1: the last): one
    head, or the mean of the heads. Eval mode: no dropout."""
    why = has_self_attention_map(model)
    if why is not None:
        raise ValueError(why)
    encoder = model.encoder
    if model.training:
        raise ValueError("encoder_self_attention draws a model in eval mode (no dropout); call model.eval()")
    if not -len(encoder.layers) <= layer < len(encoder.layers):
        raise ValueError(f"layer {layer}: the encoder has {len(encoder.layers)} layers")
    src_mask = padding_mask(src)
    mask = encoder.attention_pattern(src_mask, blocked=False)
    x = encoder.embed(src)
    chosen = layer % len(encoder.layers)
    for encoder_layer in encoder.layers[:chosen]:
        x = encoder_layer(x, mask, src_mask)
    target = encoder.layers[chosen]
    weights = layer_weights(target.self_attention, target.self_attention_residual.sublayer_input(x), mask, src_mask)
    return weights.mean(dim=1) if head is None else weights[:, head]


def layer_weights(attention: SelfAttention, x: Tensor, mask: Tensor, key_mask: Tensor) -> Tensor:
    """The weights [B,heads,S,S] with which ``attention`` (SelfAttention.forward's arithmetic)
    mixes the positions of x [B,S,d]."""
    q, k, v = (split_heads(part, attention.heads) for part in attention.qkv(x).chunk(3, dim=-1))
    slots = attention.slots.count if attention.slots is not None else 0
    if attention.performer is not None:
        if slots:
            k, key_mask = attention.slots.extend(k, v)[0], attention.slots.extend_mask(key_mask)
        allowed = key_mask[:, None, None, :]
        weights = feature_weights(attention.performer(q, is_query=True), attention.performer.keys(k, allowed), allowed)
    else:
        bias = attention.gaussian(q, key_mask) if attention.gaussian is not None else None
        if slots:
            k, v = attention.slots.extend(k, v)
            mask, bias = attention.slots.extend_mask(mask), attention.slots.extend_bias(bias)
        weights = attention_with_weights(q, k, v, mask, 0.0, normalize=attention.normalize, bias=bias)[1]
    return weights[..., slots:]
