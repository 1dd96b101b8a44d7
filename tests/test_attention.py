"""The attention math alone: masks, windows, score functions, and every RNN mechanism."""

import math

import pytest
import torch

from seq2seq.config import ModelConfig
from seq2seq.models.attention import build_attention, gaussian_weights, window_mask
from seq2seq.models.normalizers import masked_softmax
from seq2seq.models.multihead import attention_with_weights, band_mask, causal_mask, encoder_self_mask
from seq2seq.models.transformer import sinusoidal_positions

DIM = 8
# Two sentences: 6 real tokens, and 3 real tokens + 3 padding.
KEY_MASK = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
REAL_LENGTHS = KEY_MASK.sum(dim=1)

GLOBAL = ["additive", "dot", "general", "scaled_dot"]
LOCAL = [(kind, score) for kind in ("local_m", "local_p") for score in GLOBAL]


def random_inputs(steps: int = 4, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    queries = torch.randn(2, steps, DIM, generator=generator)
    encoder_outputs = torch.randn(2, 6, DIM, generator=generator)
    return queries, encoder_outputs


def mechanism(kind: str, key_dim: int = DIM, **settings):
    """The RNN attention ``kind`` of a model section with ``settings``, queries DIM wide."""
    return build_attention(ModelConfig(attention=kind, **settings), DIM, key_dim)


def attend(attention, queries, encoder_outputs, first_step=0):
    """-> context, weights of a stateless mechanism."""
    keys = attention.precompute(encoder_outputs)
    return attention(queries, keys, encoder_outputs, KEY_MASK, first_step)[:2]


# ------------------------------------------------------------------ pure helpers


def test_masked_softmax_zero_on_masked_and_sums_to_one():
    scores = torch.tensor([[1.0, 50.0, 2.0, -3.0]])
    mask = torch.tensor([[True, False, True, True]])
    weights = masked_softmax(scores, mask)
    assert weights[0, 1] == 0.0
    assert weights.sum().item() == pytest.approx(1.0)
    expected = torch.softmax(torch.tensor([1.0, 2.0, -3.0]), dim=0)
    assert torch.allclose(weights[0, [0, 2, 3]], expected)


def test_window_mask_marks_centre_plus_minus_half_width():
    mask = window_mask(torch.tensor([0.0, 3.0, 2.5]), length=6, half_width=1)
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0, 0],
            [0, 0, 1, 1, 1, 0],
            [0, 0, 1, 1, 0, 0],  # a real-valued centre (local_p): |s - 2.5| <= 1 for s = 2, 3
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)


def test_gaussian_weights_peak_at_centre():
    weights = gaussian_weights(torch.tensor([2.0]), length=5, sigma=1.0)[0]
    assert weights[2].item() == pytest.approx(1.0)
    assert weights[1].item() == pytest.approx(math.exp(-0.5))
    assert weights[4].item() == pytest.approx(math.exp(-2.0))


# ------------------------------------------------------------------ mechanisms


@pytest.mark.parametrize("kind", GLOBAL)
def test_global_attention_weights_are_a_distribution_over_real_tokens(kind):
    attention = mechanism(kind)
    queries, encoder_outputs = random_inputs()
    context, weights = attend(attention, queries, encoder_outputs)
    assert context.shape == (2, 4, DIM) and weights.shape == (2, 4, 6)
    assert torch.all(weights[1, :, 3:] == 0.0)
    assert torch.allclose(weights.sum(dim=-1), torch.ones(2, 4))
    assert torch.allclose(context, weights @ encoder_outputs)


def test_dot_scores_match_the_formulas():
    queries, encoder_outputs = random_inputs()
    _, dot = attend(mechanism("dot"), queries, encoder_outputs)
    _, scaled = attend(mechanism("scaled_dot"), queries, encoder_outputs)
    raw = queries[0] @ encoder_outputs[0].T
    assert torch.allclose(dot[0], raw.softmax(-1), atol=1e-6)
    assert torch.allclose(scaled[0], (raw / math.sqrt(DIM)).softmax(-1), atol=1e-6)


def test_additive_precompute_is_the_key_projection():
    attention = mechanism("additive")
    _, encoder_outputs = random_inputs()
    projected = attention.precompute(encoder_outputs)
    assert torch.allclose(projected, attention.score.key_proj(encoder_outputs))


@pytest.mark.parametrize("kind,score", LOCAL)
def test_local_attention_is_zero_outside_window_and_on_padding(kind, score):
    half_width = 1
    attention = mechanism(kind, window=half_width, local_score=score)
    queries, encoder_outputs = random_inputs(steps=5)
    _, weights = attend(attention, queries, encoder_outputs)
    centres = attention.centres(queries, REAL_LENGTHS, first_step=0)
    outside = ~window_mask(centres, 6, half_width)
    assert outside.any()  # the window really excludes something
    assert torch.all(weights[outside] == 0.0)
    assert torch.all(weights[1, :, 3:] == 0.0)
    if kind == "local_m":
        assert torch.allclose(weights.sum(dim=-1), torch.ones(2, 5))
    else:
        # Luong's Gaussian scales the window softmax after normalising: sums are below 1,
        # and dividing the Gaussian back out gives a distribution over the window.
        gaussian = gaussian_weights(centres, 6, sigma=half_width / 2)
        assert torch.all(weights.sum(dim=-1) <= 1.0 + 1e-6)
        assert torch.allclose((weights / gaussian).sum(dim=-1), torch.ones(2, 5), atol=1e-5)


def test_local_m_centres_on_the_step_clamped_to_the_last_real_token():
    attention = mechanism("local_m", window=1, local_score="dot")
    queries, _ = random_inputs(steps=2)
    centres = attention.centres(queries, REAL_LENGTHS, first_step=4)  # steps 4 and 5
    assert torch.equal(centres, torch.tensor([[4.0, 5.0], [2.0, 2.0]]))


def test_local_p_centres_stay_inside_the_real_sentence():
    attention = mechanism("local_p", window=2)
    queries = torch.randn(2, 50, DIM) * 10
    centres = attention.centres(queries, REAL_LENGTHS, first_step=0)
    assert torch.all(centres >= 0)
    assert torch.all(centres <= (REAL_LENGTHS - 1).unsqueeze(1))


@pytest.mark.parametrize("kind", ["local_m", "local_p"])
def test_local_windows_sit_where_float32_puts_them_in_a_bf16_model(kind):
    """bf16 cannot count past 256 (its 281, 282 and 283 all read 280), so a bf16 model that
    placed its windows in its own precision would look at the wrong words of long sentences."""
    torch.manual_seed(0)
    attention = mechanism(kind, window=2, local_score="dot")
    queries, encoder_outputs = torch.randn(1, 4, DIM), torch.randn(1, 300, DIM)
    key_mask = torch.ones(1, 300, dtype=torch.bool)
    with torch.no_grad():
        if kind == "local_p":  # p_t = 299 * sigmoid(v^T tanh(W_p h_t)) = 281.4, which bf16 would round
            attention.position[0].weight.copy_(torch.eye(DIM) * 50)
            queries[..., 0] = 1.0  # tanh(50) = 1 in dimension 0, the only one v reads
            attention.position[2].weight.fill_(0.0)
            attention.position[2].weight[0, 0] = math.log(281.4 / (299 - 281.4))
        windows = {}
        for dtype in (torch.float32, torch.bfloat16):
            attention.to(dtype)
            keys = attention.precompute(encoder_outputs.to(dtype))
            weights = attention(queries.to(dtype), keys, encoder_outputs.to(dtype), key_mask, first_step=281).weights
            windows[dtype] = [row.nonzero().flatten().tolist() for row in weights[0]]
    assert windows[torch.bfloat16] == windows[torch.float32]
    if kind == "local_m":
        assert windows[torch.float32][0] == [279, 280, 281, 282, 283]


@pytest.mark.parametrize("kind,score", [(kind, "general") for kind in GLOBAL] + LOCAL)
def test_all_steps_at_once_equals_one_step_at_a_time(kind, score):
    attention = mechanism(kind, window=1, local_score=score)
    queries, encoder_outputs = random_inputs(steps=5)
    context, weights = attend(attention, queries, encoder_outputs)
    for t in range(5):
        context_t, weights_t = attend(attention, queries[:, t : t + 1], encoder_outputs, first_step=t)
        assert torch.allclose(context_t[:, 0], context[:, t], atol=1e-6)
        assert torch.allclose(weights_t[:, 0], weights[:, t], atol=1e-6)


def test_no_attention_gives_empty_context_and_zero_weights():
    attention = mechanism("none")
    queries, encoder_outputs = random_inputs()
    context, weights = attend(attention, queries, encoder_outputs)
    assert context.shape == (2, 4, 0)
    assert torch.all(weights == 0.0)


def test_dot_attention_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="equal query and key sizes"):
        mechanism("dot", key_dim=DIM + 1)


# ------------------------------------------------------------------ transformer masks


def test_causal_mask_is_lower_triangular():
    assert torch.equal(causal_mask(4), torch.ones(4, 4, dtype=torch.bool).tril())


def test_band_mask():
    band = band_mask(5, 5, half_width=1, causal=False)
    i, j = torch.meshgrid(torch.arange(5), torch.arange(5), indexing="ij")
    assert torch.equal(band, (i - j).abs() <= 1)
    causal_band = band_mask(5, 5, half_width=1, causal=True)
    assert torch.equal(causal_band, (i - j >= 0) & (i - j <= 1))
    # One query at position 4 over keys 0..4, as in incremental decoding.
    assert torch.equal(band_mask(1, 5, 1, causal=True, query_offset=4), causal_band[4:])


def test_band_mask_gives_exactly_zero_weight_outside_the_band():
    q, k, v = torch.randn(3, 1, 2, 6, 4).unbind(0)
    band = band_mask(6, 6, half_width=2, causal=False)
    _, weights = attention_with_weights(q, k, v, band, dropout=0.0)
    assert torch.all(weights[..., ~band] == 0.0)
    assert torch.allclose(weights.sum(-1), torch.ones(1, 2, 6))


def test_encoder_window_mask_never_masks_a_whole_row():
    src_mask = torch.tensor([[True, True, False, False, False, False, False]])
    mask = encoder_self_mask(src_mask, half_width=1)
    assert mask.any(dim=-1).all()
    # Real queries see only real keys inside their band.
    first_two_rows = torch.tensor([[1, 1, 0, 0, 0, 0, 0]] * 2, dtype=torch.bool)
    assert torch.equal(mask[0, 0, :2], first_two_rows)


def test_sinusoidal_positions():
    table = sinusoidal_positions(torch.arange(10), 6)
    assert table.shape == (10, 6)
    assert torch.allclose(table[0], torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0]))
    assert table[3, 0].item() == pytest.approx(math.sin(3.0))
