"""``make bench-parity``'s bookkeeping, on made-up logs and the tiny corpus: nothing here trains
fairseq or runs the benchmark."""

from __future__ import annotations

import pytest

from bench import parity, parity_fairseq
from bench.parity import attn_curve, bleu_at, continues, tokens_seen
from bench.run import CONFIGS, ROOT
from tests.test_bench import fairseq_log


def test_attn_minutes_leave_out_the_validations_before_each_update():
    records = [
        {"step": 250, "tokens_per_s": 1000.0, "wall_seconds": 120.0},
        {"step": 250, "valid_loss": 5.0, "valid_bleu": 1.0, "valid_chrf": 10.0, "valid_seconds": 30.0},
        {"step": 500, "tokens_per_s": 1200.0, "wall_seconds": 270.0},
        {"step": 500, "valid_loss": 4.0, "valid_bleu": 3.0, "valid_chrf": 20.0, "valid_seconds": 40.0},
    ]
    curve = attn_curve(records)
    assert curve["updates"] == [250, 500]
    assert curve["train_minutes"] == pytest.approx([2.0, 4.0])  # 270 s less the 30 s validation at 250
    assert curve["valid_nll"] == [5.0, 4.0] and curve["valid_bleu"] == [1.0, 3.0]


def test_fairseq_walls_are_read_per_update():
    walls, speeds, sizes = parity_fairseq.logged_walls_from([fairseq_log({10: 100.0, 20: 300.0})])
    assert walls == {10: 21.0, 20: 21.0} and speeds == [100.0, 300.0] and sizes == [3381.6, 3381.6]


def test_a_continued_fairseq_run_adds_its_clock_to_the_stretches_before(tmp_path):
    # A resumed fairseq logs wall=0 (its meter loads stopped): its lines' timestamps count from the
    # checkpoint's loading. The stretches are read in update order, not by name (from100 < from20).
    stretches = ((0, {10: 100.0, 20: 300.0}, 50, None), (20, {30: 200.0, 100: 400.0}, 0, "00:02:30"),
                 (100, {110: 500.0}, 0, "00:10:30"))  # fairseq_log's line for update u is at minute u // 10
    for start, rates, wall, loaded in stretches:
        log_text = fairseq_log(rates).replace("wall=21", f"wall={wall}")
        if loaded:
            log_text = f"2026-12-07 {loaded} | INFO | fairseq.trainer | Loaded checkpoint x.pt\n{log_text}"
        parity_fairseq.train_log(tmp_path, start).write_text(log_text)
    walls, speeds, _ = parity_fairseq.logged_walls(tmp_path)
    assert walls == {10: 50.0, 20: 50.0, 30: 80.0, 100: 500.0, 110: 530.0}
    assert speeds == [100.0, 300.0, 200.0, 400.0, 500.0]


def test_an_arm_is_continued_only_to_more_updates_with_the_same_settings_and_schedule(monkeypatch):
    config = ROOT / CONFIGS["T"]
    settings = {"config": "T", "updates": 2000, "every": 250, "threads": 2, "processor": "x", "data": "full corpus"}
    earlier = {"settings": {**settings, "updates": 1000}, "updates": [250, 500, 750, 1000]}
    assert continues(earlier, settings, config)
    assert not continues(earlier, {**settings, "updates": 1000}, config)
    assert not continues(earlier, {**settings, "every": 500}, config)
    assert not continues({**earlier, "settings": {**settings, "updates": 1000, "processor": "y"}}, settings, config)
    # A cosine schedule decays to train.max_steps: 1,000 updates of it are not the first 1,000 of 2,000.
    monkeypatch.setattr(parity, "DATA_OVERRIDES", ["train.schedule=cosine"])
    assert not continues(earlier, settings, config)


def test_bleu_at_equal_wall_clock_interpolates_from_the_origin():
    curve = {"train_minutes": [2.0, 4.0], "valid_bleu": [2.0, 6.0]}
    assert bleu_at(curve, 1.0, curve["train_minutes"]) == pytest.approx(1.0)
    assert bleu_at(curve, 3.0, curve["train_minutes"]) == pytest.approx(4.0)
    assert bleu_at(curve, 9.0, curve["train_minutes"]) == pytest.approx(6.0)  # past the end: the last, never more


def test_bleu_at_equal_tokens_reads_the_curve_by_tokens_trained_on():
    curve = {"updates": [250, 500], "tokens_per_update": 4000.0, "valid_bleu": [2.0, 6.0]}
    assert tokens_seen(curve) == [1e6, 2e6]
    assert bleu_at(curve, 1.5e6, tokens_seen(curve)) == pytest.approx(4.0)


def test_fairseq_reads_attns_pieces_and_dictionary_in_attns_order(tmp_path, tiny_corpus):
    import sentencepiece as spm

    from seq2seq.data.prepare import load_prepared

    parity_fairseq.write_pieces(tiny_corpus.prepared_dir, tmp_path)
    data = load_prepared(tiny_corpus.prepared_dir)
    tok = data.tokenizer
    ids = spm.SentencePieceProcessor(model_file=str(tiny_corpus.prepared_dir / "spm.model")).piece_to_id
    entries = [line.split(" ") for line in (tmp_path / "dict.txt").read_text(encoding="utf-8").splitlines()]
    # fairseq numbers its own 4 specials first, then the dictionary: attn's id i is fairseq's i.
    assert [ids(piece) for piece, _ in entries] == list(range(4, tok.tgt_vocab_size))
    for split in ("train", "valid"):
        pairs = data.dataset(split)
        lines = (tmp_path / f"{split}.sp.en").read_text(encoding="utf-8").splitlines()
        assert len(lines) == len(pairs)
        for i in (0, len(pairs) - 1):
            assert [ids(piece) for piece in lines[i].split()] == pairs.pair(i)[1].tolist()
    counted = sum(int(count) for _, count in entries)
    train = data.dataset("train")
    assert counted == int(train.src_lengths.sum() + train.tgt_lengths.sum())
