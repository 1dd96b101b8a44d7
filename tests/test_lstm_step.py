"""DeferredLSTM over one-layer LSTMs: the same outputs and gradients as one multi-layer nn.LSTM
run one position at a time."""

import warnings

import pytest
import torch
from torch import nn

from seq2seq.kernels import probe
from seq2seq.kernels.lstm_step import DeferredLSTM, applies, split_layers

pytestmark = pytest.mark.skipif(not probe.decision("deferred_lstm"),
                                reason=f"deferred_lstm: {probe.decision('deferred_lstm').reason}")


def run_steps(rnn, step_fn, inputs, hidden, used_steps):
    """Feed ``inputs`` [B,T,In] one position at a time; the loss reads the first ``used_steps``
    outputs and the final state (when every step is used)."""
    outputs = []
    for x in inputs.unbind(1):
        output, hidden = step_fn(x.unsqueeze(1), hidden)
        outputs.append(output)
    loss = torch.cat(outputs[:used_steps], dim=1).square().sum()
    if used_steps == inputs.size(1):
        loss = loss + hidden[0].sum() + 2 * hidden[1].sum()
    return torch.cat(outputs, dim=1), loss


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("used_steps", [5, 2])
def test_matches_nn_lstm_outputs_and_gradients(bias, used_steps):
    torch.manual_seed(0)
    rnn = nn.LSTM(4, 6, num_layers=2, batch_first=True, bias=bias)
    inputs = torch.randn(3, 5, 4, requires_grad=True)
    h0, c0 = torch.randn(2, 3, 6, requires_grad=True), torch.randn(2, 3, 6, requires_grad=True)
    leaves = [inputs, h0, c0, *rnn.parameters()]

    def gradients(step_fn):
        for leaf in leaves:
            leaf.grad = None
        outputs, loss = run_steps(rnn, step_fn, inputs, (h0, c0), used_steps)
        loss.backward()
        return outputs.detach(), [leaf.grad.clone() for leaf in leaves]

    layers = split_layers(rnn)  # rnn's own parameters: the same leaves
    assert applies(layers, inputs)
    expected_outputs, expected = gradients(rnn)
    outputs, got = gradients(DeferredLSTM(layers))
    torch.testing.assert_close(outputs, expected_outputs, rtol=1e-5, atol=1e-6)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def test_dropout_only_between_layers_in_training():
    torch.manual_seed(0)
    rnn = nn.LSTM(4, 6, num_layers=2, batch_first=True, dropout=0.5)
    x, hidden = torch.randn(8, 1, 4), (torch.zeros(2, 8, 6), torch.zeros(2, 8, 6))
    layers = split_layers(rnn.eval())
    torch.testing.assert_close(DeferredLSTM(layers, 0.5)(x, hidden)[0], rnn(x, hidden)[0], rtol=1e-5, atol=1e-6)
    for layer in layers:
        layer.train()
    # Dropping half of the bottom layer's outputs changes the top layer's: not the eval result.
    assert not torch.allclose(DeferredLSTM(layers, 0.5)(x, hidden)[0], rnn(x, hidden)[0], atol=1e-4)
    with warnings.catch_warnings():  # nn.LSTM warns that one layer has nowhere to drop out
        warnings.simplefilter("ignore", UserWarning)
        one_layer = nn.LSTM(4, 6, num_layers=1, batch_first=True, dropout=0.5).train()
    # Nothing is dropped after the top layer, so one layer in training is the plain LSTM.
    single = (hidden[0][:1], hidden[1][:1])
    torch.testing.assert_close(DeferredLSTM([one_layer], 0.5)(x, single)[0], one_layer(x, single)[0],
                               rtol=1e-5, atol=1e-6)


def test_applies_only_where_it_is_faster():
    lstm, gru = nn.LSTM(4, 6, batch_first=True), nn.GRU(4, 6, batch_first=True)
    x = torch.randn(2, 1, 4)
    assert applies([lstm], x)
    assert applies([lstm, nn.LSTM(6, 6, batch_first=True)], x)
    assert not applies([gru], x)
    assert not applies([lstm, nn.GRU(6, 6, batch_first=True)], x)
    assert not applies([nn.LSTM(4, 6, num_layers=2, batch_first=True)], x)  # one layer a module
    assert not applies([nn.LSTM(4, 6, batch_first=True, bidirectional=True)], x)
    assert not applies([lstm.to(torch.bfloat16)], x.bfloat16())
    with torch.no_grad():  # decoding: nn.LSTM is as fast or faster
        assert not applies([nn.LSTM(4, 6, batch_first=True)], x)
