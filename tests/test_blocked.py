"""The blocked encoder self-attention (models/blocked.py) is the dense sparse mask's, computed in
blocks: the same outputs and gradients, padding never attended, each key counted once."""

from __future__ import annotations

import pytest
import torch

from seq2seq.config import ModelConfig
from seq2seq.models import blocked, transformer
from seq2seq.models.attention_patterns import encoder_sparse_mask
from seq2seq.models.blocked import block_pattern, blocked_attention, blocked_pays, keys_per_query
from seq2seq.models.builder import build_model
from seq2seq.models.multihead import attention_with_weights
from seq2seq.models.normalizers import normalizer

PATTERNS = [  # window, global tokens, random blocks; some wider than the batch (23)
    (1, 0, 0), (3, 0, 0), (4, 2, 0), (3, 0, 1), (2, 3, 2), (5, 1, 1), (0, 2, 0), (0, 3, 1), (0, 0, 2),
    (30, 0, 0), (2, 40, 1),
]


def inputs(lengths: list[int], width: int, heads: int = 2, dim: int = 4, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(len(lengths), heads, width, dim, generator=generator, dtype=torch.float64,
                           requires_grad=True) for _ in range(3))
    src_mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    return q, k, v, src_mask


@pytest.mark.parametrize("window, global_tokens, random_count", PATTERNS)
@pytest.mark.parametrize("normalize", ["softmax", "sparsemax", "entmax15", "entmax"])
def test_blocked_attention_equals_the_dense_mask(window, global_tokens, random_count, normalize):
    """Sentences of every length (down to none: an all-padding row), the gradients too, alpha's included."""
    q, k, v, src_mask = inputs([23, 17, 9, 2, 1, 0], 23)
    norm = None if normalize == "softmax" else normalizer(normalize, (2, 1, 1))
    leaves = [q, k, v]
    if normalize == "entmax":  # a different alpha per head, so that a head mix-up shows
        norm.alpha_logit.data = torch.tensor([-1.0, 1.0]).view(2, 1, 1)
        leaves.append(norm.alpha_logit)
    dense = attention_with_weights(q, k, v, encoder_sparse_mask(src_mask, window, global_tokens, random_count),
                                   0.0, normalize=norm)[0]
    pattern = block_pattern(src_mask, window, global_tokens, random_count)
    out = blocked_attention(q, k, v, pattern, 0.0, norm)
    assert out.shape == dense.shape
    close = {"atol": 1e-5, "rtol": 1e-5}  # the sparse normalisers run in float32
    torch.testing.assert_close(out, dense, **close)  # padding rows too: every position sees itself in both
    upstream = torch.randn_like(out)
    dense_grads = torch.autograd.grad(dense, leaves, upstream)
    for got, want in zip(torch.autograd.grad(out, leaves, upstream), dense_grads):
        torch.testing.assert_close(got, want, **close)


def test_bf16_stays_as_close_to_float32_as_the_fused_dense_path():
    """A bf16 model's scores are bf16; the weights are normalised in float32, as SDPA does."""
    q, k, v, src_mask = inputs([40, 31], 40)
    pattern = block_pattern(src_mask, 4, 2, 1)
    exact = blocked_attention(q, k, v, pattern, 0.0)
    half = blocked_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), pattern, 0.0)
    mask = encoder_sparse_mask(src_mask, 4, 2, 1)
    fused = torch.nn.functional.scaled_dot_product_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), attn_mask=mask)
    assert half.dtype == torch.bfloat16
    assert (half.double() - exact).abs().max() <= 2 * (fused.double() - exact).abs().max() + 1e-3


def test_padding_keys_change_nothing():
    """A sentence's output is its own whatever the padded width of its batch and the padding's values."""
    q, k, v, src_mask = inputs([30, 12], 30)
    pattern = block_pattern(src_mask, 4, 2, 1)
    out = blocked_attention(q, k, v, pattern, 0.0)
    noisy_k, noisy_v = k.detach().clone(), v.detach().clone()
    noisy_k[1, :, 12:] = 1e3
    noisy_v[1, :, 12:] = -1e3
    again = blocked_attention(q, noisy_k, noisy_v, pattern, 0.0)
    torch.testing.assert_close(again[1, :, :12], out[1, :, :12])
    alone = blocked_attention(q[1:, :, :12], k[1:, :, :12], v[1:, :, :12], block_pattern(src_mask[1:, :12], 4, 2, 1), 0.0)
    torch.testing.assert_close(alone[0], out[1, :, :12])


def test_each_query_scores_the_same_number_of_keys_at_every_length():
    """What makes it linear: the normaliser sees keys_per_query columns, not the length."""
    for width in (40, 400):
        q, k, v, src_mask = inputs([width], width)
        seen = []

        def recording_softmax(scores, allowed):
            seen.append(scores.shape)
            return scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)

        blocked_attention(q, k, v, block_pattern(src_mask, 4, 2, 1), 0.0, recording_softmax)
        assert seen[0][-1] == keys_per_query(4, 2, 1) == 3 * 4 + 2 + 4  # the queries of the blocks
        assert seen[1][-2:] == (2, width)  # the global queries' rows


def test_training_mode_with_dropout_runs_the_blocked_form_with_finite_gradients():
    cfg = ModelConfig(arch="transformer", attention="sparse", window=4, global_tokens=2, random_blocks=1,
                      hidden_dim=16, heads=2, ffn_dim=32, encoder_layers=1, decoder_layers=1, dropout=0.3)
    torch.manual_seed(0)
    model = build_model(cfg, 50, 50).train()
    assert blocked_pays(60, 4, 2, 1)
    src = torch.randint(4, 50, (2, 60))
    src[1, 45:] = 0
    model(src, torch.randint(4, 50, (2, 9))).sum().backward()
    encoder_grads = [p.grad for p in model.encoder.parameters() if p.grad is not None]
    assert encoder_grads and all(torch.isfinite(g).all() for g in encoder_grads)


def test_the_encoder_uses_the_blocked_form_on_long_inputs_and_it_changes_nothing(monkeypatch):
    cfg = ModelConfig(arch="transformer", attention="sparse", window=3, global_tokens=1, random_blocks=1,
                      hidden_dim=16, heads=2, ffn_dim=32, encoder_layers=2, decoder_layers=1, dropout=0.0)
    width = 40
    assert blocked_pays(width, 3, 1, 1) and not blocked_pays(8, 3, 1, 1)
    torch.manual_seed(0)
    model = build_model(cfg, 50, 50).eval()
    src = torch.randint(4, 50, (2, width))
    src[1, 25:] = 0  # padding
    calls = []
    real = blocked.blocked_attention
    monkeypatch.setattr("seq2seq.models.multihead.blocked_attention",
                        lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    with torch.no_grad():
        fast = model.encode(src)["memory"]
        assert len(calls) == cfg.encoder_layers
        monkeypatch.setattr(transformer, "blocked_pays", lambda *args: False)
        dense = model.encode(src)["memory"]
    assert len(calls) == cfg.encoder_layers  # the second pass was dense
    torch.testing.assert_close(fast[0], dense[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fast[1, :25], dense[1, :25], atol=1e-5, rtol=1e-4)
