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

Every layer, and every direction of an encoder layer, is a one-layer RNN of its own, with
attn's dropout between layers (rnn_layers.py).

Every state tensor keeps the batch on dim 0 (see state.py), so the decoder state stores the
RNN state as [B, layers, H] and converts to nn.RNN's [layers, B, H] around each call.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seq2seq.config import ModelConfig
from seq2seq.data.special import PAD_ID
from seq2seq.kernels import Dropout, Linear, dropout, lstm_step
from seq2seq.models.attention import build_attention, context_size
from seq2seq.models.hard_attention import marginal_log_probs
from seq2seq.models.rnn_layers import (DirectionRunner, RNNHidden, RNNLayers, reverse_within_lengths, run_packed,
                                       run_to_lengths, to_batch_first, to_layers_first, top_layer,
                                       uses_packed_sequences)
from seq2seq.models.scores import Attended
from seq2seq.models.state import SharedRows, reorder_state

class RNNEncoder(nn.Module):
    """Embeds the source and runs a (bi)directional RNN over each sentence's real tokens."""

    def __init__(self, cfg: ModelConfig, embedding: nn.Embedding):
        super().__init__()
        self.embedding = embedding
        self.directions = 2 if cfg.bidirectional else 1
        self.output_dim = self.directions * (cfg.hidden_dim // self.directions)
        self.rnn = RNNLayers(cfg.arch, cfg.embed_dim, cfg.hidden_dim // self.directions, cfg.encoder_layers,
                             self.directions, cfg.dropout)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, src: Tensor, src_mask: Tensor,
                host_lengths: Tensor | None = None) -> tuple[Tensor, tuple[Tensor, ...]]:
        """-> outputs [B,S,H] (zero on padding), final top-layer (h,) or (h, c), each [B,H].
        ``host_lengths``: the rows' lengths on the CPU where the caller has them (training's
        batches do), so that packing them on a GPU need not wait for the device."""
        lengths = src_mask.sum(dim=1)
        layer_input = self.dropout(self.embedding(src))
        run: DirectionRunner
        if uses_packed_sequences(layer_input):
            # pack_padded_sequence reads the lengths on the CPU: without the caller's, one copy
            # (and wait) a batch.
            cpu_lengths = host_lengths if host_lengths is not None else lengths.cpu()
            run = functools.partial(run_packed, cpu_lengths=cpu_lengths)
        else:
            run = functools.partial(run_to_lengths, lengths=lengths, shortest=int(lengths.min()))
        top = self.rnn.num_layers - 1
        for layer in range(top + 1):
            if layer > 0:
                layer_input = dropout(layer_input, self.rnn.dropout, self.training)
            last = layer == top
            outputs, finals = run(self.rnn[f"l{layer}"], layer_input, last)
            if self.directions == 2:
                backward_outputs, backward_finals = run(
                    self.rnn[f"l{layer}_reverse"], reverse_within_lengths(layer_input, lengths), last)
                outputs = torch.cat([outputs, reverse_within_lengths(backward_outputs, lengths)], dim=-1)
                if last:
                    finals = tuple(torch.cat(pair, dim=-1) for pair in zip(finals, backward_finals))
            layer_input = outputs
        return layer_input.masked_fill(~src_mask.unsqueeze(-1), 0.0), finals


# ------------------------------------------------------------------------- the decoder


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
        self.rnn = RNNLayers(cfg.arch, rnn_input_dim, cfg.hidden_dim, cfg.decoder_layers, dropout=cfg.dropout)
        self.attention = build_attention(cfg, cfg.hidden_dim, encoder_dim)
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
            # What the mechanism carries from step to step (coverage, alignment, means), if anything.
            "attention": self.attention.initial_state(memory, encoded["mask"]),
            "step": 0,
        }
        if self.input_feeding:
            state["feed"] = memory.new_zeros(batch, 1, self.hidden_dim)
        return state

    @property
    def marginalises(self) -> bool:
        """Exact hard attention: the output is summed over every source position."""
        return getattr(self.attention, "mode", None) == "exact"

    def forward(self, tgt_in: Tensor, state: dict, project: bool = True) -> tuple[Tensor, Tensor, dict]:
        """Teacher forcing over the whole target: -> logits [B,T,V], attention weights [B,T,S] and
        the terms the training objective may need (objective.py): hard attention's
        ``log_probs`` [B,T,S] and, for exact hard attention, the ``candidates`` [B,T,S,E] (the features
        of every source position; the logits are then log p(y) summed over them). With
        ``project=False`` the vectors that ``self.output`` would project."""
        embedded = self.dropout(self.embedding(tgt_in))
        hidden = to_layers_first(state["hidden"])
        if self.style == "luong" and not self.input_feeding and not state["attention"]:
            # Nothing flows from one step's attention into the next: one RNN call over the whole
            # target, then one batched attention for all steps.
            outputs, _ = self.rnn(embedded, hidden)
            attended = self._attend(outputs, state, state["attention"], first_step=state["step"])
            attentional, candidates = self._combine(attended, outputs, state)
            weights, log_probs = attended.weights, attended.log_probs
        else:
            attentional_t, attention_state = state.get("feed"), state["attention"]
            rnn: RNNLayers | lstm_step.DeferredLSTM = self.rnn
            if lstm_step.applies(self.rnn.stack(), embedded):
                rnn = lstm_step.DeferredLSTM(self.rnn.stack(), self.rnn.dropout)
            steps = []
            # unbind, not embedded[:, t]: one backward node for all steps; T slices would each
            # zero-fill a gradient the size of the whole target.
            for t, embedded_t in enumerate(embedded.unbind(1)):
                attentional_t, hidden, attended, candidates_t = self._decode_step(
                    embedded_t.unsqueeze(1), hidden, attentional_t, state, attention_state, state["step"] + t, rnn
                )
                attention_state = attended.state
                steps.append((attentional_t, attended.weights, attended.log_probs, candidates_t))
            attentional, weights, log_probs, candidates = (
                None if column[0] is None else torch.cat(column, dim=1) for column in zip(*steps)
            )
        features = self._features(attentional)
        terms = {"log_probs": log_probs}
        if candidates is not None:
            terms["candidates"] = self._features(candidates)
        if not project:
            return features, weights, terms
        if candidates is not None:
            marginal = marginal_log_probs(self.output(terms["candidates"]), log_probs)
            return marginal.to(features.dtype), weights, terms
        return self.output(features), weights, terms

    def step(self, prev_tokens: Tensor, state: dict) -> tuple[Tensor, dict, Tensor]:
        """One target position: prev_tokens [B] -> logits [B,V], new state, weights [B,S]."""
        embedded = self.dropout(self.embedding(prev_tokens.unsqueeze(1)))
        hidden = to_layers_first(state["hidden"])
        attentional, hidden, attended, candidates = self._decode_step(
            embedded, hidden, state.get("feed"), state, state["attention"], state["step"], self.rnn
        )
        new_state = {**state, "hidden": to_batch_first(hidden), "attention": attended.state,
                     "step": state["step"] + 1}
        if self.input_feeding:
            new_state["feed"] = attentional
        if candidates is not None:
            logits = marginal_log_probs(self.output(self._features(candidates)), attended.log_probs)
            logits = logits.to(attentional.dtype)
        else:
            logits = self.output(self._features(attentional))
        return logits.squeeze(1), new_state, attended.weights.squeeze(1)

    def _decode_step(
        self, embedded: Tensor, hidden: RNNHidden, feed: Tensor | None, state: dict, attention_state: dict,
        step: int, rnn: RNNLayers | lstm_step.DeferredLSTM,
    ) -> tuple[Tensor, RNNHidden, Attended, Tensor | None]:
        """One position; embedded [B,1,E] -> attentional state [B,1,H], new hidden, what the
        attention returned, and the candidates of exact hard attention (else None).

        ``rnn`` is the decoder's RNNLayers, whose nn.RNN/GRU/LSTM layers each take one step a
        call: their fused CPU kernel (oneDNN) beat both a hand-written cell and one whose
        embedding projection is computed for all positions at once (W_ih [y; h~] = W_y y +
        W_h h~), forward and backward; or, for an LSTM in training, ``DeferredLSTM``,
        which beats it by computing the weight gradients of all steps in one product (see
        lstm_step.py).
        """
        if self.style == "bahdanau":
            attended = self._attend(top_layer(hidden).unsqueeze(1), state, attention_state, step)
            output, hidden = rnn(torch.cat([embedded, attended.context], dim=-1), hidden)
        else:
            rnn_input = torch.cat([embedded, feed], dim=-1) if self.input_feeding else embedded
            output, hidden = rnn(rnn_input, hidden)
            attended = self._attend(output, state, attention_state, step)
        attentional, candidates = self._combine(attended, output, state)
        return attentional, hidden, attended, candidates

    def _combine(self, attended: Attended, output: Tensor, state: dict) -> tuple[Tensor, Tensor | None]:
        """The attentional state h~ = tanh(W_c [c; h]) [B,T,H]. Exact hard attention has no
        single c: it returns the h~ of every source position s, tanh(W_c [v_s; h])
        [B,T,S,H], as candidates, and their expectation under p(s) as the state fed onwards."""
        if not self.marginalises:
            return torch.tanh(self.attentional(torch.cat([attended.context, output], dim=-1))), None
        values = state["memory"].expanded()["values"]
        from_values = F.linear(values, self.attentional.weight[:, :values.size(-1)])  # [B,S,H]
        from_output = F.linear(output, self.attentional.weight[:, values.size(-1):])  # [B,T,H]
        candidates = torch.tanh(from_values.unsqueeze(1) + from_output.unsqueeze(2))
        expected = (attended.weights.unsqueeze(-1).to(candidates.dtype) * candidates).sum(dim=2)
        return expected, candidates

    def _attend(self, queries: Tensor, state: dict, attention_state: dict, first_step: int) -> Attended:
        """queries [B,T,H] -> what the attention returns (context [B,T,C], weights [B,T,S], ...).

        When each sentence's memory is shared by a group of g rows (its beams), and the
        attention treats queries independently, the g rows' queries go in as g queries of
        one memory entry: [B/g, g, H], with no copy of the memory per row.
        """
        memory: SharedRows = state["memory"]
        group = memory.group
        if group > 1 and self.attention.independent_queries and queries.size(1) == 1:
            m = memory.entries
            batch = queries.size(0)
            attended = self.attention(
                queries.reshape(batch // group, group, -1), m["keys"], m["values"], m["mask"], first_step,
                attention_state,
            )
            rows = lambda t: None if t is None else t.reshape(batch, 1, -1)  # noqa: E731
            return attended._replace(context=rows(attended.context), weights=rows(attended.weights),
                                     log_probs=rows(attended.log_probs))
        m = memory.expanded()
        return self.attention(queries, m["keys"], m["values"], m["mask"], first_step, attention_state)

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

    def encode(self, src: Tensor, host_lengths: Tensor | None = None) -> dict:
        mask = src != PAD_ID
        memory, final = self.encoder(src, mask, host_lengths)
        return {"memory": memory, "mask": mask, "final": final}

    def init_state(self, encoded: dict) -> dict:
        return self.decoder.init_state(encoded)

    @property
    def output_layer(self) -> nn.Linear:
        return self.decoder.output

    def forward(
        self, src: Tensor, tgt_in: Tensor, return_attention: bool = False, features_only: bool = False,
        host_lengths: Tensor | None = None, objective_terms: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor] | tuple[Tensor, dict]:
        """-> logits [B,T,V] (or, ``features_only``, what the output layer projects), with the
        attention weights [B,T,S] when ``return_attention``; ``objective_terms`` returns instead
        a dict of what the training objective may need: ``weights`` and RNNDecoder.forward's
        terms."""
        encoded = self.encode(src, host_lengths)
        logits, attention, terms = self.decoder(tgt_in, self.init_state(encoded), project=not features_only)
        if objective_terms:
            return logits, {"weights": attention, **terms}
        return (logits, attention) if return_attention else logits

    def step(self, prev_tokens: Tensor, state: dict) -> tuple[Tensor, dict, Tensor]:
        return self.decoder.step(prev_tokens, state)

    def reorder(self, state: dict, indices: Tensor) -> dict:
        return reorder_state(state, indices)
