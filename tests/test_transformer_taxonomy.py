"""The Transformer half of the attention taxonomy, each against its paper's property:

    sparse      each query attends to exactly the pattern's keys; a window as long as the
                sentence is full attention; random blocks are fixed by length and seed
    linformer   rank = length with identity projections is softmax attention
    gaussian    a bias of infinite width is no bias
    slots       no slots is the baseline; slots enter a decoder's state once
    normalisers sparse weights per head, alpha per head
(Performer's own properties: tests/test_performer.py; every mechanism through the model
interface, step by step and across reorders: tests/test_models.py; beams: tests/test_search.py.)
"""

import pytest
import torch

from seq2seq.config import ModelConfig
from seq2seq.data.special import PAD_ID
from seq2seq.models.attention_extras import GaussianBias, LengthProjection
from seq2seq.models.attention_patterns import encoder_sparse_mask, gaussian_bias, random_blocks, sparse_pattern
from seq2seq.models.builder import build_model
from seq2seq.models.multihead import SelfAttention, attention_with_weights
from tests.synthetic import make_reverse_batch

BASE = dict(arch="transformer", attention="scaled_dot", hidden_dim=16, heads=2, ffn_dim=32, encoder_layers=2, decoder_layers=2, dropout=0.0)


def model(**settings) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(**{**BASE, **settings}), 20, 20).eval()


def batch(n: int = 4):
    return make_reverse_batch(n, 20, 3, 9, torch.Generator().manual_seed(0))


def reference_pattern(i: int, j: int, window: int, global_tokens: int, causal: bool) -> bool:
    if causal and j > i:
        return False
    return abs(i - j) <= window or i < global_tokens or j < global_tokens


@pytest.mark.parametrize("causal", [False, True])
def test_each_query_attends_to_exactly_the_patterns_keys(causal):
    window, global_tokens = 2, 3
    pattern = sparse_pattern(12, 12, window, global_tokens, causal)
    for i in range(12):
        expected = [j for j in range(12) if reference_pattern(i, j, window, global_tokens, causal)]
        assert pattern[i].nonzero().flatten().tolist() == expected
    # a step at position 7 (decoding: one query over the keys so far) sees row 7 of the full pass
    assert torch.equal(sparse_pattern(1, 8, window, global_tokens, causal, query_offset=7)[0], pattern[7, :8])


def test_random_blocks_add_whole_blocks_fixed_by_length_and_seed_whatever_the_padding():
    src_mask = torch.tensor([[True] * 10 + [False] * 6, [True] * 16])
    mask = encoder_sparse_mask(src_mask, window=2, global_tokens=0, random_count=2, seed=5)[:, 0]
    again = encoder_sparse_mask(src_mask[:1, :10], window=2, global_tokens=0, random_count=2, seed=5)[:, 0]
    assert torch.equal(mask[0, :10, :10], again[0])  # padding changes nothing
    extra = random_blocks(10, 2, 2, 5)
    # every query block reads 2 whole key blocks of 2 positions (where they do not overlap its window)
    assert torch.equal(extra.view(5, 2, 5, 2).all(dim=(1, 3)), extra.view(5, 2, 5, 2).any(dim=(1, 3)))
    assert torch.all(extra.view(5, 2, 5, 2).any(dim=(1, 3)).sum(dim=1) == 2)
    assert not torch.equal(random_blocks(10, 2, 2, 6), extra)  # another seed, other blocks
    assert torch.all(mask[0, :10, 10:] == 0)  # never padding


def test_a_window_as_long_as_the_sentence_is_full_attention():
    src, tgt_in, _ = batch()
    full = model(attention="scaled_dot")
    sparse = model(attention="sparse", window=64, global_tokens=2, random_blocks=1)
    sparse.load_state_dict(full.state_dict())
    with torch.no_grad():
        assert torch.allclose(full(src, tgt_in), sparse(src, tgt_in), atol=1e-6)


def test_global_tokens_see_and_are_seen_by_everything_in_the_encoder():
    src_mask = torch.ones(1, 10, dtype=torch.bool)
    mask = encoder_sparse_mask(src_mask, window=1, global_tokens=2, random_count=0)[0, 0]
    assert mask[:2].all() and mask[:, :2].all()
    assert mask[5].sum() == 2 + 3  # two global tokens and a window of three


def test_linformer_with_identity_projections_at_full_rank_is_softmax_attention():
    torch.manual_seed(0)
    attention = SelfAttention(16, 2, 0.0, linformer_rank=7, max_length=7).eval()
    reference = SelfAttention(16, 2, 0.0).eval()
    reference.load_state_dict(attention.state_dict(), strict=False)
    with torch.no_grad():
        attention.projection.keys.copy_(torch.eye(7))
        attention.projection.values.copy_(torch.eye(7))
    x, key_mask = torch.randn(3, 7, 16), torch.ones(3, 7, dtype=torch.bool)
    with torch.no_grad():
        out, _ = attention(x, None, key_mask=key_mask)
        expected, _ = reference(x, key_mask[:, None, None, :], key_mask=key_mask)
    assert torch.allclose(out, expected, atol=1e-5)


def test_linformer_projection_ignores_padding_and_refuses_longer_sequences():
    projection = LengthProjection(4, 10)
    k, v = torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    mask = torch.tensor([[True] * 4 + [False] * 2])
    padded = projection(k, v, mask)
    cut = projection(k[:, :, :4], v[:, :, :4], mask[:, :4])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(padded, cut))
    with pytest.raises(ValueError, match="longer than Linformer's projection"):
        projection(torch.randn(1, 2, 11, 8), torch.randn(1, 2, 11, 8), torch.ones(1, 11, dtype=torch.bool))


def test_linformer_notes_that_the_decoder_stays_full():
    from seq2seq.config import load_config

    cfg = load_config(None, ["model.arch=transformer", "model.attention=linformer"])
    assert any("decoder's attention stays full softmax" in note for note in cfg.notes)


def test_a_gaussian_bias_of_infinite_width_is_no_bias():
    centres, wide = torch.tensor([[2.0, 5.0]]), torch.full((1, 2), 1e8)
    assert torch.allclose(gaussian_bias(centres, wide, 8), torch.zeros(1, 2, 8), atol=1e-9)
    narrow = gaussian_bias(centres, torch.ones(1, 2), 8)
    assert narrow[0, 0].argmax() == 2 and narrow[0, 1, 5] == 0 and narrow[0, 1, 7] == pytest.approx(-2.0)
    # and through attention: the same weights as without a bias
    q, k, v = torch.randn(3, 1, 2, 4, 8).unbind(0)
    plain = attention_with_weights(q, k, v, None, 0.0)[1]
    biased = attention_with_weights(q, k, v, None, 0.0, bias=gaussian_bias(torch.rand(1, 2, 4), torch.full((1, 2, 4), 1e8), 4))[1]
    assert torch.allclose(plain, biased, atol=1e-6)


def test_the_gaussian_centre_lies_inside_each_sentence():
    bias = GaussianBias(8)
    q = torch.randn(2, 2, 6, 8) * 10
    key_mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    peaks = bias(q, key_mask).argmax(dim=-1)
    assert torch.all(peaks[1] <= 2)


def test_no_memory_slots_is_the_baseline_and_slots_enter_the_decoder_state_once():
    src, tgt_in, _ = batch()
    base, none = model(), model(memory_slots=0)
    assert base.state_dict().keys() == none.state_dict().keys()
    with torch.no_grad():
        assert torch.equal(base(src, tgt_in), none(src, tgt_in))
    slotted = model(memory_slots=3)
    with torch.no_grad():
        state = slotted.init_state(slotted.encode(src))
        width = [keys.size(2) for keys in state["memory"].entries["keys"]]
        assert width == [src.size(1) + 3] * 2  # projected once per sentence, slots included
        logits, state, weights = slotted.step(tgt_in[:, 0], state)
        assert [keys.size(2) for keys in state["memory"].entries["keys"]] == width
        assert weights.shape == (src.size(0), src.size(1))  # what is shown is the source's share
        assert torch.all(weights[src == PAD_ID] == 0)


def test_sparse_normalisers_give_heads_exact_zeros_and_learn_alpha_per_head():
    src, tgt_in, tgt_out = batch()
    sparse = model(attention_normalizer="sparsemax")
    with torch.no_grad():
        _, weights = sparse(src, tgt_in, return_attention=True)
    assert (weights[src.ne(PAD_ID).unsqueeze(1).expand_as(weights)] == 0).any()  # exact zeros on real tokens
    learned = model(attention_normalizer="entmax").train()
    alphas = [module.alpha_logit for module in learned.modules() if hasattr(module, "alpha_logit")]
    assert len(alphas) == 2 * 2 + 2 and all(alpha.shape == (2, 1, 1) for alpha in alphas)  # every attention, per head
    torch.nn.functional.cross_entropy(learned(src, tgt_in).flatten(0, 1), tgt_out.flatten(), ignore_index=PAD_ID).backward()
    assert all(alpha.grad is not None and alpha.grad.abs().sum() > 0 for alpha in alphas)


def test_performer_decoder_state_does_not_grow_with_the_output():
    performer = model(attention="performer", features=8)
    src, tgt_in, _ = batch()
    with torch.no_grad():
        state = performer.init_state(performer.encode(src))
        for t in range(tgt_in.size(1)):
            _, state, _ = performer.step(tgt_in[:, t], state)
            sizes = [tuple(cache.state["kv"].shape) for cache in state["caches"]]
            assert sizes == [(src.size(0), 2, 8, 8)] * 2


def test_performer_keeps_keys_of_large_norm_finite_and_shows_float32_weights_under_autocast():
    from seq2seq.models.performer import key_features, orthogonal_features

    features = orthogonal_features(64, 128, torch.Generator().manual_seed(0))
    keys = torch.randn(1, 1, 50, 128) * 4  # exponents of hundreds without the shift
    phi = key_features(keys, features, torch.ones(1, 50, dtype=torch.bool))
    assert torch.isfinite(phi).all() and phi.max() == pytest.approx(64 ** -0.5)
    performer = model(attention="performer", features=8)
    src, tgt_in, _ = batch()
    with torch.no_grad():
        plain = performer(src, tgt_in, return_attention=True)[1]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = performer(src, tgt_in, return_attention=True)[1]
    assert autocast.dtype == torch.float32 and torch.allclose(autocast.sum(-1), torch.ones_like(autocast.sum(-1)))
    assert (plain - autocast).abs().max() < 0.05
