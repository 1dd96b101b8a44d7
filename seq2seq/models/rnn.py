"""RNN encoder-decoder with attention (Bahdanau et al. 2015; Luong et al. 2015).

Encoder: embeddings -> a (bi)directional RNN, tanh / LSTM / GRU cells. Its outputs are the
attention keys and values; a bidirectional encoder uses hidden_dim // 2 units per direction
so that its outputs are hidden_dim wide, like the decoder's state.

Decoder, one target position at a time, in one of two styles:

    bahdanau  attend with the previous state s_{t-1}; the cell reads [y_{t-1}; c_t]
    luong     the cell reads y_{t-1} (and, with input feeding, the previous h~); attend with
              its new output h_t

Both then form the attentional state h~_t = tanh(W_c [c_t; h_t]) and project it to the
target vocabulary (through the tied input embedding when model.tie_embeddings).

Every state tensor keeps the batch on dim 0 (see state.py), so the decoder state stores the
RNN state as [B, layers, H] and converts to nn.RNN's [layers, B, H] around each call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seq2seq.config import ModelConfig
from seq2seq.data.special import PAD_ID
from seq2seq.models.attention import build_attention, context_size
from seq2seq.models.fastops import Dropout, dropout
from seq2seq.models.state import SharedRows, reorder_state

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


class RNNEncoder(nn.Module):
    """Embeds the source and runs a packed (bi)directional RNN over its real tokens."""

    def __init__(self, cfg: ModelConfig, embedding: nn.Embedding):
        super().__init__()
        self.embedding = embedding
        self.directions = 2 if cfg.bidirectional else 1
        self.output_dim = self.directions * (cfg.hidden_dim // self.directions)
        self.rnn = RNN_CELLS[cfg.arch](
            cfg.embed_dim,
            cfg.hidden_dim // self.directions,
            num_layers=cfg.encoder_layers,
            bidirectional=cfg.bidirectional,
            batch_first=True,
            dropout=cfg.dropout if cfg.encoder_layers > 1 else 0.0,
        )
        self.dropout = Dropout(cfg.dropout)

    def forward(self, src: Tensor, src_mask: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        """-> outputs [B,S,H] (zero on padding), final top-layer (h,) or (h, c), each [B,H].

        The RNN must stop at each sentence's end, so padding never changes the outputs or the
        final state (the backward direction starts at the real last token). Sentences of equal
        length run together, one RNN call per distinct length (about 5 per training batch),
        each without padding. This is what packing computes, but packed sequences run one
        time step at a time on the CPU, and the backward pass of each step zero-fills a
        gradient buffer the size of the whole batch: quadratic in the length, and most of a
        training step of config R.
        """
        embedded = self.dropout(self.embedding(src))
        width = src.size(1)
        lengths = src_mask.sum(dim=1).tolist()
        if min(lengths) == width:  # no padding at all
            outputs, final = self.rnn(embedded)
            finals = final if isinstance(final, tuple) else (final,)
            return outputs, tuple(self._top_layer(state) for state in finals)
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # longest first, stable
        group_lengths, group_sizes = [], []
        for i in order:
            if group_lengths and group_lengths[-1] == lengths[i]:
                group_sizes[-1] += 1
            else:
                group_lengths.append(lengths[i])
                group_sizes.append(1)
        permutation = torch.tensor(order, device=src.device)
        inverse = torch.empty_like(permutation)
        inverse[permutation] = torch.arange(len(order), device=src.device)
        groups = embedded.index_select(0, permutation).split(group_sizes, dim=0)
        outputs, finals = [], []
        for group, length in zip(groups, group_lengths):
            out, final = self.rnn(group[:, :length])
            outputs.append(F.pad(out, (0, 0, 0, width - length)))  # zero on padding
            finals.append(final if isinstance(final, tuple) else (final,))
        outputs = torch.cat(outputs, dim=0).index_select(0, inverse)
        finals = tuple(torch.cat(parts, dim=1).index_select(1, inverse) for parts in zip(*finals))
        return outputs, tuple(self._top_layer(state) for state in finals)

    def _top_layer(self, state: Tensor) -> Tensor:
        """[layers * directions, B, h] -> top layer, directions concatenated: [B, directions * h]."""
        top = state[-self.directions :]
        return top.transpose(0, 1).reshape(state.size(1), -1)


class Bridge(nn.Module):
    """Decoder initial state from the encoder's final one: tanh(W s + b), for every layer.

    One projection per state tensor (h, and c for an LSTM); each maps the encoder's top layer
    to all decoder layers at once, so encoder and decoder depths may differ.
    """

    def __init__(self, encoder_dim: int, hidden_dim: int, layers: int, num_states: int):
        super().__init__()
        self.layers = layers
        self.projections = nn.ModuleList(
            nn.Linear(encoder_dim, layers * hidden_dim) for _ in range(num_states)
        )

    def forward(self, finals: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """(h,) or (h, c), each [B, encoder_dim] -> the same, each [B, layers, hidden_dim]."""
        return tuple(
            torch.tanh(project(final)).view(final.size(0), self.layers, -1)
            for project, final in zip(self.projections, finals)
        )


class RNNDecoder(nn.Module):
    """Attentional RNN decoder, Bahdanau or Luong style (see the module docstring)."""

    def __init__(self, cfg: ModelConfig, embedding: nn.Embedding, encoder_dim: int, vocab_size: int):
        super().__init__()
        self.embedding = embedding
        self.style = cfg.decoder_style
        self.input_feeding = cfg.decoder_style == "luong" and cfg.input_feeding
        self.layers = cfg.decoder_layers
        self.hidden_dim = cfg.hidden_dim
        self.embed_dim = cfg.embed_dim
        context_dim = context_size(cfg.attention, encoder_dim)
        if self.style == "bahdanau":
            rnn_input_dim = cfg.embed_dim + context_dim  # [y_{t-1}; c_t]
        elif self.input_feeding:
            rnn_input_dim = cfg.embed_dim + cfg.hidden_dim  # [y_{t-1}; h~_{t-1}]
        else:
            rnn_input_dim = cfg.embed_dim
        self.rnn = RNN_CELLS[cfg.arch](
            rnn_input_dim,
            cfg.hidden_dim,
            num_layers=cfg.decoder_layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.decoder_layers > 1 else 0.0,
        )
        self.attention = build_attention(
            cfg.attention, cfg.hidden_dim, encoder_dim, cfg.window, cfg.local_score
        )
        self.attentional = nn.Linear(context_dim + cfg.hidden_dim, cfg.hidden_dim, bias=False)
        num_states = 2 if cfg.arch == "lstm" else 1
        self.bridge = None
        if cfg.bridge:
            self.bridge = Bridge(encoder_dim, cfg.hidden_dim, cfg.decoder_layers, num_states)
        # A tied output matrix is the embedding table, so it reads embed_dim-wide vectors.
        self.to_embedding = nn.Identity()
        if cfg.tie_embeddings and cfg.hidden_dim != cfg.embed_dim:
            self.to_embedding = nn.Linear(cfg.hidden_dim, cfg.embed_dim, bias=False)
        self.output = nn.Linear(cfg.embed_dim if cfg.tie_embeddings else cfg.hidden_dim, vocab_size)
        if cfg.tie_embeddings:
            self.output.weight = embedding.weight
        self.dropout = Dropout(cfg.dropout)

    def init_state(self, encoded: dict) -> dict:
        memory = encoded["memory"]
        batch = memory.size(0)
        if self.bridge is not None:
            hidden = self.bridge(encoded["final"])
        else:
            zeros = memory.new_zeros(batch, self.layers, self.hidden_dim)
            hidden = tuple(zeros for _ in encoded["final"])
        state = {
            # Keys are projected once per sentence, not once per step; shared by a sentence's
            # beams, so beam search does not copy them at every step (state.SharedRows).
            "memory": SharedRows(
                {"keys": self.attention.precompute(memory), "values": memory, "mask": encoded["mask"]}
            ),
            "hidden": hidden,
            "step": 0,
        }
        if self.input_feeding:
            state["feed"] = memory.new_zeros(batch, self.hidden_dim)
        return state

    def forward(self, tgt_in: Tensor, state: dict) -> tuple[Tensor, Tensor]:
        """Teacher forcing over the whole target: -> logits [B,T,V], attention weights [B,T,S]."""
        embedded = self.dropout(self.embedding(tgt_in))
        if self.style == "luong" and not self.input_feeding:
            # Nothing flows from one step's attention into the next: one RNN call over the whole
            # target, then one batched attention for all steps.
            outputs, _ = self.rnn(embedded, to_layers_first(state["hidden"]))
            context, weights = self._attend(outputs, state, first_step=state["step"])
            attentional = torch.tanh(self.attentional(torch.cat([context, outputs], dim=-1)))
            return self._logits(attentional), weights
        # One position at a time. The embedding's share of the first layer's input projection
        # (and the biases) does not depend on earlier steps: one matmul for all positions.
        cells = StepCells(self.rnn, self.embed_dim)
        inputs = cells.project_inputs(embedded).unbind(1)  # unbind: one backward op, not T
        hidden = layers_of(state["hidden"])
        attentional_t = state.get("feed")  # read back only by Luong input feeding
        outputs, step_weights = [], []
        for t, projected in enumerate(inputs):
            attentional_t, hidden, weights_t = self._decode_step(
                projected, hidden, attentional_t, state, state["step"] + t, cells
            )
            outputs.append(attentional_t)
            step_weights.append(weights_t)
        attentional, weights = torch.stack(outputs, dim=1), torch.stack(step_weights, dim=1)
        return self._logits(attentional), weights

    def step(self, prev_tokens: Tensor, state: dict) -> tuple[Tensor, dict, Tensor]:
        """One target position: prev_tokens [B] -> logits [B,V], new state, weights [B,S]."""
        embedded = self.dropout(self.embedding(prev_tokens))
        cells = self._step_cells()
        attentional, hidden, weights = self._decode_step(
            cells.project_inputs(embedded), layers_of(state["hidden"]), state.get("feed"), state,
            state["step"], cells,
        )  # fmt: skip
        new_state = {**state, "hidden": stack_layers(hidden), "step": state["step"] + 1}
        if self.input_feeding:
            new_state["feed"] = attentional
        return self._logits(attentional), new_state, weights

    def _step_cells(self) -> "StepCells":
        """StepCells for ``step``. Without autograd (decoding) the joined weights are kept
        between steps, as long as no parameter changed (version counters, storage)."""
        if torch.is_grad_enabled():
            return StepCells(self.rnn, self.embed_dim)
        key = tuple((id(p), p._version, p.data_ptr()) for p in self.rnn.parameters())
        cached = getattr(self, "_cells_cache", None)
        if cached is None or cached[0] != key:
            cached = (key, StepCells(self.rnn, self.embed_dim))
            self._cells_cache = cached
        return cached[1]

    def _decode_step(
        self, projected: Tensor, hidden: list[tuple[Tensor, ...]], feed: Tensor | None, state: dict,
        step: int, cells: "StepCells",
    ) -> tuple[Tensor, list[tuple[Tensor, ...]], Tensor]:
        """One position; ``projected`` [B,G] is the embedding's share of the first layer's input
        projection -> attentional state [B,H], new hidden (per layer), weights [B,S]."""
        if self.style == "bahdanau":
            context, weights = self._attend(hidden[-1][0].unsqueeze(1), state, step)
            context, weights = context.squeeze(1), weights.squeeze(1)
            output, hidden = cells(projected, context, hidden, self.training)
        else:
            output, hidden = cells(projected, feed if self.input_feeding else None, hidden, self.training)
            context, weights = self._attend(output.unsqueeze(1), state, step)
            context, weights = context.squeeze(1), weights.squeeze(1)
        attentional = torch.tanh(self.attentional(torch.cat([context, output], dim=-1)))
        return attentional, hidden, weights

    def _attend(self, queries: Tensor, state: dict, first_step: int) -> tuple[Tensor, Tensor]:
        """queries [B,T,H] -> context [B,T,C], weights [B,T,S].

        When each sentence's memory is shared by a group of g rows (its beams), and the
        attention treats queries independently, the g rows' queries go in as g queries of
        one memory entry: [B/g, g, H], with no copy of the memory per row.
        """
        memory: SharedRows = state["memory"]
        group = memory.group
        if group > 1 and getattr(self.attention, "independent_queries", False) and queries.size(1) == 1:
            m = memory.entries
            batch = queries.size(0)
            context, weights = self.attention(
                queries.reshape(batch // group, group, -1), m["keys"], m["values"], m["mask"], first_step
            )
            return context.reshape(batch, 1, -1), weights.reshape(batch, 1, -1)
        m = memory.expanded()
        return self.attention(queries, m["keys"], m["values"], m["mask"], first_step)

    def _logits(self, attentional: Tensor) -> Tensor:
        return self.output(self.to_embedding(self.dropout(attentional)))


def layers_of(hidden: tuple[Tensor, ...]) -> list[tuple[Tensor, ...]]:
    """The state's (h,) or (h, c), each [B, layers, H] -> per layer (h,) or (h, c), each [B, H]."""
    return list(zip(*(h.unbind(1) for h in hidden)))


def stack_layers(hidden: list[tuple[Tensor, ...]]) -> tuple[Tensor, ...]:
    """Inverse of ``layers_of``."""
    return tuple(torch.stack(parts, dim=1) for parts in zip(*hidden))


class StepCells:
    """A multi-layer nn.RNN / nn.GRU / nn.LSTM run one time step at a time, with its own
    parameters (so checkpoints are unchanged) but without nn.RNN's per-call overhead.

    The first layer's input is [x; extra] (the embedding, then the input feed or context):
    ``project_inputs`` applies the x part of the input weights (plus the biases that do not
    depend on the step) to any number of positions at once, and each step adds
    [extra; h] @ [W_extra; W_hh]^T as one matmul (GRU: two, since its reset gate multiplies
    the recurrent part alone). Between layers, dropout as nn.RNN applies it (training only).
    Built once per forward call: the weights it prepares are shared by every step.
    """

    def __init__(self, rnn: nn.RNNBase, input_dim: int):
        self.mode = rnn.mode  # "LSTM", "GRU", "RNN_TANH", "RNN_RELU"
        self.dropout = rnn.dropout
        self.layers = []  # per layer: _LayerWeights
        for layer in range(rnn.num_layers):
            w_ih = getattr(rnn, f"weight_ih_l{layer}")
            w_in = w_ih[:, input_dim:] if layer == 0 else w_ih  # layer 0: the extra input's part
            self.layers.append(_LayerWeights(
                w_in if w_in.size(1) else None,
                getattr(rnn, f"weight_hh_l{layer}"),
                getattr(rnn, f"bias_ih_l{layer}", None),
                getattr(rnn, f"bias_hh_l{layer}", None),
                joined=self.mode != "GRU",
            ))  # fmt: skip
        self.w_x = rnn.weight_ih_l0[:, :input_dim]

    def project_inputs(self, x: Tensor) -> Tensor:
        """x [..., input_dim] -> x W_x^T + the step-independent biases of layer 0: [..., G]."""
        return F.linear(x, self.w_x, self.layers[0].bias)

    def __call__(
        self, projected: Tensor, extra: Tensor | None, hidden: list[tuple[Tensor, ...]], training: bool
    ) -> tuple[Tensor, list[tuple[Tensor, ...]]]:
        """One step of every layer: -> top layer's output [B,H], new per-layer hidden."""
        new_hidden = []
        x = extra
        for i, layer in enumerate(self.layers):
            if i > 0:
                if training and self.dropout:
                    x = dropout(x, self.dropout, True)
                projected = layer.bias
            state = hidden[i]
            h = state[0]
            if self.mode == "GRU":
                gi = _affine(projected, x, layer.w_in)
                state = (gru_cell(gi, F.linear(h, layer.w_hh, layer.b_hh), h),)
            else:
                if layer.w_in is None:
                    gates = _affine(projected, h, layer.w_hh)
                else:
                    gates = _affine(projected, torch.cat([x, h], dim=-1), layer.w_joined)
                if self.mode == "LSTM":
                    state = lstm_cell(gates, state[1])
                else:
                    state = (torch.tanh(gates) if self.mode == "RNN_TANH" else torch.relu(gates),)
            new_hidden.append(state)
            x = state[0]
        return x, new_hidden


class _LayerWeights:
    """One layer's weights for StepCells. LSTM/RNN (``joined``): the input and recurrent
    matrices side by side, and both biases summed, so a step is one matmul."""

    def __init__(self, w_in: Tensor | None, w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None,
                 joined: bool):
        self.w_in, self.w_hh, self.b_hh = w_in, w_hh, b_hh
        self.bias = b_ih
        self.w_joined = None
        if joined:
            if b_hh is not None:
                self.bias = b_hh if b_ih is None else b_ih + b_hh
            if w_in is not None:
                self.w_joined = torch.cat([w_in, w_hh], dim=1)


def _affine(bias: Tensor | None, x: Tensor | None, weight: Tensor | None) -> Tensor:
    """bias + x W^T, where bias may be [B, G] or [G], and a missing x or W adds nothing."""
    if x is None or weight is None:
        return bias
    return x @ weight.t() if bias is None else torch.addmm(bias, x, weight.t())


def lstm_cell(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """LSTM update from the summed gate pre-activations [B, 4H] (order i, f, g, o as nn.LSTM)."""
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def gru_cell(gi: Tensor, gh: Tensor, h: Tensor) -> Tensor:
    """GRU update from the input and recurrent projections [B, 3H] (order r, z, n as nn.GRU)."""
    i_r, i_z, i_n = gi.chunk(3, dim=-1)
    h_r, h_z, h_n = gh.chunk(3, dim=-1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return n + z * (h - n)


class RNNSeq2Seq(nn.Module):
    """The RNN encoder-decoder behind attn's model interface (encode, init_state, step, ...)."""

    def __init__(self, cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int):
        super().__init__()
        self.config = cfg
        self.src_vocab_size = src_vocab_size
        self.tgt_vocab_size = tgt_vocab_size
        self.max_source_positions: int | None = None  # an RNN reads any length
        src_embedding = nn.Embedding(src_vocab_size, cfg.embed_dim)
        tgt_embedding = src_embedding
        if not cfg.share_vocab:
            tgt_embedding = nn.Embedding(tgt_vocab_size, cfg.embed_dim)
        self.encoder = RNNEncoder(cfg, src_embedding)
        self.decoder = RNNDecoder(cfg, tgt_embedding, self.encoder.output_dim, tgt_vocab_size)

    def encode(self, src: Tensor) -> dict:
        mask = src != PAD_ID
        memory, final = self.encoder(src, mask)
        return {"memory": memory, "mask": mask, "final": final}

    def init_state(self, encoded: dict) -> dict:
        return self.decoder.init_state(encoded)

    def forward(
        self, src: Tensor, tgt_in: Tensor, return_attention: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        logits, attention = self.decoder(tgt_in, self.init_state(self.encode(src)))
        return (logits, attention) if return_attention else logits

    def step(self, prev_tokens: Tensor, state: dict) -> tuple[Tensor, dict, Tensor]:
        return self.decoder.step(prev_tokens, state)

    def reorder(self, state: dict, indices: Tensor) -> dict:
        return reorder_state(state, indices)
