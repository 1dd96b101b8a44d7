"""An LSTM run one position at a time in training, whose weight gradients wait for one product.

An attentional decoder runs its RNN one target position at a time. With nn.LSTM, every step
is a call of oneDNN's RNN primitive, which reorders the weights into its own layout, and
every backward call computes that one step's weight gradient, a product over only B rows,
and adds it to the others. ``DeferredLSTM`` runs a step as one product of [x; h] with the
stacked weights [W_ih W_hh] plus the gate arithmetic. Its backward returns at once what the
earlier steps wait for (the gradients of x, h and c) but only keeps the step's gate
gradients; when every step is done, one product over all T*B rows gives the weight gradient.

It is faster than nn.LSTM in training, with the same gradients to float rounding; without
gradients (decoding) nn.LSTM is as fast or faster, so it stays there (figures in the README,
"Why the fast paths"); ``applies`` says where this one is used.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from seq2seq.kernels import probe
from seq2seq.kernels.fastops import dropout
from seq2seq.kernels.onednn import onednn_matmul_nt, uses_onednn


def applies(layers: Sequence[nn.Module], x: Tensor) -> bool:
    """Whether ``DeferredLSTM(layers)`` should run steps of input ``x``: plain one-layer,
    one-direction LSTMs, in float32 on the CPU with oneDNN, and gradients wanted."""
    return (all(isinstance(lstm, nn.LSTM) and lstm.num_layers == 1 and not lstm.bidirectional and lstm.proj_size == 0
                and lstm.batch_first for lstm in layers)
            and torch.is_grad_enabled() and uses_onednn(x, layers[0].weight_ih_l0)
            and probe.get("deferred_lstm") is not None)


class DeferredLSTM:
    """Runs one-layer LSTMs stacked (``layers``, the bottom one first), with ``dropout``
    between them while they are in training, as one multi-layer nn.LSTM on one position:
    (x [B,1,In], (h, c) each [layers,B,H]) -> (output [B,1,H], (h, c)). Made once per
    forward pass, for the steps of that pass."""

    def __init__(self, layers: Sequence[nn.LSTM], dropout: float = 0.0):
        self.layers = []
        for lstm in layers:
            stash: list[tuple[Tensor, Tensor]] = []  # this layer's steps' (gate gradients, [x; h])
            self.layers.append((*_LayerWeights.apply(*_stacked(lstm), stash), stash))
        self.dropout = dropout
        self.training = layers[0].training

    def __call__(self, x: Tensor, hidden: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        layer_input = x.squeeze(1)
        hs, cs = [], []
        for i, (weight, weight_t, bias, stash) in enumerate(self.layers):
            if i > 0:  # between layers, not after the top one (as nn.LSTM's own dropout)
                layer_input = dropout(layer_input, self.dropout, self.training)
            h, c = _LSTMStep.apply(layer_input, hidden[0][i], hidden[1][i], weight, weight_t, bias, stash)
            hs.append(h)
            cs.append(c)
            layer_input = h
        return layer_input.unsqueeze(1), (torch.stack(hs), torch.stack(cs))


def _stacked(lstm: nn.LSTM) -> tuple[Tensor, Tensor]:
    """A one-layer LSTM's [W_ih W_hh] [4H, In+H] and b_ih + b_hh [4H] (zeros without biases)."""
    weight = torch.cat([lstm.weight_ih_l0, lstm.weight_hh_l0], dim=1)
    if not lstm.bias:
        return weight, weight.new_zeros(weight.size(0))
    return weight, lstm.bias_ih_l0 + lstm.bias_hh_l0


def split_layers(rnn: nn.LSTM) -> list[nn.LSTM]:
    """A one-layer nn.LSTM for each layer of the one-direction ``rnn``, holding ``rnn``'s own
    parameters (the very tensors), in its mode: what DeferredLSTM runs, to compare with ``rnn``."""
    layers = []
    for layer in range(rnn.num_layers):
        lstm = nn.LSTM(rnn.input_size if layer == 0 else rnn.hidden_size, rnn.hidden_size, bias=rnn.bias,
                       batch_first=rnn.batch_first).train(rnn.training)
        for name in ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if rnn.bias else []):
            setattr(lstm, f"{name}_l0", getattr(rnn, f"{name}_l{layer}"))
        layers.append(lstm)
    return layers


class _LayerWeights(torch.autograd.Function):
    """Hands a layer's weight, its transpose (for the steps' input gradients) and bias to the
    steps; its backward, which autograd runs after every step's, turns the gate gradients they
    stashed into the weight's and bias's gradients."""

    @staticmethod
    def forward(ctx, weight: Tensor, bias: Tensor, stash: list) -> tuple[Tensor, Tensor, Tensor]:
        ctx.stash = stash
        ctx.set_materialize_grads(False)  # the steps send these no gradients: no zeros to make
        weight_t = weight.t().contiguous()
        ctx.mark_non_differentiable(weight_t)
        return weight.view_as(weight), weight_t, bias.view_as(bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, _grad_weight, _grad_weight_t, _grad_bias):
        if not ctx.stash:  # no step reached the loss
            return None, None, None
        gate_grads = torch.cat([g for g, _ in ctx.stash])  # [T*B, 4H]
        inputs = torch.cat([xh for _, xh in ctx.stash])  # [T*B, In+H]
        ctx.stash.clear()
        grad_weight = onednn_matmul_nt(gate_grads.t(), inputs.t())
        grad_bias = gate_grads.sum(dim=0) if ctx.needs_input_grad[1] else None
        return grad_weight, grad_bias, None


class _LSTMStep(torch.autograd.Function):
    """One layer, one position: x [B,In], h, c [B,H] -> new h, c. Gate order i, f, g, o (torch's)."""

    @staticmethod
    def forward(ctx, x, h, c, weight, weight_t, bias, stash):
        xh = torch.cat([x, h], dim=1)
        gates = onednn_matmul_nt(xh, weight, bias)
        size = h.size(1)
        gates[:, : 2 * size].sigmoid_()
        gates[:, 2 * size : 3 * size].tanh_()
        gates[:, 3 * size :].sigmoid_()
        i, f, g, o = gates.split(size, dim=1)
        new_c = torch.addcmul(f * c, i, g)
        tanh_c = torch.tanh(new_c)
        ctx.save_for_backward(xh, gates, c, tanh_c, weight_t)
        ctx.stash = stash
        return o * tanh_c, new_c

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_h, grad_c):
        xh, gates, c, tanh_c, weight_t = ctx.saved_tensors
        size = c.size(1)
        i, f, g, o = gates.split(size, dim=1)
        # (grad_h and grad_c are never None: autograd passes zeros for an output the loss did
        # not read, the last step's c for one.)
        grad_c_total = grad_h * o * (1 - tanh_c * tanh_c) + grad_c  # c reaches h through tanh
        gate_grads = torch.empty_like(gates)  # d loss / d pre-activation, per gate
        grad_i, grad_f, grad_g, grad_o = gate_grads.split(size, dim=1)
        torch.mul(grad_c_total * g, i * (1 - i), out=grad_i)
        torch.mul(grad_c_total * c, f * (1 - f), out=grad_f)
        torch.mul(grad_c_total * i, 1 - g * g, out=grad_g)
        torch.mul(grad_h * tanh_c, o * (1 - o), out=grad_o)
        ctx.stash.append((gate_grads, xh))
        grad_xh = onednn_matmul_nt(gate_grads, weight_t)
        inputs = xh.size(1) - size
        return grad_xh[:, :inputs], grad_xh[:, inputs:], grad_c_total * f, None, None, None, None


def matches_nn_lstm() -> bool:
    """The probe's check: a tiny 2-layer nn.LSTM run step by step gives the same outputs and
    gradients (inputs, weights) as DeferredLSTM over its layers, split as the decoder holds them."""
    rnn = nn.LSTM(5, 4, num_layers=2, batch_first=True)
    x = torch.randn(3, 4, 5, requires_grad=True)
    hidden = (torch.zeros(2, 3, 4), torch.zeros(2, 3, 4))
    results = []
    for run in (rnn, DeferredLSTM(split_layers(rnn))):
        state, outputs = hidden, []
        for t in range(x.size(1)):
            output, state = run(x[:, t : t + 1], state)
            outputs.append(output)
        out = torch.cat(outputs, dim=1)
        grads = torch.autograd.grad(out.square().sum(), [x, rnn.weight_ih_l0, rnn.weight_hh_l1, rnn.bias_ih_l1])
        results.append((out.detach(), *grads))
    return all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(*results))


@probe.register("deferred_lstm")
def _probe_deferred_lstm() -> tuple[object, str]:
    if probe.get("onednn_linear") is None:
        return None, "needs onednn_linear"
    if not matches_nn_lstm():
        return None, "DeferredLSTM's gradients disagree with nn.LSTM's"
    return True, "LSTM decoder steps defer their weight gradients to one product"
