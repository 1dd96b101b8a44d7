"""Search, ensembling, checkpoint averaging and the Translator, on tiny toy models."""

from __future__ import annotations

import math
import multiprocessing
import os
import time

import pytest
import torch

from seq2seq.config import ModelConfig
from seq2seq.data.special import EOS_ID, PAD_ID
from seq2seq.checkpoint import average_checkpoints
from seq2seq.decoding.ensemble import Ensemble, has_attention
from seq2seq.decoding.search import Hypothesis, beam_search, forced_score, gnmt_length_penalty, greedy_search, sample
from seq2seq.decoding.search_helpers import (keep_parents_in_place, max_output_length, rows_that_stay, top_k_filter,
                                             top_p_filter)
from seq2seq.decoding.settings import TranslateSettings
from seq2seq.decoding.translator import Translator, decode_batch, hard_alignments, pharaoh
from seq2seq.decoding.workers import DecodeWorkers
from seq2seq.errors import UserError
from seq2seq.models.builder import build_model
from tests.toy_model import A, B, C, ToyAttentionGRU, TransitionModel, random_batch

# Max length floor(1.5 * src_len + 3): small enough to keep the tests fast.
LIMITS = dict(max_len_a=1.5, max_len_b=3)


@pytest.fixture(autouse=True)
def no_grad():
    with torch.inference_mode():
        yield


@pytest.fixture(scope="module")
def model() -> ToyAttentionGRU:
    # Seed 3 gives a mix of outputs that end early and outputs that hit the length limit.
    return ToyAttentionGRU(seed=3).eval()


@pytest.fixture(scope="module")
def transformer() -> torch.nn.Module:
    """A random 2-layer Transformer over the toy vocabulary: its beams reorder key/value caches
    (in place when few rows change) and its sentences end at different steps."""
    torch.manual_seed(0)
    cfg = ModelConfig(arch="transformer", attention="scaled_dot", hidden_dim=16, heads=2, ffn_dim=32,
                      encoder_layers=1, decoder_layers=2, dropout=0.0)
    model = build_model(cfg, 12, 12).eval()
    with torch.no_grad():  # EOS's logit 0 (untrained, it ranks first): outputs of 0 to 10 pieces
        model.decoder.output.weight[EOS_ID] = 0.0
    return model


@pytest.fixture(scope="module")
def src() -> torch.Tensor:
    return random_batch(8, seed=1)


def only_real_positions(src: torch.Tensor, i: int) -> torch.Tensor:
    """Sentence i alone, without the padding it had in the batch."""
    return src[i : i + 1, : int((src[i] != PAD_ID).sum())]


# --------------------------------------------------------------------------- helpers


def test_max_output_length_is_per_sentence():
    assert max_output_length(torch.tensor([1, 4, 7]), 1.5, 2).tolist() == [3, 8, 12]


def test_gnmt_length_penalty():
    assert gnmt_length_penalty(7, 0.0) == 1.0
    assert gnmt_length_penalty(7, 1.0) == pytest.approx(2.0)
    assert gnmt_length_penalty(7, 0.5) == pytest.approx(math.sqrt(2.0))


def test_top_k_and_top_p_filters():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert top_k_filter(logits, 2).isfinite().tolist() == [[False, True, True, False]]
    assert top_k_filter(logits, 0).equal(logits)
    probs = torch.tensor([[0.1, 0.5, 0.3, 0.1]])
    # 0.5 alone is short of 0.7; with 0.3 the mass reaches it, so two tokens stay.
    assert top_p_filter(probs.log(), 0.7).isfinite().tolist() == [[False, True, True, False]]
    assert top_p_filter(probs.log(), 0.01).isfinite().tolist() == [[False, True, False, False]]


# --------------------------------------------------------------------------- known answers


def test_keep_parents_in_place_on_an_example():
    # Parent 0 has two children, parent 1 two, parent 2 one; parents 3 and 4 none.
    parents = torch.tensor([[0, 0, 1, 2, 1]])
    order = keep_parents_in_place(parents)
    # Each parent's first child takes its slot; the second children take slots 3 and 4.
    assert order.tolist() == [[0, 2, 3, 1, 4]]


def test_keep_parents_in_place_keeps_as_many_beams_in_place_as_there_are_parents():
    generator = torch.Generator().manual_seed(0)
    for k in (1, 2, 5):
        parents = torch.randint(0, k, (200, k), generator=generator)
        order = keep_parents_in_place(parents)
        assert torch.equal(order.sort(dim=1).values, torch.arange(k).expand(200, k))  # a permutation
        in_place = (parents.gather(1, order) == torch.arange(k)).sum(dim=1)
        distinct_parents = torch.tensor([len(set(row)) for row in parents.tolist()])
        assert torch.equal(in_place, distinct_parents)  # the most possible
        # Children of one parent keep their rank order (the first child stays in place).
        for row_parents, row_order in zip(parents.tolist(), order.tolist()):
            first_child = {p: row_parents.index(p) for p in set(row_parents)}
            assert all(row_order[p] == child for p, child in first_child.items())


def test_rows_that_stay_fill_holes_from_the_end():
    generator = torch.Generator().manual_seed(0)
    for _ in range(100):
        leaving = torch.rand(9, generator=generator) < 0.4
        order = rows_that_stay(leaving)
        staying = (~leaving).nonzero().squeeze(1)
        assert sorted(order.tolist()) == staying.tolist()
        kept_in_place = [r for r in staying.tolist() if r < staying.numel()]
        assert all(order[r] == r for r in kept_in_place)
    assert rows_that_stay(torch.tensor([True, False, False, True, False])).tolist() == [4, 1, 2]


def test_beam_finds_the_better_sequence_that_greedy_misses():
    table = TransitionModel()
    src = torch.tensor([[A, B, EOS_ID]])
    greedy = greedy_search(table, src, **LIMITS)[0]
    best = beam_search(table, src, beam_size=2, length_penalty=0.0, **LIMITS)[0][0]
    assert greedy.tokens == [A, C]
    assert best.tokens == [B]
    assert best.score == pytest.approx(math.log(0.4 * 0.9), abs=1e-4)
    assert best.score > greedy.score


def test_beam_size_one_equals_greedy_when_eos_ranks_second():
    # After "A", EOS is the second best token: with one beam it must not end a hypothesis.
    table = TransitionModel()
    src = torch.tensor([[A, B, EOS_ID]])
    (best,) = beam_search(table, src, beam_size=1, length_penalty=0.0, **LIMITS)[0]
    assert best.tokens == greedy_search(table, src, **LIMITS)[0].tokens == [A, C]


def test_min_len_forbids_early_eos():
    table = TransitionModel()
    src = torch.tensor([[A, B, EOS_ID]])
    assert beam_search(table, src, 2, 0.0, **LIMITS)[0][0].tokens == [B]  # ends after 1 piece
    for min_len in (2, 3):
        nbest = beam_search(table, src, 3, 0.0, **LIMITS, min_len=min_len, nbest=3)[0]
        assert nbest and all(len(h.tokens) >= min_len for h in nbest)
        assert len(greedy_search(table, src, **LIMITS, min_len=min_len)[0].tokens) >= min_len
        generator = torch.Generator().manual_seed(0)
        draws = sample(table, src.repeat(20, 1), **LIMITS, min_len=min_len, generator=generator)
        assert all(len(h.tokens) >= min_len for h in draws)


def test_ensemble_attention_leaves_out_members_without_attention():
    """An RNN with attention: none returns all-zero weights; averaged in, they would halve the
    other members' weights in plots (and alone they make every piece 'align' to source piece 0)."""
    torch.manual_seed(0)
    models = [build_model(ModelConfig(arch="gru", attention=kind, embed_dim=8, hidden_dim=8), 20, 20).eval()
              for kind in ("none", "general")]
    src = torch.tensor([[5, 6, 7, EOS_ID]])
    ensemble = Ensemble(models)
    assert [has_attention(m) for m in (*models, ensemble, Ensemble(models[:1]))] == [False, True, True, False]
    with torch.inference_mode():
        prev = torch.tensor([2])
        _, _, expected = models[1].step(prev, models[1].init_state(models[1].encode(src)))
        _, _, averaged = ensemble.step(prev, ensemble.init_state(ensemble.encode(src)))
    assert torch.allclose(averaged, expected) and averaged.sum().item() == pytest.approx(1.0)


def test_outputs_end_where_learned_positions_end():
    """A Transformer with 16 learned positions reads BOS and at most 15 pieces, whatever
    decode.max_len_a/b allow (here 1.5 * 13 + 10); min_len keeps it from stopping earlier."""
    assert max_output_length(torch.tensor([1, 13]), 1.5, 10, max_positions=16).tolist() == [11, 15]
    cfg = ModelConfig(arch="transformer", attention="scaled_dot", hidden_dim=16, heads=2, ffn_dim=32,
                      encoder_layers=1, decoder_layers=1, positions="learned", max_positions=16)
    torch.manual_seed(0)
    model = build_model(cfg, 20, 20).eval()
    src = torch.randint(4, 20, (2, 13))
    src[:, -1] = EOS_ID
    limits = dict(max_len_a=1.5, max_len_b=10, min_len=30)
    with torch.inference_mode():
        outputs = [beam_search(model, src, 3, 1.0, **limits)[0][0], greedy_search(model, src, **limits)[0],
                   sample(model, src, **limits, generator=torch.Generator().manual_seed(0))[0]]
    assert [len(h.tokens) for h in outputs] == [15, 15, 15]


def test_max_length_is_respected(model, src):
    limits = max_output_length((src != PAD_ID).sum(1), 1.5, 3).tolist()
    beams = beam_search(model, src, 4, 1.0, **LIMITS, nbest=4)
    greedy = greedy_search(model, src, **LIMITS)
    for limit, nbest, first in zip(limits, beams, greedy):
        assert all(len(h.tokens) <= limit for h in nbest)
        assert len(first.tokens) <= limit
    # This model likes long outputs: some reach the limit (and were ended by the forced EOS).
    assert any(len(h.tokens) == limit for limit, h in zip(limits, greedy))
    # b alone, with a = 0: every output has at most 2 pieces.
    short = beam_search(model, src, 3, 1.0, max_len_a=0.0, max_len_b=2, nbest=3)
    assert all(len(h.tokens) <= 2 for nbest in short for h in nbest)


# --------------------------------------------------------------------------- consistency


def test_beam_size_one_equals_greedy(model, src):
    greedy = greedy_search(model, src, **LIMITS, return_attention=True)
    beams = beam_search(model, src, 1, 0.0, **LIMITS, return_attention=True)
    for g, (b,) in zip(greedy, beams):
        assert g.tokens == b.tokens
        assert g.score == pytest.approx(b.score, abs=1e-5)
        torch.testing.assert_close(g.attention, b.attention)


@pytest.mark.parametrize("model_name", ["model", "transformer"])
def test_batched_beam_equals_one_sentence_at_a_time(model_name, src, request):
    model = request.getfixturevalue(model_name)
    batched = beam_search(model, src, 4, 1.0, **LIMITS, nbest=4)
    for i, nbest in enumerate(batched):
        alone = beam_search(model, only_real_positions(src, i), 4, 1.0, **LIMITS, nbest=4)[0]
        assert [h.tokens for h in nbest] == [h.tokens for h in alone]
        assert [h.score for h in nbest] == pytest.approx([h.score for h in alone], abs=1e-5)


# RNN attention that carries a state from step to step, which beam search must reorder with
# the beams (monotonic's alignment, the Gaussians' means, coverage), and hard attention.
STATEFUL = {
    "monotonic": dict(attention="monotonic"),
    "mocha": dict(attention="monotonic", chunk_size=2, local_score="dot"),
    "gmm": dict(attention="gmm", gmm_components=2),
    "coverage": dict(attention="additive", coverage=True),
    "hard": dict(attention="hard"),
    "hard-exact": dict(attention="hard", hard_attention="exact"),
    # The Transformer's: Performer's recurrent state in place of a key/value cache; sparse
    # patterns and memory slots in the cache and the memory.
    "performer": dict(arch="transformer", attention="performer", features=8),
    "sparse-slots": dict(arch="transformer", attention="sparse", window=1, global_tokens=1, memory_slots=2),
}


@pytest.fixture(scope="module", params=list(STATEFUL))
def stateful(request) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(**{**dict(arch="gru", embed_dim=16, hidden_dim=16, encoder_layers=1, decoder_layers=1,
                                dropout=0.0, heads=2, ffn_dim=32), **STATEFUL[request.param]})
    model = build_model(cfg, 12, 12).eval()
    with torch.no_grad():  # outputs of mixed lengths
        if cfg.arch == "transformer":
            model.decoder.output.weight[EOS_ID] = 0.0
        else:
            model.decoder.output.bias[EOS_ID] = -1.0
        if cfg.coverage:
            model.decoder.attention.score.coverage_weight.normal_()  # as if trained: coverage moves scores
    return model


def test_stateful_attention_beams_equal_one_sentence_at_a_time_and_forced_scoring(stateful, src):
    """Beam search reorders each mechanism's state with its beams."""
    batched = beam_search(stateful, src, 3, 1.0, **LIMITS, nbest=3)
    for i, nbest in enumerate(batched):
        alone = beam_search(stateful, only_real_positions(src, i), 3, 1.0, **LIMITS, nbest=3)[0]
        assert [h.tokens for h in nbest] == [h.tokens for h in alone]
        assert [h.score for h in nbest] == pytest.approx([h.score for h in alone], abs=1e-5)
        rescored = forced_score(stateful, src[i : i + 1].expand(len(nbest), -1), [h.tokens for h in nbest], 1.0)
        assert [h.score for h in nbest] == pytest.approx(rescored, abs=1e-4)
    lengths = {len(h.tokens) for nbest in batched for h in nbest}
    assert len(lengths) > 1  # sentences end at different steps: finished rows leave the batch


@pytest.mark.parametrize("model_name", ["model", "transformer"])
@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_nbest_is_sorted_and_scores_match_forced_scoring(model_name, src, alpha, request):
    model = request.getfixturevalue(model_name)
    beams = beam_search(model, src, 5, alpha, **LIMITS, nbest=5)
    for i, nbest in enumerate(beams):
        scores = [h.score for h in nbest]
        assert len(nbest) >= 2 and scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in nbest}) == len(nbest)
        same_source = src[i : i + 1].expand(len(nbest), -1)
        rescored = forced_score(model, same_source, [h.tokens for h in nbest], alpha)
        assert scores == pytest.approx(rescored, abs=1e-4)


def test_attention_has_one_row_per_output_piece(model, src):
    src_lens = (src != PAD_ID).sum(1).tolist()
    for src_len, (h,) in zip(src_lens, beam_search(model, src, 3, 1.0, **LIMITS, return_attention=True)):
        assert h.attention.shape == (len(h.tokens), src_len)
        torch.testing.assert_close(h.attention.sum(1), torch.ones(len(h.tokens)))


def test_sampling_with_top_k_1_equals_greedy(model, src):
    greedy = greedy_search(model, src, **LIMITS)
    sampled = sample(model, src, **LIMITS, top_k=1, generator=torch.Generator().manual_seed(0))
    assert [h.tokens for h in sampled] == [h.tokens for h in greedy]
    assert [h.score for h in sampled] == pytest.approx([h.score for h in greedy], abs=1e-5)


def test_sampling_is_reproducible_with_a_seeded_generator(model, src):
    def draw(seed):
        return [h.tokens for h in sample(model, src, **LIMITS, generator=torch.Generator().manual_seed(seed))]

    assert draw(1) == draw(1)
    assert draw(1) != draw(2)


# --------------------------------------------------------------------------- ensembles and averaging


def test_ensemble_of_one_model_equals_the_model(model, src):
    alone = beam_search(model, src, 3, 1.0, **LIMITS, nbest=3)
    ensembled = beam_search(Ensemble([model]), src, 3, 1.0, **LIMITS, nbest=3)
    for a, e in zip(alone, ensembled):
        assert [h.tokens for h in a] == [h.tokens for h in e]
        assert [h.score for h in a] == pytest.approx([h.score for h in e], abs=1e-5)


def test_ensemble_of_two_identical_models_equals_either(model, src):
    twin = ToyAttentionGRU(seed=3).eval()
    alone = beam_search(model, src, 3, 1.0, **LIMITS, return_attention=True)
    ensembled = beam_search(Ensemble([model, twin]), src, 3, 1.0, **LIMITS, return_attention=True)
    for (a,), (e,) in zip(alone, ensembled):
        assert a.tokens == e.tokens
        assert a.score == pytest.approx(e.score, abs=1e-5)
        torch.testing.assert_close(a.attention, e.attention)


def test_ensemble_step_returns_normalised_log_probs(model, src):
    ensemble = Ensemble([model, ToyAttentionGRU(seed=4)])
    state = ensemble.init_state(ensemble.encode(src))
    logits, _, _ = ensemble.step(torch.full((src.size(0),), 2), state)
    torch.testing.assert_close(logits.logsumexp(-1), torch.zeros(src.size(0)))
    torch.testing.assert_close(logits.log_softmax(-1), logits)


def test_ensemble_refuses_different_vocabularies(model):
    with pytest.raises(UserError, match="vocabular"):
        Ensemble([model, ToyAttentionGRU(vocab_size=13)])


def test_average_checkpoints():
    one = {"weight": torch.tensor([1.0, 2.0]), "steps": torch.tensor(3)}
    two = {"weight": torch.tensor([3.0, 6.0]), "steps": torch.tensor(9)}
    same = average_checkpoints([one, one, one])
    assert same["weight"].equal(one["weight"]) and same["steps"].equal(one["steps"])
    mean = average_checkpoints([one, two])
    assert mean["weight"].tolist() == [2.0, 4.0]
    assert mean["steps"].item() == 3  # integers cannot be averaged: taken from the first
    assert one["weight"].tolist() == [1.0, 2.0]  # inputs untouched
    with pytest.raises(UserError, match="checkpoint 2"):
        average_checkpoints([one, {"weight": torch.zeros(2)}])
    with pytest.raises(UserError, match="shape"):
        average_checkpoints([one, {"weight": torch.zeros(3), "steps": torch.tensor(1)}])


# --------------------------------------------------------------------------- translator


def make_translator(model, warnings=None, **options) -> Translator:
    settings = TranslateSettings(**{**LIMITS, "min_len": 0, **options})
    return Translator(
        model,
        src_encode=lambda lines: [[int(word) for word in line.split()] for line in lines],
        tgt_decode=lambda ids: " ".join(map(str, ids)),
        settings=settings,
        warn=(warnings.append if warnings is not None else print),
    )


LINES = ["4 5 6", "7 8 9 10 11 4 5", "6", "", "9 9 8 7", "  ", "11 10"]


def test_translator_restores_input_order_and_skips_empty_lines(model):
    translator = make_translator(model, beam_size=3, batch_size=6, nbest=2)  # 2 sentences a batch
    assert translator.sentences_per_batch() == 2
    results = translator.translate(LINES)
    assert len(results) == len(LINES)
    for line, nbest in zip(LINES, results):
        if not line.strip():
            assert [(r.text, r.tokens) for r in nbest] == [("", [])]
            continue
        alone = translator.translate([line])[0]
        assert len(nbest) == 2
        assert [r.text for r in nbest] == [r.text for r in alone]
        assert nbest[0].src_ids == [int(w) for w in line.split()] + [EOS_ID]


@pytest.mark.parametrize("beam_size", [1, 3])
def test_translator_in_bf16_decodes_a_copy_and_scores_like_the_fp32_model(model, beam_size):
    translator = make_translator(model, beam_size=beam_size, precision="bf16", length_penalty=0.0)
    results = translator.translate([line for line in LINES if line.strip()])
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the caller's model is untouched
    assert all(p.dtype == torch.bfloat16 for p in translator.model.parameters())
    for r in (nbest[0] for nbest in results):
        src = torch.tensor([r.src_ids])
        [fp32_score] = forced_score(model, src, [r.tokens], length_penalty=0.0)
        # The same tokens scored by the fp32 model: bf16 rounding moves each log-prob a little.
        assert r.score == pytest.approx(fp32_score, abs=0.1 * (len(r.tokens) + 1))


def test_translator_never_runs_the_model_for_empty_lines():
    class Unusable(torch.nn.Module):
        tgt_vocab_size = 12
        max_positions = None

        def encode(self, src):
            raise AssertionError("the model should not run")

    results = make_translator(Unusable()).translate(["", "   "])
    assert [[r.text for r in nbest] for nbest in results] == [[""], [""]]


def test_translator_truncates_overlong_lines_with_a_warning(model):
    warnings: list[str] = []
    translator = make_translator(model, max_source_len=4, return_attention=True, beam_size=2)
    translator.warn = warnings.append
    results = translator.translate(["4 5 6", "4 5 6 7 8 9 10"], first_line=10)
    assert len(warnings) == 1 and "line 11" in warnings[0] and "7" in warnings[0]
    result = results[1][0]
    assert result.src_ids == [4, 5, 6, 7, EOS_ID]
    assert result.attention.shape == (len(result.tokens), 5)
    assert len(result.alignment().split()) == len(result.tokens)


def test_translator_sampling_gives_nbest_draws(model):
    translator = make_translator(model, sampling=True, nbest=3, seed=7, top_k=4)
    first, again = translator.translate(LINES[:3]), translator.translate(LINES[:3])
    assert [[r.tokens for r in nbest] for nbest in first] == [[r.tokens for r in nbest] for nbest in again]
    assert all(len(nbest) == 3 for nbest in first)


def test_translator_refuses_nbest_above_beam_size(model):
    with pytest.raises(UserError, match="beam_size"):
        make_translator(model, beam_size=2, nbest=3)


def _tag_with_pid(model, settings, batch):
    """A stand-in for decode_batch that says which process decoded each sentence."""
    return [[Hypothesis(ids, float(os.getpid()))] for ids in batch]


def wait_for_a_child(workers: DecodeWorkers) -> DecodeWorkers:
    """Let this process start on its share of ``workers.decode`` only once a child has taken a
    batch (60 s at most): a child slow to start would otherwise never get one of a few quick ones."""
    decode_here = workers.decode_here

    def patient(batch):
        deadline = time.monotonic() + 60
        while workers.unclaimed[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        return decode_here(batch)

    workers.decode_here = patient
    return workers


def test_decode_workers_share_the_batches_and_keep_their_order():
    batches = [[[i, j] for j in range(3)] for i in range(8)]
    workers = wait_for_a_child(DecodeWorkers(_tag_with_pid, torch.nn.Linear(2, 2), TranslateSettings(), workers=2))
    try:
        results = workers.decode(batches)
    finally:
        workers.close()
    assert [[hyps[0].tokens for hyps in decoded] for decoded in results] == batches
    decoded_by = [hyps[0].score for decoded in results for hyps in decoded]
    assert float(os.getpid()) in decoded_by and set(decoded_by) - {float(os.getpid())}  # both worked


def test_worker_processes_are_refused_off_the_cpu():
    with pytest.raises(UserError, match="--workers 2: worker processes decode on the CPU only"):
        make_translator(torch.nn.Linear(2, 2, device="meta"), workers=2)


def _slow_in_child_failing_here(model, settings, batch):
    """A stand-in for decode_batch: slow in a child, an error in this process for negative ids."""
    if multiprocessing.parent_process() is not None:
        time.sleep(0.3)
    elif batch[0][0] < 0:
        raise RuntimeError("this process failed")
    return [[Hypothesis(ids, 0.0)] for ids in batch]


def test_decode_workers_after_an_error_decode_the_next_call_whole():
    # The first call fails here while the child is in the middle of a batch; the child's task
    # must be over before the next call, or it would claim that call's batches for the old list.
    workers = wait_for_a_child(DecodeWorkers(_slow_in_child_failing_here, torch.nn.Linear(2, 2),
                                             TranslateSettings(), workers=2))
    try:
        with pytest.raises(RuntimeError, match="this process failed"):
            workers.decode([[[-i, j] for j in range(3)] for i in range(1, 7)])
        batches = [[[i, j] for j in range(3)] for i in range(6)]
        results = workers.decode(batches)
    finally:
        workers.close()
    assert [[hyps[0].tokens for hyps in decoded] for decoded in results] == batches


@pytest.mark.parametrize("options", [
    dict(beam_size=1, return_attention=True), dict(beam_size=3, nbest=2), dict(sampling=True, nbest=2, seed=5),
], ids=["greedy-with-attention", "beam-nbest", "sampling"])
def test_worker_processes_translate_as_one_process_does(transformer, options):
    generator = torch.Generator().manual_seed(2)
    lines = [" ".join(str(int(t)) for t in torch.randint(4, 12, (int(n),), generator=generator))
             for n in torch.randint(1, 9, (22,), generator=generator)]
    batch_size = 3 * (options.get("nbest", 1) if options.get("sampling") else options["beam_size"])  # 8 batches
    alone = make_translator(transformer, batch_size=batch_size, **options).translate(lines)
    with make_translator(transformer, batch_size=batch_size, workers=2, **options) as translator:
        translator.workers = wait_for_a_child(DecodeWorkers(decode_batch, translator.model, translator.settings, 2))
        shared = translator.translate(lines)
    for one, other in zip(alone, shared):
        assert [r.tokens for r in other] == [r.tokens for r in one]
        assert [r.score for r in other] == pytest.approx([r.score for r in one], abs=1e-5)
        for r, s in zip(one, other):
            if r.attention is not None:
                torch.testing.assert_close(s.attention, r.attention)
    assert options.get("return_attention") is None or shared[0][0].attention is not None


def test_hard_alignments_on_a_hand_made_matrix():
    attention = torch.tensor(
        [
            [0.7, 0.2, 0.1],  # target 0 <- source 0
            [0.1, 0.1, 0.8],  # target 1 <- source 2
            [0.2, 0.5, 0.3],  # target 2 <- source 1
            [0.1, 0.6, 0.3],  # target 3 <- source 1
        ]
    )
    pairs = hard_alignments(attention)
    assert pairs == [(0, 0), (2, 1), (1, 2), (1, 3)]
    assert pharaoh(pairs) == "0-0 2-1 1-2 1-3"


# --------------------------------------------------------------------------- what a GPU changes


@pytest.mark.parametrize("model_name", ["model", "transformer"])
def test_greedy_and_sampling_reading_finished_rows_a_step_late_give_the_same_outputs(model_name, src, request,
                                                                                    monkeypatch):
    """On a GPU greedy search and sampling learn a step late which sentences ended (so the host
    never waits for the device): those then leave the batch, and the search stops, a step later."""
    import seq2seq.decoding.search_helpers as search_helpers

    model = request.getfixturevalue(model_name)

    def run() -> list[list[Hypothesis]]:
        draws = sample(model, src, **LIMITS, top_k=3, generator=torch.Generator().manual_seed(5))
        return [greedy_search(model, src, **LIMITS, return_attention=True), draws]

    at_once = run()
    monkeypatch.setattr(search_helpers, "reads_late", lambda device: True)
    late = run()
    for expected, got in zip(at_once, late):
        assert [h.tokens for h in got] == [h.tokens for h in expected]
        assert [h.score for h in got] == pytest.approx([h.score for h in expected], abs=1e-5)
    for expected, got in zip(at_once[0], late[0]):
        torch.testing.assert_close(got.attention, expected.attention)
    assert len({len(h.tokens) for h in at_once[0]}) > 1, "precondition: sentences end at different steps"


def test_the_transformer_computes_step_attention_only_for_searches_that_return_it(transformer, src, monkeypatch):
    returned = []  # whether each step returned attention weights
    step = transformer.step

    def recording_step(prev, state):
        logits, state, attention = step(prev, state)
        returned.append(attention is not None)
        return logits, state, attention

    monkeypatch.setattr(transformer, "step", recording_step)
    without = [greedy_search(transformer, src, **LIMITS), beam_search(transformer, src, 3, 1.0, **LIMITS)]
    assert returned and not any(returned)
    returned.clear()
    with_attention = [greedy_search(transformer, src, **LIMITS, return_attention=True),
                      beam_search(transformer, src, 3, 1.0, **LIMITS, return_attention=True)]
    assert returned and all(returned)
    assert transformer.step_attention  # switched back on: model.step alone returns weights
    assert [h.tokens for h in without[0]] == [h.tokens for h in with_attention[0]]
    assert [h[0].tokens for h in without[1]] == [h[0].tokens for h in with_attention[1]]


def test_an_ensembles_transformers_skip_step_attention_too(transformer, src):
    ensemble = Ensemble([transformer, transformer])
    switches = []
    original = Ensemble.step

    def recording_step(self, prev, state):
        switches.append([m.step_attention for m in self.members])
        return original(self, prev, state)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Ensemble, "step", recording_step)
        beam_search(ensemble, src, 2, 1.0, **LIMITS)
    assert switches and all(s == [False, False] for s in switches)


def test_a_transformer_reorder_finds_the_moved_rows_once_for_all_layers(transformer, src, monkeypatch):
    import seq2seq.models.transformer as transformer_module

    calls = []
    moved_rows = transformer_module.moved_rows
    monkeypatch.setattr(transformer_module, "moved_rows", lambda indices: calls.append(1) or moved_rows(indices))
    state = transformer.init_state(transformer.encode(src))
    _, state, _ = transformer.step(torch.full((src.size(0),), 2), state)
    rows = torch.arange(src.size(0))
    rows[[0, 1]] = rows[[1, 0]]
    keys_before = [cache.keys_values()[0].clone() for cache in state["caches"]]  # (reordered in place)
    reordered = transformer.reorder(state, rows)
    assert len(transformer.decoder.layers) == 2 and len(calls) == 1
    for keys, after in zip(keys_before, reordered["caches"]):
        torch.testing.assert_close(after.keys_values()[0], keys[rows])


def test_the_attention_shown_is_a_decode_setting_that_leaves_the_model_as_it_was(transformer, src):
    """--attention-layer/--attention-head reach the model through the settings, for the search
    only: each layer and head gives its own weights, and the model keeps its own choice."""
    sources = [only_real_positions(src, i)[0].tolist() for i in range(3)]

    def weights(**view) -> list[torch.Tensor]:
        settings = TranslateSettings(beam_size=1, max_len_a=1.0, max_len_b=2, return_attention=True, **view)
        return [hyps[0].attention for hyps in decode_batch(transformer, settings, sources)]

    last, first, head = weights(), weights(attention_layer=0), weights(attention_layer=0, attention_head=1)
    assert all(torch.equal(a, b) for a, b in zip(last, weights(attention_layer=-1)))
    assert not all(torch.allclose(a, b) for a, b in zip(last, first))
    assert not all(torch.allclose(a, b) for a, b in zip(first, head))
    assert (transformer.attention_layer, transformer.attention_head) == (-1, None)
