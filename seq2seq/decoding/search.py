"""Search: turn a trained model into output sentences (greedy, beam, sampling).

Every search works with any model that has the step interface (the models in
``seq2seq.models`` and ``Ensemble`` below)::

    encode(src [B,S]) -> encoded                 the encoder runs once per batch
    init_state(encoded) -> state                 nested dicts/lists of tensors, batch on dim 0
    step(prev [B], state) -> (logits [B,V], state, attention [B,S] or None)
    reorder(state, indices [B']) -> state        index_select on dim 0 of every tensor (the
                                                 old state may be overwritten: use the new one)
    forward(src, tgt_in [B,T], return_attention=False) -> logits [B,T,V] (, attention [B,T,S])
    tgt_vocab_size
    step_attention (optional)                    a model whose attention weights cost extra
                                                 (the Transformer's) has this switch: the
                                                 searches turn it off while they run without
                                                 return_attention, and step returns None

On a GPU every value the host reads from the device (``.item()``, ``int()``, ``bool()``, a
boolean mask's size) makes it wait until the device has done all the work queued so far, and
the device then idles while the host queues the next step. So the searches take their
decisions from host copies: beam search from one copy per step, greedy search and sampling from
a copy one step old (see ``_DelayedCopy``); their outputs are those of the CPU's step-by-step
decisions.

Rules shared by all searches, so that their scores can be compared and recomputed:

* The first step is fed BOS. A hypothesis is scored with the model's own log-probabilities
  of its pieces *and* of its final EOS.
* Each sentence may produce at most ``floor(a * src_len + b)`` pieces, where ``src_len``
  counts its non-PAD source ids (pieces + EOS). At that limit EOS is the only allowed next
  token, so every hypothesis ends with a scored EOS.
* ``min_len`` forbids EOS until that many pieces exist; PAD and BOS are never produced.
  Forbidden tokens get -inf and the others keep their log-probabilities unchanged (not
  renormalised), so a score stays the real model log-probability and ``forced_score``
  recomputes it (up to float rounding).
* Beam search divides scores by the GNMT length penalty ``((5 + n) / 6) ** alpha`` where
  ``n`` is the number of scored tokens: the pieces plus the EOS.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seq2seq.data.special import BOS_ID, EOS_ID, PAD_ID
from seq2seq.errors import UserError


@dataclass
class Hypothesis:
    """One output sentence of a search."""

    tokens: list[int]  # output piece ids, without BOS and EOS
    score: float  # total log-prob, EOS included; beam search divides it by the length penalty
    attention: Tensor | None = None  # [len(tokens), source ids incl. EOS], on the CPU


# --------------------------------------------------------------------------- pure helpers


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


def _source_lengths(src: Tensor) -> Tensor:
    return (src != PAD_ID).sum(dim=1)


def _log_probs(logits: Tensor) -> Tensor:
    # Scores accumulate in float32 even when the model runs in bf16/fp16 (one pass: the
    # softmax reads bf16 and writes float32).
    return F.log_softmax(logits, dim=-1, dtype=torch.float32)


def _step_log_probs(logits: Tensor) -> Tensor:
    """``_log_probs`` of a step's logits, which the search owns: float32 logits are overwritten
    (log_softmax reads each row before writing it; the result is bit-identical), which saves
    a fresh [rows x vocab] tensor per step."""
    if logits.dtype != torch.float32 or not logits.is_contiguous() or logits.requires_grad:
        return _log_probs(logits)
    return torch.log_softmax(logits, dim=-1, out=logits)


def _length_limits(max_lens: Tensor) -> tuple[int, int]:
    """The shortest and the longest of the limits ``max_lens``, read from the device together."""
    shortest, longest = torch.stack([max_lens.min(), max_lens.max()]).tolist()
    return shortest, longest


def _fetch(*tensors: Tensor | None) -> list[Tensor | None]:
    """CPU copies of ``tensors`` (None stays None), with one wait for the device for all of them
    instead of one wait each."""
    copies = [None if t is None else t.to("cpu", non_blocking=True) for t in tensors]
    on_gpu = [t for t in tensors if t is not None and t.is_cuda]
    if on_gpu:
        torch.cuda.current_stream(on_gpu[0].device).synchronize()
    return copies


def _to_device(host: Tensor, device: torch.device) -> Tensor:
    """A tensor the host computed, on ``device``: from pinned memory the copy is queued behind
    the device's work like a kernel, without making the host wait."""
    if device.type == "cpu":
        return host
    return host.pin_memory().to(device, non_blocking=True)


def _reads_late(device: torch.device) -> bool:
    """Whether greedy search and sampling read their finished flags a step late (``_DelayedCopy``):
    on a GPU. On the CPU reading them costs nothing."""
    return device.type == "cuda"


class _DelayedCopy:
    """A device tensor's values on the host one step late, so that reading them never stalls.

    ``swap(tensor)`` starts copying ``tensor`` to pinned host memory and returns the copy that
    the previous ``swap`` started (None the first time). Waiting for that copy waits for the
    previous step's work only, while this step's is queued behind it and keeps the device busy.
    (The trainer reads its interrupt flag the same way.) A CPU tensor is simply kept a step.
    """

    def __init__(self) -> None:
        self.pending: tuple[Tensor, torch.cuda.Event | None] | None = None

    def swap(self, tensor: Tensor) -> Tensor | None:
        previous = self.pending
        if tensor.is_cuda:
            host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            host.copy_(tensor, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record()
            self.pending = (host, copied)
        else:
            self.pending = (tensor.clone(), None)
        if previous is None:
            return None
        if previous[1] is not None:
            previous[1].synchronize()
        return previous[0]

    def forget(self) -> None:
        """Drop the copy in flight: the rows it describes have changed."""
        self.pending = None


@contextlib.contextmanager
def _step_attention(model: nn.Module, wanted: bool) -> Iterator[None]:
    """While a search runs, tell the models whose attention weights cost extra (those with a
    ``step_attention`` switch, ensemble members included) whether it will use them."""
    switches = [m for m in model.modules() if hasattr(m, "step_attention")]
    before = [m.step_attention for m in switches]
    for m in switches:
        m.step_attention = wanted
    try:
        yield
    finally:
        for m, value in zip(switches, before):
            m.step_attention = value


# --------------------------------------------------------------------------- greedy and sampling


def greedy_search(
    model: nn.Module,
    src: Tensor,
    max_len_a: float,
    max_len_b: int,
    min_len: int = 0,
    return_attention: bool = False,
) -> list[Hypothesis]:
    """The most likely next piece at every step, for a batch of sentences ``src`` [B,S].

    Scores are total log-probs (no length penalty).
    """

    def most_likely(log_probs: Tensor) -> Tensor:
        return log_probs.argmax(dim=-1)

    return _one_token_per_step(
        model, src, max_len_a, max_len_b, min_len, most_likely, return_attention, drop_finished=True
    )


def sample(
    model: nn.Module,
    src: Tensor,
    max_len_a: float,
    max_len_b: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    min_len: int = 0,
    return_attention: bool = False,
) -> list[Hypothesis]:
    """Draw one random translation per sentence (diverse outputs, e.g. for back-translation).

    Tokens are drawn from the model's distribution sharpened by ``temperature`` and cut by
    ``top_k``/``top_p``; the score is the log-prob under the model itself (temperature 1,
    no filtering) so it can be compared with other searches.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")

    def draw(log_probs: Tensor) -> Tensor:
        logits = top_p_filter(top_k_filter(log_probs / temperature, top_k), top_p)
        return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(1)

    return _one_token_per_step(model, src, max_len_a, max_len_b, min_len, draw, return_attention)


def _one_token_per_step(
    model: nn.Module,
    src: Tensor,
    max_len_a: float,
    max_len_b: int,
    min_len: int,
    choose: Callable[[Tensor], Tensor],
    return_attention: bool,
    drop_finished: bool = False,
) -> list[Hypothesis]:
    """The loop behind greedy search and sampling: ``choose`` picks a token per sentence.

    With ``drop_finished`` (greedy), sentences that ended leave the batch once they are a
    quarter of it, so the rest decode faster (each drop costs one reorder of the state).
    Sampling keeps them, so that a seeded generator draws exactly as before.

    On a GPU the host learns which sentences ended a step late (``_DelayedCopy``): they leave
    the batch, and the search stops, one step later than on the CPU. Meanwhile they score
    nothing and write PAD, so the outputs are the same.
    """
    with _step_attention(model, return_attention):
        return _one_token_per_step_loop(model, src, max_len_a, max_len_b, min_len, choose, return_attention,
                                        drop_finished)


def _one_token_per_step_loop(
    model: nn.Module,
    src: Tensor,
    max_len_a: float,
    max_len_b: int,
    min_len: int,
    choose: Callable[[Tensor], Tensor],
    return_attention: bool,
    drop_finished: bool,
) -> list[Hypothesis]:
    batch_size = src.size(0)
    device = src.device
    src_lens = _source_lengths(src)
    max_lens = max_output_length(src_lens, max_len_a, max_len_b, getattr(model, "max_positions", None))
    shortest, longest = _length_limits(max_lens)
    steps = longest + 1
    delayed = _DelayedCopy() if _reads_late(device) else None
    state = model.init_state(model.encode(src))
    prev = src.new_full((batch_size,), BOS_ID)
    rows = torch.arange(batch_size, device=device)  # the sentence of each live row
    scores = torch.zeros(batch_size, device=device)
    finished = torch.zeros(batch_size, dtype=torch.bool, device=device)
    chosen = src.new_full((batch_size, steps), PAD_ID)
    attentions = None
    for num_pieces in range(steps):
        logits, state, attention = model.step(prev, state)
        log_probs = restrict_next_tokens(_step_log_probs(logits), num_pieces, min_len, max_lens, shortest)
        token = choose(log_probs)
        # Finished rows still in the batch score nothing and write PAD.
        step_scores = log_probs.gather(1, token.unsqueeze(1)).squeeze(1).masked_fill(finished, 0.0)
        token = token.masked_fill(finished, PAD_ID)
        live = rows.numel()
        if live == batch_size:
            scores += step_scores
            chosen[:, num_pieces] = token
        else:
            scores.index_add_(0, rows, step_scores)
            chosen[rows, num_pieces] = token
        if return_attention and attention is not None:
            if attentions is None:
                attentions = attention.new_zeros((batch_size, steps, attention.size(-1)), dtype=torch.float)
            attentions[rows, num_pieces] = attention.float()
        finished |= token == EOS_ID
        prev = token
        # Which rows had ended: now on the CPU, as of the step before on a GPU (None: not known yet).
        ended = finished if delayed is None else delayed.swap(finished)
        if ended is None:
            continue
        num_finished = int(ended.sum())
        if num_finished == ended.numel():
            break
        if drop_finished and 4 * num_finished >= ended.numel():
            keep = _to_device(rows_that_stay(ended), device)
            state = model.reorder(state, keep)
            rows, max_lens, prev, finished = rows[keep], max_lens[keep], prev[keep], finished[keep]
            if delayed is not None:
                delayed.forget()

    chosen, scores, src_lens, all_attention = _fetch(chosen, scores, src_lens, attentions)
    hypotheses = []
    for i, (row, score, src_len) in enumerate(zip(chosen.tolist(), scores.tolist(), src_lens.tolist())):
        length = row.index(EOS_ID)  # always there: EOS is forced at the length limit
        attention = all_attention[i, :length, :src_len].clone() if all_attention is not None else None
        hypotheses.append(Hypothesis(row[:length], score, attention))
    return hypotheses


# --------------------------------------------------------------------------- beam search


@dataclass
class _Finished:
    """Hypotheses that ended (with EOS) at one step, kept aside as tensors until the end."""

    sentence_ids: Tensor  # [F] index of the input sentence
    tokens: Tensor  # [F, pieces]
    scores: Tensor  # [F] after length penalty
    attention: Tensor | None  # [F, pieces, S]


def beam_search(
    model: nn.Module,
    src: Tensor,
    beam_size: int,
    length_penalty: float,
    max_len_a: float,
    max_len_b: int,
    min_len: int = 0,
    nbest: int = 1,
    return_attention: bool = False,
) -> list[list[Hypothesis]]:
    """The ``nbest`` best translations of each sentence of ``src`` [B,S], best first.

    All sentences and their beams decode together as one batch of B*k rows. Each step
    scores every one-token extension of every live beam and keeps the 2k best per
    sentence: candidates ending in EOS that rank among the first k become finished
    hypotheses (length-normalised, kept aside), and the k best others stay live.

    A sentence is done once it has ``beam_size`` finished hypotheses (as in fairseq; the
    search does not go on looking for a longer one that the length penalty might prefer),
    or at its length limit, where EOS is forced. Done sentences leave the batch, so the
    rest decode faster. A sentence can end with fewer than ``nbest`` hypotheses.
    """
    if nbest > beam_size:
        raise ValueError(f"nbest ({nbest}) cannot exceed beam_size ({beam_size})")
    with _step_attention(model, return_attention):
        return _beam_search_loop(model, src, beam_size, length_penalty, max_len_a, max_len_b, min_len, nbest,
                                 return_attention)


def _beam_search_loop(
    model: nn.Module,
    src: Tensor,
    beam_size: int,
    length_penalty: float,
    max_len_a: float,
    max_len_b: int,
    min_len: int,
    nbest: int,
    return_attention: bool,
) -> list[list[Hypothesis]]:
    k = beam_size
    vocab_size = model.tgt_vocab_size
    device = src.device
    src_lens = _source_lengths(src)

    # Per live sentence (N of them; B at first):
    sentence_ids = torch.arange(src.size(0), device=device)
    max_lens = max_output_length(src_lens, max_len_a, max_len_b, getattr(model, "max_positions", None))
    shortest, longest = _length_limits(max_lens)
    num_finished = torch.zeros_like(sentence_ids)
    # Every sentence starts as k copies; only the first is live, or the k copies would
    # propose the same candidates k times.
    beam_scores = torch.full((src.size(0), k), float("-inf"), device=device)
    beam_scores[:, 0] = 0.0
    # Per live beam (N*k rows, sentence-major):
    state = model.init_state(model.encode(src))
    state = model.reorder(state, sentence_ids.repeat_interleave(k))
    beam_tokens = src.new_empty((src.size(0) * k, 0))
    beam_attention = src.new_zeros((src.size(0) * k, 0, src.size(1)), dtype=torch.float)

    all_rows = torch.arange(src.size(0) * k, device=device)
    finished: list[_Finished] = []
    for num_pieces in range(longest + 1):
        num_live = beam_scores.size(0)
        prev = beam_tokens[:, -1] if num_pieces else src.new_full((num_live * k,), BOS_ID)
        logits, state, attention = model.step(prev, state)
        log_probs = _step_log_probs(logits)
        log_probs = restrict_next_tokens(log_probs, num_pieces, min_len, max_lens.repeat_interleave(k), shortest)

        # Each beam proposes at most one EOS, so among the 2k best candidates at least k go on.
        candidates = log_probs.add_(beam_scores.view(-1, 1)).view(num_live, k * vocab_size)  # in place
        top_scores, top_ids = candidates.topk(2 * k, dim=1)
        tokens = top_ids % vocab_size
        rows = top_ids // vocab_size + torch.arange(num_live, device=device).unsqueeze(1) * k

        ends = (tokens == EOS_ID) & top_scores.isfinite()
        ends[:, k:] = False  # only an EOS ranked among the k best ends a hypothesis
        num_finished += ends.sum(dim=1)

        # The k best candidates that did not end stay live, each in its parent's row where
        # it can be, so that the state is copied for fewer rows.
        beam_scores, live = top_scores.masked_fill(tokens == EOS_ID, float("-inf")).topk(k, dim=1)
        order = keep_parents_in_place(rows.gather(1, live) % k)
        beam_scores, live = beam_scores.gather(1, order), live.gather(1, order)
        live_rows = rows.gather(1, live).view(-1)
        live_tokens = tokens.gather(1, live)
        done = (num_finished >= k) | (max_lens <= num_pieces)
        in_place = (live_rows == all_rows[: num_live * k]).all()

        # The step's one wait for the device: which candidates ended, which sentences are done,
        # and whether every beam stayed in its row, brought to the host in one copy.
        host = torch.cat([ends[:, :k].reshape(-1), done, in_place.view(1)]).cpu()
        ended_host, done_host = host[: num_live * k].view(num_live, k), host[num_live * k : -1]
        every_row_in_place = bool(host[-1])

        keep_attention = return_attention and attention is not None
        if bool(ended_host.any()):
            sentence, candidate = _to_device(ended_host.nonzero(), device).unbind(1)  # row-major, as a mask picks
            ended_rows = rows[sentence, candidate]
            finished.append(
                _Finished(
                    sentence_ids=sentence_ids[sentence],
                    tokens=beam_tokens[ended_rows],
                    scores=top_scores[sentence, candidate] / gnmt_length_penalty(num_pieces + 1, length_penalty),
                    attention=beam_attention[ended_rows] if keep_attention else None,
                )
            )

        num_done = int(done_host.sum())
        if num_done == num_live:
            break
        if num_done:  # done sentences leave the batch
            keep = _to_device(rows_that_stay(done_host), device)
            beam_scores, live_tokens = beam_scores[keep], live_tokens[keep]
            live_rows = live_rows.view(num_live, k)[keep].view(-1)
            sentence_ids, max_lens, num_finished = (x[keep] for x in (sentence_ids, max_lens, num_finished))

        if num_done or not every_row_in_place:  # (when every row kept its own beam, the state needs no copy)
            state = model.reorder(state, live_rows)
        beam_tokens = torch.cat([beam_tokens[live_rows], live_tokens.view(-1, 1)], dim=1)
        if keep_attention:
            step_attention = attention[live_rows].float().unsqueeze(1)
            beam_attention = torch.cat([beam_attention[live_rows], step_attention], dim=1)

    return _best_per_sentence(finished, src_lens, nbest)


def _best_per_sentence(finished: list[_Finished], src_lens: Tensor, nbest: int) -> list[list[Hypothesis]]:
    """Group the finished hypotheses by sentence, best first, at most ``nbest`` each."""
    fields = ("sentence_ids", "tokens", "scores", "attention")
    fetched = _fetch(src_lens, *(getattr(part, field) for part in finished for field in fields))
    source_lengths, parts = fetched[0].tolist(), fetched[1:]
    per_sentence: list[list[Hypothesis]] = [[] for _ in source_lengths]
    for start in range(0, len(parts), len(fields)):
        part_sentences, part_tokens, part_scores, part_attention = parts[start : start + len(fields)]
        attentions = part_attention if part_attention is not None else [None] * len(part_scores)
        for sentence, tokens, score, attention in zip(part_sentences.tolist(), part_tokens.tolist(),
                                                      part_scores.tolist(), attentions):
            if attention is not None:
                attention = attention[:, : source_lengths[sentence]].clone()
            per_sentence[sentence].append(Hypothesis(tokens, score, attention))
    return [sorted(hyps, key=lambda h: h.score, reverse=True)[:nbest] for hyps in per_sentence]


# --------------------------------------------------------------------------- rescoring


def forced_score(
    model: nn.Module, src: Tensor, hypotheses: Sequence[Sequence[int]], length_penalty: float
) -> list[float]:
    """Score given outputs by teacher forcing, exactly as the searches score them.

    ``hypotheses[i]`` is the piece ids (no BOS/EOS) for sentence ``src[i]``; the score is
    the total log-prob of the pieces plus EOS, divided by the GNMT length penalty.
    """
    lengths = torch.tensor([len(h) + 1 for h in hypotheses], device=src.device)
    tgt_in = src.new_full((len(hypotheses), int(lengths.max())), PAD_ID)
    tgt_out = tgt_in.clone()
    for i, pieces in enumerate(hypotheses):
        tgt_in[i, : len(pieces) + 1] = torch.tensor([BOS_ID, *pieces])
        tgt_out[i, : len(pieces) + 1] = torch.tensor([*pieces, EOS_ID])
    log_probs = _log_probs(model(src, tgt_in)).gather(2, tgt_out.unsqueeze(2)).squeeze(2)
    is_target = torch.arange(tgt_out.size(1), device=src.device) < lengths.unsqueeze(1)
    totals = log_probs.masked_fill(~is_target, 0.0).sum(dim=1)
    return (totals / gnmt_length_penalty(lengths, length_penalty)).tolist()


# --------------------------------------------------------------------------- several models


class Ensemble(nn.Module):
    """Several models with one target vocabulary, searched as if they were one.

    The next-token distribution is the average of the members' log-probabilities (their
    normalised geometric mean). ``step`` and ``forward`` return it already normalised, so
    the searches' own log_softmax leaves it unchanged. The state is a list of member states.
    """

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        vocab_sizes = sorted({m.tgt_vocab_size for m in models})
        if len(vocab_sizes) != 1:
            raise UserError(
                f"ensemble members have different target vocabularies (sizes {vocab_sizes}); "
                "ensemble only checkpoints trained with the same tokenizer"
            )
        self.members = nn.ModuleList(models)
        self.tgt_vocab_size = vocab_sizes[0]
        # Members without attention return all-zero weights, which must not dilute the others'.
        self.attending = [i for i, m in enumerate(models) if has_attention(m)]
        limits = [m.max_positions for m in models if getattr(m, "max_positions", None) is not None]
        self.max_positions = min(limits, default=None)  # what every member can read

    def encode(self, src: Tensor) -> list[Any]:
        return [m.encode(src) for m in self.members]

    def init_state(self, encoded: list[Any]) -> list[Any]:
        return [m.init_state(e) for m, e in zip(self.members, encoded)]

    def reorder(self, state: list[Any], indices: Tensor) -> list[Any]:
        return [m.reorder(s, indices) for m, s in zip(self.members, state)]

    def step(self, prev_tokens: Tensor, state: list[Any]) -> tuple[Tensor, list[Any], Tensor | None]:
        logits, states, attentions = zip(*(m.step(prev_tokens, s) for m, s in zip(self.members, state)))
        return _average_log_probs(logits), list(states), self._average_attention(attentions)

    def forward(self, src: Tensor, tgt_in: Tensor, return_attention: bool = False) -> Any:
        outputs = [m(src, tgt_in, return_attention=return_attention) for m in self.members]
        if not return_attention:
            return _average_log_probs(outputs)
        logits, attentions = zip(*outputs)
        return _average_log_probs(logits), self._average_attention(attentions)

    def _average_attention(self, attentions: Sequence[Tensor | None]) -> Tensor | None:
        """The attending members' mean attention, for plots and alignments; None when some has none."""
        attending = [attentions[i] for i in self.attending]
        if not attending or any(a is None for a in attending):
            return None
        return torch.stack([a.float() for a in attending]).mean(dim=0)


def has_attention(model: nn.Module) -> bool:
    """Whether ``model``'s attention weights mean anything: an RNN with ``attention: none``
    returns all-zero weights, which would make every piece 'align' to the first source piece."""
    if isinstance(model, Ensemble):
        return bool(model.attending)
    return getattr(getattr(model, "config", None), "attention", None) != "none"


def _average_log_probs(logits: Sequence[Tensor]) -> Tensor:
    mean = torch.stack([_log_probs(x) for x in logits]).mean(dim=0)
    return F.log_softmax(mean, dim=-1)


def average_checkpoints(state_dicts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Element-wise mean of the floating-point tensors of several model state dicts.

    Averaging the last checkpoints of a run smooths out the noise of the final updates.
    Integer tensors and other values (counters, ids) cannot be averaged: they come from the
    first dict. The inputs are left unchanged.
    """
    if not state_dicts:
        raise UserError("no checkpoints to average; pass at least one checkpoint file")
    first = state_dicts[0]
    for number, other in enumerate(state_dicts[1:], start=2):
        _check_same_parameters(first, other, number)
    averaged = {}
    for name, value in first.items():
        if isinstance(value, Tensor) and value.is_floating_point():
            # Summing in float64 keeps the mean of identical tensors bit-identical.
            total = sum(sd[name].double() for sd in state_dicts)
            averaged[name] = (total / len(state_dicts)).to(value.dtype)
        else:
            averaged[name] = value.clone() if isinstance(value, Tensor) else value
    return averaged


def _check_same_parameters(first: dict[str, Any], other: dict[str, Any], number: int) -> None:
    if other.keys() != first.keys():
        differing = sorted(other.keys() ^ first.keys())
        raise UserError(
            f"checkpoint {number} has different parameters than checkpoint 1 "
            f"(e.g. {differing[0]}); average only checkpoints of the same model"
        )
    for name, value in first.items():
        if isinstance(value, Tensor) and value.shape != other[name].shape:
            raise UserError(
                f"checkpoint {number}: parameter {name} has shape {tuple(other[name].shape)} "
                f"but {tuple(value.shape)} in checkpoint 1; average only checkpoints of the same model"
            )
