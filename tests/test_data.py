"""The data pipeline: corpus checks, tokenizer, binarised store, batching and ``attn tokenize``.

Everything runs on a few hundred lines of the bundled corpus with tiny vocabularies, so the
whole file takes seconds.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from seq2seq.config import Config, load_config
from seq2seq.data import store as store_module
from seq2seq.data.batching import TokenBatchSampler, collate, padding_waste, pair_cost
from seq2seq.data.corpus import check_parallel, read_lines
from seq2seq.data.prepare import PreparedData, filter_reason, prepare_data
from seq2seq.data.special import BOS_ID, EOS_ID, PAD_ID
from seq2seq.data.store import ParallelDataset, TokenStore, write_store
from seq2seq.data.tokenizer import Tokenizer, sample_sentences, train_tokenizer
from seq2seq.errors import UserError

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "bible-en-es-sample"
SPLIT_SIZES = {"train": 300, "valid": 40, "test": 40}


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A small copy of the bundled corpus: ``{corpus}/{split}.{es,en}``."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    for split, size in SPLIT_SIZES.items():
        for lang in ("es", "en"):
            lines = (SAMPLE / f"{split}.{lang}").read_text(encoding="utf-8").split("\n")[:size]
            (folder / f"{split}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def make_config(corpus: Path, prepared: Path, *overrides: str) -> Config:
    return load_config(None, [
        f"data.train={corpus / 'train'}",
        f"data.valid={corpus / 'valid'}",
        f"data.test={corpus / 'test'}",
        f"data.prepared_dir={prepared}",
        "data.tokenizer.vocab_size=300",
        *overrides,
    ])


def quiet_prepare(cfg: Config, force: bool = False) -> tuple[PreparedData, list[str]]:
    messages: list[str] = []
    return prepare_data(cfg, log=messages.append, force=force), messages


def folder_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, to show that a failed run left it untouched."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def random_lengths(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    src = rng.integers(1, 80, n)
    tgt = np.clip(src + rng.integers(-10, 10, n), 1, None)
    return src, tgt


# --------------------------------------------------------------------------- corpus


def test_read_lines_strips_only_the_line_ending(tmp_path: Path) -> None:
    path = tmp_path / "text.es"
    path.write_bytes("\ufeffuno\r\ndos\rtres\n  cuatro \n\nfin".encode())
    assert list(read_lines(path)) == ["uno", "dos\rtres", "  cuatro ", "", "fin"]
    assert check_parallel(str(tmp_path / "text"), "es", "es") == 5


def test_check_parallel_counts_lines(corpus: Path) -> None:
    assert check_parallel(str(corpus / "train"), "es", "en") == SPLIT_SIZES["train"]


# --------------------------------------------------------------------------- tokenizer


@pytest.mark.parametrize("kind, joint", [("unigram", True), ("bpe", False)])
def test_tokenizer_round_trip_and_serialization(
    corpus: Path, tmp_path: Path, kind: str, joint: bool
) -> None:
    cfg = make_config(corpus, tmp_path / "unused", f"data.tokenizer.type={kind}",
                      f"data.tokenizer.joint={str(joint).lower()}", "model.share_vocab=false")
    out = tmp_path / "tok"
    out.mkdir()
    tokenizer = train_tokenizer(cfg.data, out)
    assert tokenizer.joint is joint
    assert 0 < tokenizer.src_vocab_size <= 300 and 0 < tokenizer.tgt_vocab_size <= 300

    # Training lines: every character in them is in the vocabulary, so decoding is exact.
    english = list(read_lines(corpus / "train.en"))[:10]
    spanish = list(read_lines(corpus / "train.es"))[:10]
    for line, ids in zip(english, tokenizer.encode_tgt(english)):
        assert tokenizer.decode_tgt(ids) == line
        # Special ids are not text: a padded decoder sequence decodes to the same sentence.
        assert tokenizer.decode_tgt([BOS_ID, *ids, EOS_ID, PAD_ID]) == line
        assert "".join(tokenizer.tgt_pieces(ids)).replace("\u2581", " ").strip() == line
    assert all(min(ids) > EOS_ID for ids in tokenizer.encode_src(spanish))
    assert tokenizer.src_pieces([EOS_ID]) == ["</s>"]

    # Bytes (what a checkpoint carries) and the saved folder both give back the same tokenizer.
    for copy in (Tokenizer.from_bytes(*tokenizer.to_bytes()), Tokenizer.load(out)):
        assert copy.fingerprint() == tokenizer.fingerprint()
        assert copy.encode_src(spanish) == tokenizer.encode_src(spanish)
        assert copy.encode_tgt(english) == tokenizer.encode_tgt(english)


def test_small_corpus_with_a_big_vocabulary_still_trains(corpus: Path, tmp_path: Path) -> None:
    cfg = make_config(corpus, tmp_path / "unused", "data.tokenizer.vocab_size=50000")
    tokenizer = train_tokenizer(cfg.data, tmp_path)
    assert 300 < tokenizer.src_vocab_size < 50000


def test_too_small_vocabulary_is_a_user_error(corpus: Path, tmp_path: Path) -> None:
    cfg = make_config(corpus, tmp_path / "unused", "data.tokenizer.vocab_size=20")
    with pytest.raises(UserError, match="data.tokenizer: SentencePiece could not train a model: Vocabulary"):
        train_tokenizer(cfg.data, tmp_path)


def test_missing_tokenizer_is_named(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"spm\.model: tokenizer not found; run `attn tokenize`"):
        Tokenizer.load(tmp_path)
    (tmp_path / "spm.src.model").write_bytes(b"")
    with pytest.raises(UserError, match=r"spm\.tgt\.model: tokenizer model not found"):
        Tokenizer.load(tmp_path)
    (tmp_path / "spm.model").write_bytes(b"not a model")
    with pytest.raises(UserError, match=r"spm\.model: not a valid SentencePiece model"):
        Tokenizer.load(tmp_path)


def test_fingerprint_tells_tokenizers_apart(corpus: Path, tmp_path: Path) -> None:
    fingerprints = set()
    for vocab_size in (200, 300):
        out = tmp_path / str(vocab_size)
        out.mkdir()
        cfg = make_config(corpus, tmp_path / "unused", f"data.tokenizer.vocab_size={vocab_size}")
        fingerprints.add(train_tokenizer(cfg.data, out).fingerprint())
    assert len(fingerprints) == 2


def test_sentence_sample_is_uniform_and_the_same_every_time() -> None:
    assert sample_sentences(map(str, range(5)), 10) == ["0", "1", "2", "3", "4"]  # fewer: all, in order
    sample = sample_sentences(map(str, range(1000)), 50)
    assert len(set(sample)) == 50 and sample == sample_sentences(map(str, range(1000)), 50)
    # Every sentence of 20 is in a 5-sentence sample a quarter of the time (4,000 seeds: +-10%).
    counts = Counter(line for seed in range(4000) for line in sample_sentences(map(str, range(20)), 5, seed))
    assert set(counts) == {str(i) for i in range(20)}
    assert all(900 <= count <= 1100 for count in counts.values()), counts


def test_tokenizer_trained_on_a_sample_is_the_same_in_every_process(tmp_path: Path) -> None:
    """SentencePiece's own sampling used a new seed in each process: the same corpus and config
    gave another vocabulary at every fresh `attn tokenize` once the corpus outgrew the sample."""
    script = (f"from seq2seq.config import load_config; from seq2seq.data.tokenizer import train_tokenizer; "
              f"cfg = load_config(None, ['data.train={SAMPLE / 'train'}', 'data.tokenizer.vocab_size=300', "
              f"'data.tokenizer.input_sentence_size=1000']); "
              f"print(train_tokenizer(cfg.data, {str(tmp_path)!r}).fingerprint())")
    env = {**os.environ, "PYTHONPATH": str(SAMPLE.parents[1])}
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
            for _ in range(3)]
    assert len({run.stdout for run in runs}) == 1, [run.stdout for run in runs]


# --------------------------------------------------------------------------- store


@pytest.mark.parametrize("vocab_size, dtype", [(300, np.uint16), (70_000, np.uint32)])
def test_store_round_trip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vocab_size: int, dtype: type
) -> None:
    monkeypatch.setattr(store_module, "CHUNK_TOKENS", 7)  # force many partial flushes
    rng = np.random.default_rng(0)
    sequences = [rng.integers(0, vocab_size, rng.integers(0, 12)).tolist() for _ in range(50)]
    assert write_store(tmp_path / "s", iter(sequences), vocab_size) == 50

    store = TokenStore(tmp_path / "s")
    assert len(store) == 50
    assert store.tokens.dtype == dtype
    assert store.lengths.tolist() == [len(s) for s in sequences]
    assert all(store[i].tolist() == s for i, s in enumerate(sequences))


def test_interrupted_store_write_leaves_nothing(tmp_path: Path) -> None:
    def failing():
        yield [4, 5, 6]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_store(tmp_path / "s", failing(), 300)
    assert list(tmp_path.iterdir()) == []


def test_truncated_store_is_detected(tmp_path: Path) -> None:
    write_store(tmp_path / "s", [[4, 5, 6], [7]], 300)
    (tmp_path / "s.bin").write_bytes((tmp_path / "s.bin").read_bytes()[:-2])
    with pytest.raises(UserError, match=r"s\.bin: size does not match"):
        TokenStore(tmp_path / "s")


# --------------------------------------------------------------------------- batching


def test_batches_respect_the_budget_and_cover_every_pair_once() -> None:
    src, tgt = random_lengths(3000)
    sampler = TokenBatchSampler(src, tgt, batch_tokens=1000, seed=1)
    batches = sampler.batches(epoch=0)
    for batch in batches:
        assert len(batch) * (max(src[batch].max(), tgt[batch].max()) + 1) <= 1000
    assert sorted(np.concatenate(batches).tolist()) == list(range(3000))
    assert padding_waste(batches, src, tgt) < 0.10


def test_a_pair_over_the_budget_gets_a_batch_of_its_own() -> None:
    src, tgt = np.array([5, 300, 6, 7]), np.array([5, 2, 6, 7])
    batches = [b.tolist() for b in TokenBatchSampler(src, tgt, batch_tokens=100, seed=0).batches(0)]
    assert [1] in batches
    others = [b for b in batches if b != [1]]
    assert all(len(b) * max(pair_cost(src[i], tgt[i]) for i in b) <= 100 for b in others)


def test_batch_order_depends_only_on_seed_and_epoch() -> None:
    src, tgt = random_lengths(2000)

    def order(seed: int, epoch: int) -> list[list[int]]:
        return [b.tolist() for b in TokenBatchSampler(src, tgt, 800, seed=seed).batches(epoch)]

    assert order(3, 0) == order(3, 0)
    assert order(3, 0) != order(3, 1)
    assert order(3, 0) != order(4, 0)


def test_unshuffled_batches_follow_length_order() -> None:
    src, tgt = random_lengths(500)
    sampler = TokenBatchSampler(src, tgt, 800, seed=0, shuffle=False)
    first_pairs = [b[0] for b in sampler.batches(0)]
    longer = np.maximum(src, tgt)[first_pairs]
    assert (np.diff(longer) >= 0).all()
    assert [b.tolist() for b in sampler.batches(0)] == [b.tolist() for b in sampler.batches(5)]


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_ranks_get_disjoint_equal_shards(world_size: int) -> None:
    src, tgt = random_lengths(1001)
    shards = [
        TokenBatchSampler(src, tgt, 900, seed=7, rank=rank, world_size=world_size).batches(epoch=2)
        for rank in range(world_size)
    ]
    assert len({len(shard) for shard in shards}) == 1
    seen = np.concatenate([np.concatenate(shard) for shard in shards])
    assert sorted(seen.tolist()) == list(range(1001))


def test_collate_builds_padded_source_and_shifted_target(tmp_path: Path) -> None:
    write_store(tmp_path / "train.src", [[10, 11, 12], [13]], 300)
    write_store(tmp_path / "train.tgt", [[20], [21, 22, 23, 24]], 300)
    batch = collate(ParallelDataset(tmp_path, "train"), np.array([0, 1]))
    B, E, P = BOS_ID, EOS_ID, PAD_ID
    assert batch.src.tolist() == [[10, 11, 12, E], [13, E, P, P]]
    assert batch.tgt_in.tolist() == [[B, 20, P, P, P], [B, 21, 22, 23, 24]]
    assert batch.tgt_out.tolist() == [[20, E, P, P, P], [21, 22, 23, 24, E]]
    assert (batch.n_src_tokens, batch.n_tgt_tokens) == (6, 7)
    assert batch.src.dtype == batch.tgt_in.dtype == batch.tgt_out.dtype == torch.long


def test_padding_waste_counts_pad_tokens_of_both_sides() -> None:
    src, tgt = np.array([3, 1]), np.array([1, 1])
    # Source tensor 2 x 4 holds 6 real tokens, target 2 x 2 holds 4: 2 of 12 are padding.
    assert padding_waste([np.array([0, 1])], src, tgt) == pytest.approx(2 / 12)


# --------------------------------------------------------------------------- attn tokenize


def test_prepare_encodes_every_split_and_round_trips_text(corpus: Path, tmp_path: Path) -> None:
    cfg = make_config(corpus, tmp_path / "prepared", "data.max_len=10000", "data.max_len_ratio=100", "train.batch_tokens=10001")
    prepared, messages = quiet_prepare(cfg)
    report = prepared.report
    assert {split: stats["pairs_read"] for split, stats in report["splits"].items()} == SPLIT_SIZES
    assert any("tokenizer: unigram" in m for m in messages)

    # Text -> tokenizer -> store -> text, on training lines (unfiltered here, and free of unknowns).
    train = prepared.dataset("train")
    tokenizer = prepared.tokenizer
    english = list(read_lines(corpus / "train.en"))
    spanish = list(read_lines(corpus / "train.es"))
    assert len(train) == len(english) == len(spanish)
    assert [tokenizer.decode_tgt(train.pair(i)[1]) for i in range(len(train))] == english
    # The tokenizer only decodes targets; source pieces spell the text with "▁" for spaces.
    spelled = [
        "".join(tokenizer.src_pieces(train.pair(i)[0])).replace("\u2581", " ").strip() for i in range(len(train))
    ]
    assert spelled == spanish

    valid = prepared.dataset("valid")
    english = list(read_lines(corpus / "valid.en"))
    assert [valid.pair(i)[1].tolist() for i in range(len(valid))] == tokenizer.encode_tgt(english)
    assert report["splits"]["valid"]["tgt"]["tokens"] == int(valid.tgt_lengths.sum())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "prepared"]  # no staging left


def test_prepare_filters_only_training_pairs(corpus: Path, tmp_path: Path) -> None:
    cfg = make_config(corpus, tmp_path / "prepared", "data.max_len=30", "data.max_len_ratio=1.3")
    prepared, _ = quiet_prepare(cfg)
    tokenizer = prepared.tokenizer

    expected: dict[str, int] = {}
    src_ids = tokenizer.encode_src(list(read_lines(corpus / "train.es")))
    tgt_ids = tokenizer.encode_tgt(list(read_lines(corpus / "train.en")))
    for s, t in zip(src_ids, tgt_ids):
        reason = filter_reason(len(s), len(t), cfg.data)
        if reason:
            expected[reason] = expected.get(reason, 0) + 1
    train = prepared.report["splits"]["train"]
    assert train["filtered"] == expected
    assert expected.get("max_len", 0) > 0 and expected.get("max_len_ratio", 0) > 0
    assert train["pairs"] == 300 - sum(expected.values()) == len(prepared.dataset("train"))
    assert max(prepared.dataset("train").src_lengths) <= 30
    assert len(prepared.dataset("valid")) == SPLIT_SIZES["valid"]  # never filtered


def test_filter_reasons() -> None:
    limits = load_config(None, ["data.max_len=10", "data.max_len_ratio=2.0"]).data
    assert filter_reason(5, 5, limits) is None
    assert filter_reason(0, 5, limits) == "empty"
    assert filter_reason(11, 10, limits) == "max_len"
    assert filter_reason(2, 6, limits) == "max_len_ratio"  # 6 + 1 > 2 * (2 + 1)
    assert filter_reason(6, 2, limits) == "max_len_ratio"
    assert filter_reason(2, 5, limits) is None  # 5 + 1 == 2 * (2 + 1)


def test_unchanged_rerun_is_a_no_op_and_a_changed_input_rebuilds(corpus: Path, tmp_path: Path) -> None:
    cfg = make_config(corpus, tmp_path / "prepared")
    first, _ = quiet_prepare(cfg)
    before = folder_digest(first.dir)
    mtime = (first.dir / "stamp.json").stat().st_mtime_ns

    again, messages = quiet_prepare(cfg)
    assert messages == [f"tokenize: {cfg.prepared_dir} is up to date"]
    assert (again.dir / "stamp.json").stat().st_mtime_ns == mtime
    assert again.tokenizer.fingerprint() == first.tokenizer.fingerprint()
    _, messages = quiet_prepare(cfg, force=True)
    assert "(forced)" in messages[0]

    with (corpus / "valid.en").open("a", encoding="utf-8") as file:
        file.write("And God saw the light.\n")
    with (corpus / "valid.es").open("a", encoding="utf-8") as file:
        file.write("Y vió Dios la luz.\n")
    rebuilt, messages = quiet_prepare(cfg)
    assert "valid.en" in messages[0] and "building" in messages[0]
    assert len(rebuilt.dataset("valid")) == SPLIT_SIZES["valid"] + 1
    assert folder_digest(rebuilt.dir) != before

    _, messages = quiet_prepare(make_config(corpus, tmp_path / "prepared", "data.max_len=64"))
    assert "the data section of the config changed" in messages[0]


@pytest.mark.parametrize("damage, message", [
    (lambda c: (c / "train.en").unlink(), r"train\.en: corpus file not found"),
    (lambda c: (c / "test.es").write_text("one line\n"), r"test\.es has 1 lines but .*test\.en has 40"),
    (lambda c: (c / "valid.es").write_bytes(b"ok\n\xff\xfe\n"), r"valid\.es: line 2 is not valid UTF-8"),
    (lambda c: (c / "valid.en").write_bytes(b"\x00\x01" * 50), r"valid\.en: line 1 contains NUL bytes"),
    (lambda c: [(c / f"train.{lang}").write_text("") for lang in ("es", "en")], r"train\.es and .*empty"),
], ids=["missing-file", "line-mismatch", "invalid-utf8", "binary", "empty"])
def test_bad_input_fails_and_keeps_the_previous_prepared_data(
    corpus: Path, tmp_path: Path, damage, message: str
) -> None:
    cfg = make_config(corpus, tmp_path / "prepared")
    quiet_prepare(cfg)
    before = folder_digest(tmp_path / "prepared")
    damage(corpus)
    with pytest.raises(UserError, match=message):
        quiet_prepare(cfg)
    assert folder_digest(tmp_path / "prepared") == before


def test_everything_filtered_fails_and_keeps_the_previous_prepared_data(
    corpus: Path, tmp_path: Path
) -> None:
    quiet_prepare(make_config(corpus, tmp_path / "prepared"))
    before = folder_digest(tmp_path / "prepared")
    cfg = make_config(corpus, tmp_path / "prepared", "data.max_len=2")
    with pytest.raises(UserError, match=r"data\.max_len / data\.max_len_ratio: all 300 training pairs"):
        quiet_prepare(cfg)
    assert folder_digest(tmp_path / "prepared") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "prepared"]  # staging removed


def test_output_path_that_is_a_file_is_refused(corpus: Path, tmp_path: Path) -> None:
    target = tmp_path / "prepared"
    target.write_text("my notes")
    with pytest.raises(UserError, match=r"prepared: exists and is not a folder"):
        quiet_prepare(make_config(corpus, target))
    assert target.read_text() == "my notes"
    with pytest.raises(UserError, match=r"prepared/data: cannot write here"):
        quiet_prepare(make_config(corpus, target / "data"))


def test_foreign_folder_is_not_replaced(corpus: Path, tmp_path: Path) -> None:
    target = tmp_path / "runs"
    target.mkdir()
    (target / "model.pt").write_text("weights")
    with pytest.raises(UserError, match=r"runs: folder is not empty and holds no prepared data"):
        quiet_prepare(make_config(corpus, target))
    assert (target / "model.pt").read_text() == "weights"
