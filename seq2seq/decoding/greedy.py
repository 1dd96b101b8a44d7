"""Greedy search and sampling: one token per sentence and step (see search.py for the rules)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from seq2seq.data.special import BOS_ID, EOS_ID, PAD_ID
from seq2seq.decoding import search_helpers
from seq2seq.decoding.search_helpers import (Hypothesis, attention_wanted, length_limits, max_output_length,
                                             restrict_next_tokens, rows_that_stay, source_lengths, step_log_probs,
                                             top_k_filter, top_p_filter)
from seq2seq.host_copies import DelayedCopy, fetch_to_host, host_to_device
from seq2seq.models.interface import Seq2SeqModel


def greedy_search(
    model: Seq2SeqModel,
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
    model: Seq2SeqModel,
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
    model: Seq2SeqModel,
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

    On a GPU the host learns which sentences ended a step late (``DelayedCopy``): they leave
    the batch, and the search stops, one step later than on the CPU. Meanwhile they score
    nothing and write PAD, so the outputs are the same.
    """
    with attention_wanted(model, return_attention):
        batch_size = src.size(0)
        device = src.device
        src_lens = source_lengths(src)
        max_lens = max_output_length(src_lens, max_len_a, max_len_b, model.max_positions)
        shortest, longest = length_limits(max_lens)
        steps = longest + 1
        delayed = DelayedCopy() if search_helpers.reads_late(device) else None
        state = model.init_state(model.encode(src))
        prev = src.new_full((batch_size,), BOS_ID)
        rows = torch.arange(batch_size, device=device)  # the sentence of each live row
        scores = torch.zeros(batch_size, device=device)
        finished = torch.zeros(batch_size, dtype=torch.bool, device=device)
        chosen = src.new_full((batch_size, steps), PAD_ID)
        attentions = None
        for num_pieces in range(steps):
            logits, state, attention = model.step(prev, state)
            log_probs = restrict_next_tokens(step_log_probs(logits), num_pieces, min_len, max_lens, shortest)
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
                keep = host_to_device(rows_that_stay(ended), device)
                state = model.reorder(state, keep)
                rows, max_lens, prev, finished = rows[keep], max_lens[keep], prev[keep], finished[keep]
                if delayed is not None:
                    delayed.forget()

        chosen, scores, src_lens, all_attention = fetch_to_host(chosen, scores, src_lens, attentions)
        hypotheses = []
        for i, (row, score, src_len) in enumerate(zip(chosen.tolist(), scores.tolist(), src_lens.tolist())):
            length = row.index(EOS_ID)  # always there: EOS is forced at the length limit
            attention = all_attention[i, :length, :src_len].clone() if all_attention is not None else None
            hypotheses.append(Hypothesis(row[:length], score, attention))
        return hypotheses
