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
from torch import Tensor, _VF, nn

from seq2seq.config import ModelConfig
from seq2seq.data.special import PAD_ID
from seq2seq.kernels import Dropout, Linear, dropout, lstm_step
from seq2seq.models.attention import build_attention, context_size
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


# The fused one-layer, one-direction RNN functions that nn.RNN/GRU/LSTM call themselves.
RNN_FUNCTIONS = {"rnn": _VF.rnn_tanh, "lstm": _VF.lstm, "gru": _VF.gru}


def reverse_within_lengths(x: Tensor, lengths: Tensor) -> Tensor:
    """Each row's first ``length`` positions in reverse order, padding left where it is: [B,S,*].

    Its own inverse. A backward RNN over the result reads each sentence from its last real
    token, and its padding comes last, as in the forward direction.
    """
    positions = torch.arange(x.size(1), device=x.device).unsqueeze(0)
    lengths = lengths.unsqueeze(1)
    index = torch.where(positions < lengths, lengths - 1 - positions, positions)
    return x.gather(1, index.unsqueeze(-1).expand_as(x))


def run_to_lengths(kind: str, x: Tensor, lengths: Tensor, shortest: int, weights: list[Tensor], training: bool,
                   final_state: bool = True) -> tuple[Tensor, tuple[Tensor, ...] | None]:
    """One RNN layer and direction over x [B,S,D], padded at the end of each row.

    -> outputs [B,S,H] (exact at real positions, anything at padding), and the state (h,) or
    (h, c), each [B,H], after each row's *own* last token (None unless ``final_state``).
    Padding comes after a row's tokens, so the outputs need one fused call over all positions.
    The final state needs more: the positions every row has run in one fused call, and the few
    after the shortest row's end one call a step, where a row that has ended keeps its state
    (``shortest`` is lengths.min(), read by the caller once for all layers).
    This replaces packed sequences, which on the CPU run a generic per-step path whose backward
    zero-fills a gradient of the whole input at every step: the packed 2-layer bi-LSTM encoder
    of config R took 175-343 ms a batch forward and backward, against 121-129 ms for the fused
    kernel over the same padded batch.
    """
    run = RNN_FUNCTIONS[kind]
    hidden_size = weights[1].size(1)
    zeros = x.new_zeros(1, x.size(0), hidden_size)
    state = (zeros, zeros) if kind == "lstm" else (zeros,)

    def call(inputs: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        hx = state if kind == "lstm" else state[0]
        output, *new_state = run(inputs, hx, weights, len(weights) == 4, 1, 0.0, training, False, True)
        return output, tuple(new_state)

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


class RNNEncoder(nn.Module):
    """Embeds the source and runs a (bi)directional RNN over each sentence's real tokens."""

    def __init__(self, cfg: ModelConfig, embedding: nn.Embedding):
        super().__init__()
        self.embedding = embedding
        self.kind = cfg.arch
        self.directions = 2 if cfg.bidirectional else 1
        self.output_dim = self.directions * (cfg.hidden_dim // self.directions)
        # Kept as an nn.RNN/GRU/LSTM for its parameters (and their names in checkpoints);
        # forward runs it one layer and direction at a time (see run_to_lengths).
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
        """-> outputs [B,S,H] (zero on padding), final top-layer (h,) or (h, c), each [B,H]."""
        lengths = src_mask.sum(dim=1)
        shortest = int(lengths.min())  # read once (on a GPU, a wait for the device)
        layer_input = self.dropout(self.embedding(src))
        top = self.rnn.num_layers - 1
        for layer in range(top + 1):
            if layer > 0:
                layer_input = dropout(layer_input, self.rnn.dropout, self.training)
            outputs, finals = run_to_lengths(self.kind, layer_input, lengths, shortest, self._weights(layer, ""),
                                             self.training, final_state=layer == top)
            if self.directions == 2:
                backward_outputs, backward_finals = run_to_lengths(
                    self.kind, reverse_within_lengths(layer_input, lengths), lengths, shortest,
                    self._weights(layer, "_reverse"), self.training, final_state=layer == top)
                outputs = torch.cat([outputs, reverse_within_lengths(backward_outputs, lengths)], dim=-1)
                if layer == top:
                    finals = tuple(torch.cat(pair, dim=-1) for pair in zip(finals, backward_finals))
            layer_input = outputs
        return layer_input.masked_fill(~src_mask.unsqueeze(-1), 0.0), finals

    def _weights(self, layer: int, suffix: str) -> list[Tensor]:
        names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if self.rnn.bias else [])
        return [getattr(self.rnn, f"{name}_l{layer}{suffix}") for name in names]


class Bridge(nn.Module):
    """Decoder initial state from the encoder's final one: tanh(W s + b), for every layer.

    One projection per state tensor (h, and c for an LSTM); each maps the encoder's top layer
    to all decoder layers at once, so encoder and decoder depths may differ.
    """

    def __init__(self, encoder_dim: int, hidden_dim: int, layers: int, num_states: int):
        super().__init__()
        self.layers = layers
        self.projections = nn.ModuleList(
            Linear(encoder_dim, layers * hidden_dim) for _ in range(num_states)
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
        self.attentional = Linear(context_dim + cfg.hidden_dim, cfg.hidden_dim, bias=False)
        num_states = 2 if cfg.arch == "lstm" else 1
        self.bridge = None
        if cfg.bridge:
            self.bridge = Bridge(encoder_dim, cfg.hidden_dim, cfg.decoder_layers, num_states)
        # A tied output matrix is the embedding table, so it reads embed_dim-wide vectors.
        self.to_embedding = nn.Identity()
        if cfg.tie_embeddings and cfg.hidden_dim != cfg.embed_dim:
            self.to_embedding = Linear(cfg.hidden_dim, cfg.embed_dim, bias=False)
        self.output = Linear(cfg.embed_dim if cfg.tie_embeddings else cfg.hidden_dim, vocab_size)
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
            state["feed"] = memory.new_zeros(batch, 1, self.hidden_dim)
        return state

    def forward(self, tgt_in: Tensor, state: dict, project: bool = True) -> tuple[Tensor, Tensor]:
        """Teacher forcing over the whole target: -> logits [B,T,V], attention weights [B,T,S].
        With ``project=False`` the vectors that ``self.output`` would project."""
        embedded = self.dropout(self.embedding(tgt_in))
        hidden = to_layers_first(state["hidden"])
        if self.style == "luong" and not self.input_feeding:
            # Nothing flows from one step's attention into the next: one RNN call over the whole
            # target, then one batched attention for all steps.
            outputs, _ = self.rnn(embedded, hidden)
            context, weights = self._attend(outputs, state, first_step=state["step"])
            attentional = torch.tanh(self.attentional(torch.cat([context, outputs], dim=-1)))
        else:
            attentional_t = state.get("feed")  # read back only by Luong input feeding
            rnn = lstm_step.DeferredLSTM(self.rnn) if lstm_step.applies(self.rnn, embedded) else self.rnn
            outputs, step_weights = [], []
            # unbind, not embedded[:, t]: one backward node for all steps; T slices would each
            # zero-fill a gradient the size of the whole target.
            for t, embedded_t in enumerate(embedded.unbind(1)):
                attentional_t, hidden, weights_t = self._decode_step(
                    embedded_t.unsqueeze(1), hidden, attentional_t, state, state["step"] + t, rnn
                )
                outputs.append(attentional_t)
                step_weights.append(weights_t)
            attentional, weights = torch.cat(outputs, dim=1), torch.cat(step_weights, dim=1)
        features = self._features(attentional)
        return (self.output(features) if project else features), weights

    def step(self, prev_tokens: Tensor, state: dict) -> tuple[Tensor, dict, Tensor]:
        """One target position: prev_tokens [B] -> logits [B,V], new state, weights [B,S]."""
        embedded = self.dropout(self.embedding(prev_tokens.unsqueeze(1)))
        hidden = to_layers_first(state["hidden"])
        attentional, hidden, weights = self._decode_step(
            embedded, hidden, state.get("feed"), state, state["step"], self.rnn
        )
        new_state = {**state, "hidden": to_batch_first(hidden), "step": state["step"] + 1}
        if self.input_feeding:
            new_state["feed"] = attentional
        return self.output(self._features(attentional)).squeeze(1), new_state, weights.squeeze(1)

    def _decode_step(
        self, embedded: Tensor, hidden: RNNHidden, feed: Tensor | None, state: dict, step: int,
        rnn: nn.Module | lstm_step.DeferredLSTM,
    ) -> tuple[Tensor, RNNHidden, Tensor]:
        """One position; embedded [B,1,E] -> attentional state [B,1,H], new hidden, weights [B,1,S].

        ``rnn`` is nn.RNN/GRU/LSTM itself, one step per call: its fused CPU kernel (oneDNN)
        beat both a hand-written cell and one whose embedding projection is computed for all
        positions at once (W_ih [y; h~] = W_y y + W_h h~), by 30-45%, forward and backward;
        or, for an LSTM in training, ``DeferredLSTM``, which beats it by computing the weight
        gradients of all steps in one product (see lstm_step.py).
        """
        if self.style == "bahdanau":
            context, weights = self._attend(top_layer(hidden).unsqueeze(1), state, step)
            output, hidden = rnn(torch.cat([embedded, context], dim=-1), hidden)
        else:
            rnn_input = torch.cat([embedded, feed], dim=-1) if self.input_feeding else embedded
            output, hidden = rnn(rnn_input, hidden)
            context, weights = self._attend(output, state, step)
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

    def _features(self, attentional: Tensor) -> Tensor:
        """What the output layer projects to the vocabulary."""
        return self.to_embedding(self.dropout(attentional))



class RNNSeq2Seq(nn.Module):
    """The RNN encoder-decoder behind attn's model interface (encode, init_state, step, ...)."""

    def __init__(self, cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int):
        super().__init__()
        self.config = cfg
        self.src_vocab_size = src_vocab_size
        self.tgt_vocab_size = tgt_vocab_size
        self.max_positions: int | None = None  # an RNN reads any length
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

    @property
    def output_layer(self) -> nn.Linear:
        return self.decoder.output

    def forward(
        self, src: Tensor, tgt_in: Tensor, return_attention: bool = False, features_only: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        logits, attention = self.decoder(tgt_in, self.init_state(self.encode(src)), project=not features_only)
        return (logits, attention) if return_attention else logits

    def step(self, prev_tokens: Tensor, state: dict) -> tuple[Tensor, dict, Tensor]:
        return self.decoder.step(prev_tokens, state)

    def reorder(self, state: dict, indices: Tensor) -> dict:
        return reorder_state(state, indices)
