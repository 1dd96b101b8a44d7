"""Beam search (see search.py for the rules every search follows)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from seq2seq.data.special import BOS_ID, EOS_ID
from seq2seq.decoding.search_helpers import (Hypothesis, attention_wanted, gnmt_length_penalty, keep_parents_in_place,
                                             length_limits, max_output_length, restrict_next_tokens, rows_that_stay,
                                             source_lengths, step_log_probs)
from seq2seq.host_copies import fetch_to_host, host_to_device
from seq2seq.models.interface import Seq2SeqModel


@dataclass
class _Finished:
    """Hypotheses that ended (with EOS) at one step, kept aside as tensors until the end."""

    sentence_ids: Tensor  # [F] index of the input sentence
    tokens: Tensor  # [F, pieces]
    scores: Tensor  # [F] after length penalty
    attention: Tensor | None  # [F, pieces, S]


def beam_search(
    model: Seq2SeqModel,
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
    with attention_wanted(model, return_attention):
        k = beam_size
        vocab_size = model.tgt_vocab_size
        device = src.device
        src_lens = source_lengths(src)

        # Per live sentence (N of them; B at first):
        sentence_ids = torch.arange(src.size(0), device=device)
        max_lens = max_output_length(src_lens, max_len_a, max_len_b, model.max_positions)
        shortest, longest = length_limits(max_lens)
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
            log_probs = step_log_probs(logits)
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
                sentence, candidate = host_to_device(ended_host.nonzero(), device).unbind(1)  # row-major, as a mask picks
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
                keep = host_to_device(rows_that_stay(done_host), device)
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
    fetched = fetch_to_host(src_lens, *(getattr(part, field) for part in finished for field in fields))
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
