"""The CPU replacements for standard operations (``seq2seq.kernels.fastops``) against torch's own."""

from __future__ import annotations

import pytest
import torch

from seq2seq.kernels.fastops import dropout, relu_dropout, tanh_


def test_tanh_in_place_matches_torch_tanh_forward_and_backward():
    x = torch.linspace(-12, 12, 2001)
    reference = x.clone().requires_grad_()
    mine = x.clone().requires_grad_()
    expected = torch.tanh(reference)
    got = tanh_(mine * 1.0)  # in place on a non-leaf, as in additive attention
    torch.testing.assert_close(got, expected, atol=2e-7, rtol=0)
    weights = torch.randn(x.shape)
    (expected * weights).sum().backward()
    (got * weights).sum().backward()
    torch.testing.assert_close(mine.grad, reference.grad, atol=1e-6, rtol=1e-5)


def test_tanh_output_read_by_a_later_layer_keeps_both_gradients_right():
    """The backward overwrites the saved output; the layer after tanh read it first."""
    x = torch.randn(6, 5)
    w = torch.randn(5, 3)
    reference_x, mine_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    reference_w, mine_w = w.clone().requires_grad_(), w.clone().requires_grad_()
    (torch.tanh(reference_x) @ reference_w).square().sum().backward()
    (tanh_(mine_x * 1.0) @ mine_w).square().sum().backward()
    torch.testing.assert_close(mine_x.grad, reference_x.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mine_w.grad, reference_w.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_dropout_keeps_the_expectation_and_the_drop_rate(p):
    torch.manual_seed(0)
    x = torch.ones(400_000)
    y = dropout(x, p)
    kept = y != 0
    assert abs(1.0 - kept.float().mean().item() - p) < 0.005
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], y[kept][0].item()))
    assert abs(y.mean().item() - 1.0) < 0.01
    assert dropout(x, p, training=False) is x


def test_relu_dropout_gradient_passes_exactly_where_the_output_is_positive():
    torch.manual_seed(1)
    x = torch.randn(300, 40, requires_grad=True)
    out = relu_dropout(x * 1.0, 0.25)
    scale = out[out > 0].div(x.detach()[out > 0])
    torch.testing.assert_close(scale, torch.full_like(scale, scale[0].item()))  # one factor, ~1/0.75
    assert abs(scale[0].item() - 1 / 0.75) < 1e-3
    assert (out[x.detach() <= 0] == 0).all()
    grad = torch.randn(out.shape)
    out.backward(grad)
    torch.testing.assert_close(x.grad, torch.where(out > 0, grad * scale[0], torch.zeros_like(grad)))
    plain = torch.randn(5, 4)
    expected = torch.relu(plain)
    assert torch.equal(relu_dropout(plain, 0.25, training=False), expected)
    # In evaluation it works in place unless a gradient must flow back through x.
    with_grad = torch.randn(5, 4, requires_grad=True)
    assert torch.equal(relu_dropout(with_grad, 0.25, training=False), torch.relu(with_grad))
    assert (with_grad < 0).any()  # x itself unchanged
