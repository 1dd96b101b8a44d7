"""Token-budget batches of similar-length pairs, and the padded tensors built from them.

Pairs are sorted by length so that each batch needs little padding, then packed greedily up to
``batch_tokens``: a batch costs sentences x (longest side + 1), the +1 being EOS on the source
and BOS/EOS on the target. Equal-length pairs are ordered randomly and the batch order is
shuffled, both from ``(seed, epoch)``, so every epoch differs and every run repeats.

Under DDP each rank takes every ``world_size``-th batch. Ranks step in lock-step, so they must
all get the same number of batches: the largest batches are split in two until the count
divides evenly, which keeps the shards disjoint and covering every pair once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from seq2seq.data.special import BOS_ID, EOS_ID, PAD_ID
from seq2seq.data.store import ParallelDataset


class TokenBatchSampler:
    """Indices of the batches of one epoch, for one rank.

    A batch never costs more than ``batch_tokens``, with one exception: a single pair that alone
    exceeds the budget gets a batch of its own. Training pairs never do, because ``attn
    tokenize`` drops pairs longer than ``data.max_len``; valid and test pairs are not filtered.
    """

    def __init__(
        self,
        src_lengths: np.ndarray,
        tgt_lengths: np.ndarray,
        batch_tokens: int,
        seed: int,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ):
        if len(src_lengths) != len(tgt_lengths):
            raise ValueError("src_lengths and tgt_lengths differ in size")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if len(src_lengths) < world_size:
            raise ValueError(f"{len(src_lengths)} pairs cannot be shared by {world_size} ranks")
        self.src_lengths = np.asarray(src_lengths, dtype=np.int64)
        self.tgt_lengths = np.asarray(tgt_lengths, dtype=np.int64)
        self.batch_tokens = batch_tokens
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size

    def batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's batches for ``epoch``, in training order; the same for the same (seed, epoch)."""
        rng = np.random.default_rng((self.seed, epoch))
        # Sort by the longer side first, since that is what the budget charges: batches fill up
        # evenly (fewer of them), and the target then source keys keep both sides' padding low.
        # np.lexsort takes its primary key last; the random tie-break varies batches per epoch.
        n_pairs = len(self.src_lengths)
        tie_break = rng.random(n_pairs) if self.shuffle else np.arange(n_pairs)
        longer_side = np.maximum(self.src_lengths, self.tgt_lengths)
        order = np.lexsort((tie_break, self.src_lengths, self.tgt_lengths, longer_side))
        batches = pack_batches(order, self.src_lengths, self.tgt_lengths, self.batch_tokens)
        batches = split_until_divisible(batches, self.world_size)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches[self.rank :: self.world_size]


def pair_cost(src_len: int, tgt_len: int) -> int:
    """Budget units of one pair: its longer side plus EOS (or BOS)."""
    return max(src_len, tgt_len) + 1


def pack_batches(
    order: np.ndarray, src_lengths: np.ndarray, tgt_lengths: np.ndarray, batch_tokens: int
) -> list[np.ndarray]:
    """Cut ``order`` into consecutive batches whose sentences x padded length fits the budget."""
    batches = []
    start = 0
    longest = 0  # pair_cost of the longest pair in the open batch
    # Plain Python ints: this loop visits every pair, and numpy scalars are slow in Python loops.
    src, tgt = src_lengths[order].tolist(), tgt_lengths[order].tolist()
    for end, (src_len, tgt_len) in enumerate(zip(src, tgt)):
        cost = pair_cost(src_len, tgt_len)
        widest = max(longest, cost)
        if end > start and (end - start + 1) * widest > batch_tokens:
            batches.append(order[start:end])
            start, widest = end, cost
        longest = widest
    batches.append(order[start:])
    return batches


def split_until_divisible(batches: list[np.ndarray], world_size: int) -> list[np.ndarray]:
    """Halve the largest batch, in place in the list, until the count divides by ``world_size``."""
    batches = list(batches)
    while len(batches) % world_size:
        largest = max(range(len(batches)), key=lambda i: len(batches[i]))
        batch = batches[largest]
        if len(batch) < 2:
            raise ValueError(
                f"{len(batches)} single-pair batches cannot be shared evenly by {world_size} ranks; "
                "raise batch_tokens"
            )
        half = len(batch) // 2
        batches[largest : largest + 1] = [batch[:half], batch[half:]]
    return batches


@dataclass
class Batch:
    """Padded tensors of a batch; padding is on the right, with ``PAD_ID``."""

    src: torch.Tensor  # [B, S] source pieces + EOS
    tgt_in: torch.Tensor  # [B, T] BOS + target pieces: the decoder input
    tgt_out: torch.Tensor  # [B, T] target pieces + EOS: what the decoder predicts
    n_src_tokens: int  # real (non-pad) tokens in src
    n_tgt_tokens: int  # real tokens in tgt_out: the number of predictions the loss averages over
    indices: np.ndarray  # dataset index of each row


def collate(dataset: ParallelDataset, indices: np.ndarray) -> Batch:
    """Build the padded source, decoder-input and decoder-target tensors of the given pairs."""
    indices = np.asarray(indices)
    src_seqs = [dataset.src[i] for i in indices]
    tgt_seqs = [dataset.tgt[i] for i in indices]
    src_lengths = dataset.src_lengths[indices]
    tgt_lengths = dataset.tgt_lengths[indices]
    rows = np.arange(len(indices))

    src = pad_rows(src_seqs, src_lengths, offset=0, width=src_lengths.max() + 1)
    src[rows, src_lengths] = EOS_ID
    tgt_in = pad_rows(tgt_seqs, tgt_lengths, offset=1, width=tgt_lengths.max() + 1)
    tgt_in[:, 0] = BOS_ID
    tgt_out = pad_rows(tgt_seqs, tgt_lengths, offset=0, width=tgt_lengths.max() + 1)
    tgt_out[rows, tgt_lengths] = EOS_ID

    return Batch(
        src=torch.from_numpy(src),
        tgt_in=torch.from_numpy(tgt_in),
        tgt_out=torch.from_numpy(tgt_out),
        n_src_tokens=int(src_lengths.sum()) + len(indices),
        n_tgt_tokens=int(tgt_lengths.sum()) + len(indices),
        indices=indices,
    )


def pad_rows(seqs: list[np.ndarray], lengths: np.ndarray, offset: int, width: int) -> np.ndarray:
    """A [len(seqs), width] int64 array of PAD, row i holding seqs[i] from column ``offset`` on."""
    out = np.full((len(seqs), width), PAD_ID, dtype=np.int64)
    columns = np.arange(width)
    # A boolean mask assigns in row-major order, so the concatenated sequences land row by row.
    filled = (columns >= offset) & (columns < lengths[:, None] + offset)
    out[filled] = np.concatenate(seqs)
    return out


def padding_waste(batches: list[np.ndarray], src_lengths: np.ndarray, tgt_lengths: np.ndarray) -> float:
    """Share of pad tokens among all tokens of the padded source and target tensors."""
    padded = real = 0
    for batch in batches:
        src_len, tgt_len = src_lengths[batch] + 1, tgt_lengths[batch] + 1
        padded += len(batch) * (src_len.max() + tgt_len.max())
        real += src_len.sum() + tgt_len.sum()
    return float(1 - real / padded) if padded else 0.0
