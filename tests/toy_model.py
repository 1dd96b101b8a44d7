"""Tiny models with attn's decoding interface, for testing search without the real models.

``ToyAttentionGRU``: a small GRU encoder-decoder with dot attention whose ``forward`` is
literally a loop over ``step``, so teacher-forced and step-wise scores agree exactly.

``TransitionModel``: the next-token distribution depends only on the previous token (a fixed
table), so the best output is known by hand.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from seq2seq.data.special import BOS_ID, EOS_ID, PAD_ID


def reorder(state: dict[str, Tensor], indices: Tensor) -> dict[str, Tensor]:
    return {name: value.index_select(0, indices) for name, value in state.items()}


class ToyAttentionGRU(nn.Module):
    def __init__(self, vocab_size: int = 12, dim: int = 16, seed: int = 0, init_scale: float = 1.0):
        super().__init__()
        self.tgt_vocab_size = vocab_size
        self.max_positions = None  # reads any length (seq2seq.models.interface)
        self.src_embed = nn.Embedding(vocab_size, dim)
        self.encoder = nn.GRU(dim, dim, batch_first=True)  # one direction: right-padding cannot leak in
        self.tgt_embed = nn.Embedding(vocab_size, dim)
        self.decoder = nn.GRUCell(dim, dim)
        self.output = nn.Linear(2 * dim, vocab_size)
        # Seeded and larger than default weights: peaked distributions, outputs of varied length.
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * init_scale)

    def encode(self, src: Tensor) -> dict[str, Tensor]:
        mask = src != PAD_ID
        memory, _ = self.encoder(self.src_embed(src))
        return {"memory": memory, "mask": mask}

    def init_state(self, encoded: dict[str, Tensor]) -> dict[str, Tensor]:
        mask = encoded["mask"].unsqueeze(2).to(encoded["memory"].dtype)
        hidden = (encoded["memory"] * mask).sum(1) / mask.sum(1)
        return {**encoded, "hidden": torch.tanh(hidden)}

    def step(self, prev_tokens: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        hidden = self.decoder(self.tgt_embed(prev_tokens), state["hidden"])
        scores = torch.einsum("bsd,bd->bs", state["memory"], hidden)
        attention = scores.masked_fill(~state["mask"], float("-inf")).softmax(dim=-1)
        context = torch.einsum("bs,bsd->bd", attention, state["memory"])
        logits = self.output(torch.cat([hidden, context], dim=-1))
        return logits, {**state, "hidden": hidden}, attention

    def reorder(self, state: dict[str, Tensor], indices: Tensor) -> dict[str, Tensor]:
        return reorder(state, indices)

    def forward(self, src: Tensor, tgt_in: Tensor, return_attention: bool = False):
        state = self.init_state(self.encode(src))
        all_logits, all_attention = [], []
        for t in range(tgt_in.size(1)):
            logits, state, attention = self.step(tgt_in[:, t], state)
            all_logits.append(logits)
            all_attention.append(attention)
        logits = torch.stack(all_logits, dim=1)
        return (logits, torch.stack(all_attention, dim=1)) if return_attention else logits


# Token ids of the transition table (after the four special symbols).
A, B, C, D = 4, 5, 6, 7


class TransitionModel(nn.Module):
    """P(next | previous) from a fixed table, ignoring the source.

    From BOS, A (0.5) beats B (0.4), so greedy takes A; but A's continuations are spread
    out (best: C, 0.35, then EOS, 0.3) while B almost surely ends (EOS 0.9). Best output:
    "B" with p = 0.4 * 0.9 = 0.36; greedy's "A C" has p = 0.5 * 0.35 * 0.9 = 0.1575.
    """

    def __init__(self):
        super().__init__()
        self.tgt_vocab_size = 8
        self.max_positions = None
        probs = torch.full((8, 8), 1e-6)  # every token possible, barely
        probs[BOS_ID, [A, B, EOS_ID]] = torch.tensor([0.5, 0.4, 0.1])
        probs[A, [C, EOS_ID, D, B]] = torch.tensor([0.35, 0.3, 0.25, 0.1])
        probs[B, [EOS_ID, C]] = torch.tensor([0.9, 0.1])
        probs[C, [EOS_ID, D]] = torch.tensor([0.9, 0.1])
        probs[D, [EOS_ID, C]] = torch.tensor([0.9, 0.1])
        self.register_buffer("log_table", (probs / probs.sum(1, keepdim=True)).log())

    def encode(self, src: Tensor) -> dict[str, Tensor]:
        return {"src": src}

    def init_state(self, encoded: dict[str, Tensor]) -> dict[str, Tensor]:
        return dict(encoded)

    def step(self, prev_tokens: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor], None]:
        return self.log_table[prev_tokens], state, None

    def reorder(self, state: dict[str, Tensor], indices: Tensor) -> dict[str, Tensor]:
        return reorder(state, indices)

    def forward(self, src: Tensor, tgt_in: Tensor, return_attention: bool = False):
        logits = self.log_table[tgt_in]
        return (logits, None) if return_attention else logits


def random_batch(batch_size: int, vocab_size: int = 12, max_len: int = 7, seed: int = 0) -> Tensor:
    """Right-padded sources of different lengths: random pieces (ids >= 4), then EOS."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len + 1, (batch_size,), generator=generator).tolist()
    src = torch.full((batch_size, max(lengths) + 1), PAD_ID)
    for i, length in enumerate(lengths):
        src[i, :length] = torch.randint(4, vocab_size, (length,), generator=generator)
        src[i, length] = EOS_ID
    return src
