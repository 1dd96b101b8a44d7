"""``--engine ctranslate2``: the converted model computes what attn's model computes, its greedy
search returns attn's translations, and what it cannot do is refused by name."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from seq2seq.config import ModelConfig
from seq2seq.data.special import BOS_ID, EOS_ID, PAD_ID
from seq2seq.decoding.ctranslate2_engine import CTranslate2Search, engine_for
from seq2seq.decoding.settings import TranslateSettings
from seq2seq.decoding.translator import Translator, make_translator
from seq2seq.errors import UserError
from seq2seq.models.builder import build_model
from tests.helpers_cli import assert_user_error, run_attn, tiny_run

ctranslate2 = pytest.importorskip("ctranslate2")

SRC_VOCAB, TGT_VOCAB = 40, 36


class PieceNames:
    """The part of a Tokenizer the engine reads: piece names by id (no SentencePiece model),
    and ``encode_src``/``decode_tgt`` that read and write ids as text."""

    def __init__(self, src_size: int, tgt_size: int):
        self.src_vocab_size, self.tgt_vocab_size = src_size, tgt_size

    def src_pieces(self, ids) -> list[str]:
        return [f"s{i}" for i in ids]

    def tgt_pieces(self, ids) -> list[str]:
        return [f"t{i}" for i in ids]

    def encode_src(self, lines: list[str]) -> list[list[int]]:
        return [[int(token) for token in line.split()] for line in lines]

    def decode_tgt(self, ids: list[int]) -> str:
        return " ".join(map(str, ids))


def random_transformer(seed: int = 0, **options) -> torch.nn.Module:
    torch.manual_seed(seed)
    options = {"attention": "scaled_dot", "share_vocab": False, **options}
    cfg = ModelConfig(arch="transformer", hidden_dim=32, heads=4, ffn_dim=64, encoder_layers=2, decoder_layers=2,
                      dropout=0.0, **options)
    tgt_vocab = SRC_VOCAB if cfg.share_vocab else TGT_VOCAB
    model = build_model(cfg, SRC_VOCAB, tgt_vocab).eval()
    with torch.no_grad():  # an EOS logit of 0 ranks high in a random model: outputs of varied lengths
        model.decoder.output.weight[EOS_ID] = 0.0
    return model


def random_sources(count: int, seed: int) -> list[str]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 12, (count,), generator=generator).tolist()
    return [" ".join(str(t) for t in torch.randint(4, SRC_VOCAB, (n,), generator=generator).tolist()) for n in lengths]


def settings(**options) -> TranslateSettings:
    defaults = dict(beam_size=1, length_penalty=1.0, max_len_a=1.0, max_len_b=3, batch_size=8, engine="ctranslate2")
    return TranslateSettings(**{**defaults, **options})


VARIANTS = {
    "pre-norm, sinusoidal, tied": {},
    "post-norm, learned positions": {"norm": "post", "positions": "learned", "max_positions": 64},
    "gelu, untied, separate vocabularies": {"activation": "gelu", "tie_embeddings": False},
    "silu, one shared vocabulary": {"activation": "silu", "share_vocab": True},
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_converted_model_scores_a_translation_as_attn_does(variant):
    model = random_transformer(**VARIANTS[variant])
    names = PieceNames(model.src_vocab_size, model.tgt_vocab_size)
    search = CTranslate2Search(model, names, settings())
    src = [5, 9, 11, 4, 30, EOS_ID]
    target = [7, 8, 20, 33, 4]
    [scored] = search.translator.score_batch([names.src_pieces(src)], [names.tgt_pieces(target)])
    with torch.no_grad():
        log_probs = model(torch.tensor([src]), torch.tensor([[BOS_ID, *target]]))[0].log_softmax(-1)
    expected = [log_probs[i, token].item() for i, token in enumerate([*target, EOS_ID])]
    assert scored.log_probs == pytest.approx(expected, abs=2e-3)


@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_translations_equal_attns_own(variant):
    model = random_transformer(seed=1, **VARIANTS[variant])
    names = PieceNames(model.src_vocab_size, model.tgt_vocab_size)
    lines = random_sources(24, seed=2)
    ours = Translator(model, names.encode_src, names.decode_tgt, settings(engine="torch")).translate(lines)
    with make_translator(model, names, settings()) as translator:
        theirs = translator.translate(lines)
    assert [r[0].tokens for r in theirs] == [r[0].tokens for r in ours]
    lengths = {len(r[0].tokens) for r in ours}
    assert len(lengths) > 3, "the sentences should end at different lengths, some at the limit"
    for mine, other in zip(ours, theirs):
        limit = math.floor(len(mine[0].src_ids) + 3)
        if len(mine[0].tokens) < limit:  # attn scores the EOS it forces at the limit, CTranslate2 has none
            assert other[0].score == pytest.approx(mine[0].score, abs=2e-3)


def test_beam_search_normalises_by_length_to_the_power_alpha():
    """Each hypothesis scores its log-prob, pieces and EOS, over (pieces + 1) ** alpha. The
    log-probs are CTranslate2's: renormalised over the pieces a step allows (never PAD or
    BOS; attn's search masks them without renormalising)."""
    model = random_transformer(seed=3, tie_embeddings=False)
    with torch.no_grad():  # flatter outputs, and an EOS likely enough that beams end at 1 to 7 pieces
        model.decoder.output.weight.mul_(0.2)
        model.decoder.output.weight[EOS_ID] = 0.0
        model.decoder.output.weight[EOS_ID, 0] = 1.0
        model.decoder.final_norm.bias[0] = 0.8
    names = PieceNames(model.src_vocab_size, model.tgt_vocab_size)
    lines = random_sources(8, seed=4)
    alpha = 0.7
    with make_translator(model, names, settings(beam_size=4, nbest=3, length_penalty=alpha, min_len=0)) as t:
        results = t.translate(lines)
    assert len({len(h.tokens) for r in results for h in r}) >= 3
    for line, hypotheses in zip(lines, results):
        src = torch.tensor([[*names.encode_src([line])[0], EOS_ID]])
        for h in hypotheses:
            with torch.no_grad():
                logits = model(src, torch.tensor([[BOS_ID, *h.tokens]]))[0]
            logits[..., [PAD_ID, BOS_ID]] = float("-inf")
            log_probs = logits.log_softmax(-1)
            log_prob = sum(log_probs[i, token].item() for i, token in enumerate([*h.tokens, EOS_ID]))
            assert h.score == pytest.approx(log_prob / (len(h.tokens) + 1) ** alpha, abs=2e-3)
        assert [h.score for h in hypotheses] == sorted((h.score for h in hypotheses), reverse=True)


@pytest.mark.parametrize(
    ("options", "model_options", "fragment"),
    [
        ({"sampling": True}, {}, "--sample"),
        ({"return_attention": True}, {}, "--alignments"),
        ({"precision": "bf16"}, {}, "pass --precision fp32"),
        ({"workers": 2}, {}, "--workers"),
        ({}, {"attention": "local"}, "model.attention 'local'"),
        ({}, {"attention": "performer", "features": 8}, "model.attention 'performer'"),
        ({}, {"attention": "sparse"}, "model.attention 'sparse'"),
        ({}, {"attention": "linformer", "rank": 8}, "model.attention 'linformer'"),
        ({}, {"attention_normalizer": "entmax15"}, "model.attention_normalizer 'entmax15'"),
        ({}, {"gaussian_bias": True}, "model.gaussian_bias True"),
        ({}, {"memory_slots": 2}, "model.memory_slots 2"),
    ],
)
def test_what_it_cannot_do_is_refused_by_name(options, model_options, fragment):
    model = random_transformer(**model_options)
    with pytest.raises(UserError, match="--engine ctranslate2") as error:
        engine_for(model, PieceNames(SRC_VOCAB, TGT_VOCAB), settings(**options))
    assert fragment in str(error.value)


@pytest.mark.parametrize("attention", ["hard", "monotonic", "gmm"])
def test_rnn_attention_mechanisms_are_refused_by_name(attention):
    cfg = ModelConfig(arch="gru", attention=attention, embed_dim=8, hidden_dim=8, encoder_layers=1, decoder_layers=1)
    with pytest.raises(UserError, match="--engine ctranslate2") as error:
        engine_for(build_model(cfg, SRC_VOCAB, SRC_VOCAB).eval(), PieceNames(SRC_VOCAB, SRC_VOCAB), settings())
    assert f"model.attention {attention!r}" in str(error.value)


@pytest.mark.parametrize(
    "limits",
    [
        {"max_source_len": 4, "max_len_a": 3.0, "max_len_b": 0},  # outputs longer than any source
        {"min_len": 20, "max_len_a": 0.0, "max_len_b": 5},  # min_len above the limit: the limit wins
        {"max_len_a": 0.3, "max_len_b": 0},  # a limit of 0 pieces for short sources
    ],
)
@pytest.mark.parametrize("beam", [1, 3])
def test_length_limits_end_where_attns_search_ends(limits, beam):
    model = random_transformer(seed=1)
    names = PieceNames(model.src_vocab_size, model.tgt_vocab_size)
    lines = random_sources(12, seed=6)
    options = {"beam_size": beam, "length_penalty": 0.0, **limits}
    ours = Translator(model, names.encode_src, names.decode_tgt, settings(engine="torch", **options)).translate(lines)
    with make_translator(model, names, settings(**options)) as translator:
        theirs = translator.translate(lines)
    assert [len(r[0].tokens) for r in theirs] == [len(r[0].tokens) for r in ours]
    if beam == 1:
        assert [r[0].tokens for r in theirs] == [r[0].tokens for r in ours]
    for mine, other in zip(ours, theirs):
        if not mine[0].tokens:  # EOS alone: the same score from both
            assert other[0].score == pytest.approx(mine[0].score, abs=2e-3)


def test_torch_keeps_its_thread_count():
    """CTranslate2 sets the OpenMP thread count it shares with torch; the engine gives it back."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model = random_transformer()
        names = PieceNames(model.src_vocab_size, model.tgt_vocab_size)
        with make_translator(model, names, settings()) as translator:
            translator.translate(random_sources(4, seed=5))
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_a_missing_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # import ctranslate2 now raises ImportError
    with pytest.raises(UserError, match=r"pip install 'attn\[ctranslate2\]'"):
        engine_for(random_transformer(), PieceNames(SRC_VOCAB, TGT_VOCAB), settings())


@pytest.mark.slow
def test_the_cli_refuses_an_rnn_and_translates_a_transformer(tmp_path, tiny_corpus):
    from seq2seq.training.run import train

    rnn = tiny_run(tmp_path.parent / "shared")
    source = tmp_path / "in.es"
    source.write_text("En el principio\nY dijo Dios\n", encoding="utf-8")
    result = run_attn("translate", "-c", rnn, "-i", source, "--engine", "ctranslate2", cwd=tmp_path)
    assert_user_error(result, "--engine ctranslate2", "model.arch 'gru'")

    run = tmp_path / "transformer"
    train(tiny_corpus.config(run, "model.arch=transformer", "model.attention=scaled_dot", "model.heads=2",
                             "model.ffn_dim=64", "train.max_steps=2", "train.valid_every=2"), quiet=True, log=lambda m: None)
    outputs = {}
    for engine in ("torch", "ctranslate2"):
        result = run_attn("translate", "-c", run, "-i", source, "--beam", "1", "--max-len-b", "6",
                          "--engine", engine, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        outputs[engine] = result.stdout
    assert outputs["ctranslate2"] == outputs["torch"]
    assert len(outputs["torch"].splitlines()) == 2

    reference = tmp_path / "ref.en"
    reference.write_text("In the beginning\nAnd God said\n", encoding="utf-8")
    hypotheses = {}
    for engine in ("torch", "ctranslate2"):
        report = tmp_path / f"report_{engine}"
        result = run_attn("evaluate", "--checkpoint", run, "--src", source, "--ref", reference, "--beam", "1",
                          "--engine", engine, "--report-dir", report, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        hypotheses[engine] = (report / "hypotheses.txt").read_text(encoding="utf-8")
        assert json.loads((report / "report.json").read_text(encoding="utf-8"))["decode"]["engine"] == engine
    assert hypotheses["ctranslate2"] == hypotheses["torch"]
