"""The RNN layers of attn's encoder and decoder, and how they are called.

Every layer, and every direction of an encoder layer, is a one-layer nn.RNN/GRU/LSTM of its
own (``RNNLayers``), with attn's dropout between layers: nn.RNN's built-in dropout would draw,
on a GPU, from cuDNN's own dropout state, which no checkpoint holds, so a resumed run could
not repeat its noise. The encoder runs its layers over padded rows on the CPU
(``run_to_lengths``) and over packed sequences on a GPU (``run_packed``); on a GPU every RNN
runs outside autocast (``rnn_call``).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from seq2seq.kernels import dropout
from seq2seq.kernels.precision import bf16_rnn_runs

RNN_CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}

# What nn.RNN / nn.GRU (one tensor) or nn.LSTM (an (h, c) pair) take and return: [layers, B, H].
RNNHidden = Tensor | tuple[Tensor, Tensor]


def to_layers_first(hidden: tuple[Tensor, ...]) -> RNNHidden:
    """The state's (h,) or (h, c), each [B, layers, H] -> the layout nn.RNN/GRU/LSTM expect."""
    layers_first = tuple(h.transpose(0, 1).contiguous() for h in hidden)
    return layers_first if len(layers_first) == 2 else layers_first[0]


def to_batch_first(hidden: RNNHidden) -> tuple[Tensor, ...]:
    """nn.RNN/GRU/LSTM's hidden state -> (h,) or (h, c), each [B, layers, H]."""
    parts = hidden if isinstance(hidden, tuple) else (hidden,)
    return tuple(h.transpose(0, 1) for h in parts)


def top_layer(hidden: RNNHidden) -> Tensor:
    """The top layer's h (not an LSTM's c): [B, H]."""
    h = hidden[0] if isinstance(hidden, tuple) else hidden
    return h[-1]


# ------------------------------------------------------------------------- how RNNs are called
# Each rule is a function of its own so that the tests can force the GPU's choice on the CPU.


def uses_packed_sequences(x: Tensor) -> bool:
    """Whether the encoder runs over packed sequences (a GPU) or over padded rows (the CPU)."""
    return x.device.type == "cuda"


def runs_outside_autocast(x: Tensor) -> bool:
    """Whether RNN modules run with autocast off, in their weights' dtype (see rnn_call): on a
    GPU, and on a CPU whose oneDNN has no bf16 RNN kernel (without AVX-512 it refuses one)."""
    if x.device.type == "cuda":
        return True
    return x.device.type == "cpu" and torch.is_autocast_enabled("cpu") and not bf16_rnn_runs()


def rnn_call(module: nn.RNNBase, x: Tensor | PackedSequence,
             hx: RNNHidden | None) -> tuple[Tensor | PackedSequence, RNNHidden]:
    """``module(x, hx)``; on a GPU with autocast off and x, hx in the weights' dtype.

    Autocast runs cuDNN's RNN in fp16 whatever dtype it was asked for, bf16 included, so a bf16
    run would train its RNNs in fp16, whose range bf16 runs do not guard (no loss scaling).
    Outside autocast they run in float32, with TF32 products (the trainer enables TF32). The
    weights' dtype rather than float32 itself: a bf16 copy of the model (decode.precision bf16)
    stays in bf16. On the CPU autocast keeps its say where oneDNN has a bf16 RNN kernel.
    """
    data = x.data if isinstance(x, PackedSequence) else x
    if not runs_outside_autocast(data):
        return module(x, hx)
    dtype = module.weight_ih_l0.dtype
    if hx is not None:
        hx = tuple(h.to(dtype) for h in hx) if isinstance(hx, tuple) else hx.to(dtype)
    with torch.autocast(data.device.type, enabled=False):
        return module(x.to(dtype), hx)


# ------------------------------------------------------------------------- the layers

# Checkpoints written before each layer had a module of its own hold one multi-layer nn.RNN's
# names: <prefix>weight_ih_l1_reverse is now <prefix>l1_reverse.weight_ih_l0.
_MULTI_LAYER_NAME = re.compile(r"(weight_ih|weight_hh|bias_ih|bias_hh)_l(\d+)(_reverse)?")


def rename_multi_layer_keys(module: nn.Module, state_dict: dict, prefix: str, *_) -> None:
    """A load_state_dict pre-hook of ``RNNLayers``: old names -> new ones, in place."""
    for key in [key for key in state_dict if key.startswith(prefix)]:
        match = _MULTI_LAYER_NAME.fullmatch(key[len(prefix):])
        if match:
            name, layer, reverse = match.groups()
            state_dict[f"{prefix}l{layer}{reverse or ''}.{name}_l0"] = state_dict.pop(key)


class RNNLayers(nn.ModuleDict):
    """One one-layer nn.RNN/GRU/LSTM (batch first) per layer and direction, named l0,
    l0_reverse, l1, ..., and the dropout between layers (``dropout``, run by attn).

    Called, it is a one-direction multi-layer nn.RNN/GRU/LSTM: x [B,T,In], hidden [layers,B,H]
    (an LSTM's an (h, c) pair) -> the top layer's outputs [B,T,H], the new hidden. The encoder
    runs its directions itself. The parameters come in the multi-layer module's order (l0,
    l0_reverse, l1, ...; weight_ih, weight_hh, bias_ih, bias_hh), so that the optimizer state
    of a run saved before, which is positional, still fits on resume.
    """

    def __init__(self, kind: str, input_dim: int, hidden_dim: int, layers: int, directions: int = 1,
                 dropout: float = 0.0):
        super().__init__({
            f"l{layer}{suffix}": RNN_CELLS[kind](input_dim if layer == 0 else directions * hidden_dim, hidden_dim,
                                                 batch_first=True)
            for layer in range(layers) for suffix in ("", "_reverse")[:directions]
        })
        self.num_layers, self.directions, self.dropout = layers, directions, dropout
        self.register_load_state_dict_pre_hook(rename_multi_layer_keys)

    def stack(self, reverse: bool = False) -> list[nn.RNNBase]:
        """One direction's modules, the bottom layer first."""
        suffix = "_reverse" if reverse else ""
        return [self[f"l{layer}{suffix}"] for layer in range(self.num_layers)]

    def forward(self, x: Tensor, hidden: RNNHidden) -> tuple[Tensor, RNNHidden]:
        pairs = isinstance(hidden, tuple)
        states = hidden if pairs else (hidden,)
        new_states = []
        for layer, module in enumerate(self.stack()):
            if layer > 0:
                x = dropout(x, self.dropout, self.training)
            hx = tuple(state[layer : layer + 1] for state in states)
            x, new = rnn_call(module, x, hx if pairs else hx[0])
            new_states.append(new if pairs else (new,))
        merged = tuple(torch.cat(parts) if len(parts) > 1 else parts[0] for parts in zip(*new_states))
        return x, merged if pairs else merged[0]


# ------------------------------------------------------------------------- the encoder


def reverse_within_lengths(x: Tensor, lengths: Tensor) -> Tensor:
    """Each row's first ``length`` positions in reverse order, padding left where it is: [B,S,*].

    Its own inverse. A backward RNN over the result reads each sentence from its last real
    token, and its padding comes last, as in the forward direction.
    """
    positions = torch.arange(x.size(1), device=x.device).unsqueeze(0)
    lengths = lengths.unsqueeze(1)
    index = torch.where(positions < lengths, lengths - 1 - positions, positions)
    return x.gather(1, index.unsqueeze(-1).expand_as(x))


# Runs one layer and direction: (module, x [B,S,D], final_state) -> outputs [B,S,H] (exact at
# real positions), the state (h,) or (h, c), each [B,H], after each row's own last token
# (None when not asked for, where that saves work).
DirectionRunner = Callable[[nn.RNNBase, Tensor, bool], tuple[Tensor, tuple[Tensor, ...] | None]]


def run_to_lengths(module: nn.RNNBase, x: Tensor, final_state: bool, lengths: Tensor,
                   shortest: int) -> tuple[Tensor, tuple[Tensor, ...] | None]:
    """A DirectionRunner over padded rows, the CPU's way (rows padded at the end).

    Padding comes after a row's tokens, so the outputs need one fused call over all positions.
    The final state needs more: the positions every row has run in one fused call, and the few
    after the shortest row's end one call a step, where a row that has ended keeps its state
    (``shortest`` is lengths.min(), read by the caller once for all layers).
    On the CPU this beats packed sequences, which run a generic per-step path whose backward
    zero-fills a gradient of the whole input at every step (README, "Why the fast paths").
    """
    lstm = isinstance(module, nn.LSTM)
    zeros = x.new_zeros(1, x.size(0), module.hidden_size)
    state = (zeros, zeros) if lstm else (zeros,)

    def call(inputs: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        output, new_state = rnn_call(module, inputs, state if lstm else state[0])
        return output, new_state if lstm else (new_state,)

    if not final_state:
        return call(x, state)[0], None
    output, state = call(x[:, :shortest], state)
    outputs = [output]
    # unbind, not x[:, t]: one backward node for the tail, not one whole-input gradient a step.
    for t, x_t in enumerate(x[:, shortest:].unbind(1), start=shortest):
        output, new_state = call(x_t.unsqueeze(1), state)
        running = (lengths > t).view(1, -1, 1)
        state = tuple(torch.where(running, new, old) for new, old in zip(new_state, state))
        outputs.append(output)
    return torch.cat(outputs, dim=1), tuple(s.squeeze(0) for s in state)


def run_packed(module: nn.RNNBase, x: Tensor, final_state: bool,
               cpu_lengths: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
    """A DirectionRunner over packed sequences, the GPU's way: one call, whose final state is
    each row's own (so ``final_state`` changes nothing); outputs are zero at padding."""
    packed = pack_padded_sequence(x, cpu_lengths, batch_first=True, enforce_sorted=False)
    output, hidden = rnn_call(module, packed, None)
    outputs, _ = pad_packed_sequence(output, batch_first=True, total_length=x.size(1))
    return outputs, tuple(h.squeeze(0) for h in (hidden if isinstance(hidden, tuple) else (hidden,)))
