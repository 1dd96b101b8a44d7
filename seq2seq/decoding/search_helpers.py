"""What every search shares: the hypotheses it returns, length limits and the length penalty,
the tokens a step may produce, and the small tensor helpers of beam search and sampling."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seq2seq.data.special import BOS_ID, EOS_ID, PAD_ID


@dataclass
class Hypothesis:
    """One output sentence of a search."""

    tokens: list[int]  # output piece ids, without BOS and EOS
    score: float  # total log-prob, EOS included; beam search divides it by the length penalty
    attention: Tensor | None = None  # [len(tokens), source ids incl. EOS], on the CPU


def max_output_length(src_lens: Tensor, a: float, b: int, max_positions: int | None = None) -> Tensor:
    """The most pieces (EOS not counted) each sentence may produce: floor(a * src_len + b), and
    no more than a decoder with ``max_positions`` learned positions can read (it reads BOS and
    the pieces at positions 0..n to predict the EOS after n pieces)."""
    lengths = (a * src_lens.double() + b).floor().long()
    return lengths if max_positions is None else lengths.clamp(max=max_positions - 1)


def gnmt_length_penalty(num_tokens: Tensor | int, alpha: float) -> Tensor | float:
    """((5 + n) / 6) ** alpha from Wu et al. (2016); n counts the scored tokens, EOS included.

    Dividing a total log-prob by it stops beam search from preferring short outputs just
    because every extra token lowers the sum; alpha = 0 gives 1 (no normalisation).
    """
    return ((5.0 + num_tokens) / 6.0) ** alpha


def restrict_next_tokens(log_probs: Tensor, num_pieces: int, min_len: int, max_lens: Tensor,
                         shortest_limit: int = 0) -> Tensor:
    """Set the log-prob of tokens that may not come next to -inf, in place (and return it).

    ``log_probs`` [N,V] scores the token after ``num_pieces`` pieces; ``max_lens`` [N] is
    each row's piece limit, and ``shortest_limit`` a lower bound of it that the caller knows
    (0: none known). Rows at their limit may only end (EOS); other rows may not end before
    ``min_len`` pieces. PAD and BOS never appear in training targets, so never here.
    """
    at_limit = (max_lens <= num_pieces).unsqueeze(1)  # [N,1]
    eos = log_probs[:, EOS_ID].clone()
    log_probs[:, PAD_ID] = float("-inf")
    log_probs[:, BOS_ID] = float("-inf")
    # Rows at their limit: everything but EOS goes. Before the shortest limit there are none.
    # After it, on the CPU, most steps still have none, and a pass over [N,V] costs more than
    # asking; on a GPU the pass costs less than the host's wait for the answer.
    if num_pieces >= shortest_limit and (log_probs.device.type != "cpu" or bool(at_limit.any())):
        log_probs.masked_fill_(at_limit, float("-inf"))
    if num_pieces >= min_len:
        log_probs[:, EOS_ID] = eos
    else:  # too early to end, unless at the limit
        log_probs[:, EOS_ID] = eos.masked_fill(~at_limit.squeeze(1), float("-inf"))
    return log_probs


def keep_parents_in_place(parents: Tensor) -> Tensor:
    """The order [N,k] in which to place each sentence's k new beams so that as many as
    possible stay in the row of the beam they extend: ``parents`` [N,k] holds the beam (0..k-1)
    each new beam extends. The first child of each parent takes its parent's slot; the other
    children fill, in order, the slots of parents that have none.

    Beam search then copies the decoder state of only the rows that changed, not all of them.
    """
    k = parents.size(1)
    one_hot = F.one_hot(parents, k)  # [N, child, parent]
    first = (one_hot.cumsum(dim=1) * one_hot).sum(dim=2) == 1  # [N, child]
    taken = one_hot.any(dim=1)  # [N, slot]
    free_slots = taken.int().argsort(dim=1, stable=True)  # the free slots first, ascending
    rank_among_others = ((~first).cumsum(dim=1) - 1).clamp(min=0)
    slot = torch.where(first, parents, free_slots.gather(1, rank_among_others))
    return slot.argsort(dim=1)


def rows_that_stay(leaving: Tensor) -> Tensor:
    """The rows that stay when rows ``leaving`` [N] (bool) leave a batch, as indices in their
    new order: the last staying rows fill the holes, so that every other row keeps its place
    (and its decoder state need not be copied)."""
    staying = (~leaving).nonzero().squeeze(1)
    order = torch.arange(staying.numel(), device=leaving.device)
    order[leaving[: staying.numel()]] = staying[staying >= staying.numel()]
    return order


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the k highest logits of each row (ties with the k-th included); k <= 0 keeps all."""
    if k <= 0 or k >= logits.size(-1):
        return logits
    kth_best = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth_best, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filtering (Holtzman et al., 2020): keep the fewest most likely tokens whose
    probabilities sum to at least p; p >= 1 keeps all."""
    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    # A token goes when the tokens ranked above it already reach p, so the best always stays.
    drop_sorted = probs.cumsum(dim=-1) - probs >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def source_lengths(src: Tensor) -> Tensor:
    return (src != PAD_ID).sum(dim=1)


def float_log_probs(logits: Tensor) -> Tensor:
    # Scores accumulate in float32 even when the model runs in bf16/fp16 (one pass: the
    # softmax reads bf16 and writes float32).
    return F.log_softmax(logits, dim=-1, dtype=torch.float32)


def step_log_probs(logits: Tensor) -> Tensor:
    """``float_log_probs`` of a step's logits, which the search owns: float32 logits are overwritten
    (log_softmax reads each row before writing it; the result is bit-identical), which saves
    a fresh [rows x vocab] tensor per step."""
    if logits.dtype != torch.float32 or not logits.is_contiguous() or logits.requires_grad:
        return float_log_probs(logits)
    return torch.log_softmax(logits, dim=-1, out=logits)


def length_limits(max_lens: Tensor) -> tuple[int, int]:
    """The shortest and the longest of the limits ``max_lens``, read from the device together."""
    shortest, longest = torch.stack([max_lens.min(), max_lens.max()]).tolist()
    return shortest, longest


def reads_late(device: torch.device) -> bool:
    """Whether greedy search and sampling read their finished flags a step late (``DelayedCopy``):
    on a GPU. On the CPU reading them costs nothing."""
    return device.type == "cuda"


@contextlib.contextmanager
def models_set(model: nn.Module, **settings: object) -> Iterator[None]:
    """For the duration, ``settings`` on every module of ``model`` (ensemble members included)
    that has the first of them; their values are restored afterwards."""
    first = next(iter(settings))
    modules = [m for m in model.modules() if hasattr(m, first)]
    before = [{name: getattr(m, name) for name in settings} for m in modules]
    for m in modules:
        for name, value in settings.items():
            setattr(m, name, value)
    try:
        yield
    finally:
        for m, values in zip(modules, before):
            for name, value in values.items():
                setattr(m, name, value)


def attention_wanted(model: nn.Module, wanted: bool) -> contextlib.AbstractContextManager:
    """While a search runs, tell the models whose attention weights cost extra (those with a
    ``step_attention`` switch) whether it will use them."""
    return models_set(model, step_attention=wanted)
