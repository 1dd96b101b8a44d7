"""A synthetic reverse-the-sequence task, and a tiny training loop, for tests.

Sequences follow attn's conventions (seq2seq/data/special.py): source = pieces + [EOS];
decoder input = [BOS] + pieces; target = pieces + [EOS]; right-padded with PAD. Pieces are
ids >= FIRST_PIECE, so a vocabulary of ``vocab`` ids has ``vocab - 4`` distinct pieces.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seq2seq.config import Config
from seq2seq.data.special import BOS_ID, EOS_ID, PAD_ID
from seq2seq.training.objective import batch_loss

FIRST_PIECE = 4


def make_reverse_batch(
    n: int, vocab: int, min_len: int, max_len: int, generator: torch.Generator, reverse: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """n random piece sequences and their reversals (copies, with ``reverse=False``) ->
    src [n,S], tgt_in [n,T], tgt_out [n,T]."""
    lengths = torch.randint(min_len, max_len + 1, (n,), generator=generator).tolist()
    width = max(lengths) + 1  # + EOS (source, target) or BOS (decoder input)
    src = torch.full((n, width), PAD_ID)
    tgt_in = torch.full((n, width), PAD_ID)
    tgt_out = torch.full((n, width), PAD_ID)
    for i, length in enumerate(lengths):
        pieces = torch.randint(FIRST_PIECE, vocab, (length,), generator=generator)
        reversed_pieces = pieces.flip(0) if reverse else pieces
        src[i, :length] = pieces
        src[i, length] = EOS_ID
        tgt_in[i, 0] = BOS_ID
        tgt_in[i, 1 : length + 1] = reversed_pieces
        tgt_out[i, :length] = reversed_pieces
        tgt_out[i, length] = EOS_ID
    return src, tgt_in, tgt_out


def sequence_loss(logits: Tensor, tgt_out: Tensor) -> Tensor:
    """Mean cross-entropy over real (non-PAD) target positions."""
    return F.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=PAD_ID)


def train_tiny(
    model: nn.Module,
    steps: int,
    vocab: int,
    batch_size: int = 32,
    lr: float = 5e-3,
    min_len: int = 3,
    max_len: int = 8,
    seed: int = 0,
    reverse: bool = True,
    objective: Config | None = None,
) -> float:
    """Adam on fresh random reverse (or copy) batches; returns the last batch's loss. With
    ``objective``, the trainer's objective under that config (hard attention's REINFORCE, ...)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        src, tgt_in, tgt_out = make_reverse_batch(batch_size, vocab, min_len, max_len, generator, reverse)
        if objective is None:
            loss = sequence_loss(model(src, tgt_in), tgt_out)
        else:
            real = (tgt_out.flatten() != PAD_ID).nonzero().squeeze(1)
            sums = batch_loss(model, model.output_layer, src, tgt_in, real, tgt_out.flatten()[real], objective)
            loss = sums.objective / real.numel()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.item()


@torch.no_grad()
def token_accuracy(model: nn.Module, src: Tensor, tgt_in: Tensor, tgt_out: Tensor) -> float:
    """Teacher-forced argmax accuracy over real target positions (eval mode)."""
    model.eval()
    predictions = model(src, tgt_in).argmax(dim=-1)
    real = tgt_out != PAD_ID
    return (predictions[real] == tgt_out[real]).float().mean().item()
