"""FAVOR+ kernel attention (seq2seq/models/performer.py): its estimate of softmax attention,
the equality of its causal forms, and the properties decoding relies on."""

from __future__ import annotations

import pytest
import torch

from seq2seq.models.performer import (attend_summary, causal_linear_attention, feature_map, linear_attention,
                                      orthogonal_features, recurrent_step, summarise_keys)

B, H, DH = 3, 2, 16


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _qkv(t: int, s: int, seed: int = 0, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = _generator(seed)
    return (torch.randn(B, H, t, DH, generator=g) * scale, torch.randn(B, H, s, DH, generator=g) * scale,
            torch.randn(B, H, s, DH, generator=g))


def _phi(q: torch.Tensor, k: torch.Tensor, m: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    features = orthogonal_features(m, DH, _generator(seed))
    return feature_map(q, features, is_query=True), feature_map(k, features)


def _step_by_step(qf: torch.Tensor, kf: torch.Tensor, v: torch.Tensor, state=None):
    outs = []
    for t in range(qf.size(2)):
        out, state = recurrent_step(qf[:, :, t:t + 1], kf[:, :, t:t + 1], v[:, :, t:t + 1], state)
        outs.append(out)
    return torch.cat(outs, dim=2), state


def test_the_error_against_softmax_attention_falls_like_one_over_sqrt_m():
    # |q| and |k| about 2: the estimator's variance grows like exp(|q + k|^2 / sqrt(dh)).
    q, k, v = _qkv(8, 10, scale=0.5)
    exact = torch.softmax(q @ k.transpose(-1, -2) / DH ** 0.5, dim=-1) @ v
    errors = []
    for m in (16, 64, 256, 1024):
        seeds = range(8)
        errors.append(sum((linear_attention(*_phi(q, k, m, seed), v) - exact).abs().mean().item()
                          for seed in seeds) / len(seeds))
    assert errors == sorted(errors, reverse=True), errors
    # 64 times the features: 1/sqrt(m) predicts 8 times less error (measured: 5 to 6); a factor
    # 2 either way. A biased estimate plateaus: e.g. |x|^2 / 4 for |x|^2 / 2 in phi gives 3.4.
    assert 4.0 < errors[0] / errors[-1] < 16.0, errors


@pytest.mark.parametrize("chunk", [64, 5, 1])  # one chunk; chunks and a ragged last one; a chunk a position
def test_prefix_sums_equal_the_recurrent_steps(chunk):
    q, k, v = _qkv(12, 12)
    qf, kf = _phi(q, k)
    stepped, _ = _step_by_step(qf, kf, v)
    torch.testing.assert_close(causal_linear_attention(qf, kf, v, chunk=chunk), stepped, atol=1e-5, rtol=0)


@pytest.mark.parametrize("chunk", [64, 4])
def test_a_future_token_changes_no_earlier_output(chunk):
    q, k, v = _qkv(9, 9)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 5] += 3.0
    v2[:, :, 5] -= 2.0
    before = causal_linear_attention(*_phi(q, k), v, chunk=chunk)
    after = causal_linear_attention(*_phi(q, k2), v2, chunk=chunk)
    assert torch.equal(before[:, :, :5], after[:, :, :5])
    assert not torch.allclose(before[:, :, 5:], after[:, :, 5:])  # the change does reach position 5 on


def test_a_reordered_state_carries_each_rows_whole_history():
    q, k, v = _qkv(7, 7)
    qf, kf = _phi(q, k)
    history, future = slice(0, 4), slice(4, 7)
    _, state = _step_by_step(qf[:, :, history], kf[:, :, history], v[:, :, history])
    idx = torch.tensor([2, 0, 2])  # as beam search does: a row copied, a row dropped, rows moved
    state = {name: tensor.index_select(0, idx) for name, tensor in state.items()}
    resumed, _ = _step_by_step(qf[idx][:, :, future], kf[idx][:, :, future], v[idx][:, :, future], state)
    from_scratch, _ = _step_by_step(qf[idx], kf[idx], v[idx])
    torch.testing.assert_close(resumed, from_scratch[:, :, future], atol=1e-6, rtol=0)


def test_a_summary_is_linear_attention_and_padding_adds_nothing():
    q, k, v = _qkv(5, 6)
    qf, kf = _phi(q, k)
    torch.testing.assert_close(attend_summary(qf, *summarise_keys(kf, v, None)), linear_attention(qf, kf, v))
    # Each row padded with three keys that would dominate if they counted (even NaN values).
    pad_k = torch.full((B, H, 3, DH), 2.0)
    pad_v = torch.full((B, H, 3, DH), float("nan"))
    _, padded_kf = _phi(q, torch.cat([k, pad_k], dim=2))
    mask = torch.tensor([True] * 6 + [False] * 3).expand(B, 9)
    for key_mask in (mask, mask[:, None, None, :]):
        padded = linear_attention(qf, padded_kf, torch.cat([v, pad_v], dim=2), key_mask)
        torch.testing.assert_close(padded, linear_attention(qf, kf, v), atol=1e-6, rtol=1e-5)


def test_orthogonal_features_are_seeded_orthogonal_blocks():
    features = orthogonal_features(40, DH, _generator(1))  # two full blocks and 8 rows of a third
    assert features.shape == (40, DH)
    for block in (features[:16], features[16:32], features[32:]):
        gram = block @ block.T
        torch.testing.assert_close(gram - torch.diag(gram.diagonal()), torch.zeros_like(gram), atol=1e-4, rtol=0)
    assert torch.equal(features, orthogonal_features(40, DH, _generator(1)))
    assert not torch.allclose(features, orthogonal_features(40, DH, _generator(2)))
    norms = features.norm(dim=-1)
    assert norms.std() > 0.1 and 2.5 < norms.mean() < 5.5  # chi(16) norms: mean ~3.9, not all one


def test_features_are_positive_float32_for_bf16_input():
    features = orthogonal_features(32, DH, _generator(0))
    x = (torch.randn(B, H, 5, DH) * 3).bfloat16()
    for is_query in (False, True):
        phi = feature_map(x, features, is_query)
        assert phi.dtype == torch.float32 and bool((phi > 0).all())
