"""Sparse attention normalisers (seq2seq/models/normalizers.py) against their papers' values
and properties (inside the RNN models: tests/test_models.py's cases with a sparse normaliser)."""

from __future__ import annotations

import pytest
import torch

from seq2seq.config import load_config
from seq2seq.models.normalizers import LearnedEntmax, masked_entmax, masked_entmax15, masked_sparsemax, normalizer

SPARSE = {"sparsemax": masked_sparsemax, "entmax15": masked_entmax15,
          "entmax": lambda scores, mask: masked_entmax(scores, mask, torch.tensor(1.3))}
ALL = torch.ones(1, 3, dtype=torch.bool)


def test_alpha_entmax_spans_softmax_to_sparsemax():
    """alpha = 2 is sparsemax, 1.5 is 1.5-entmax, and towards 1 it becomes softmax."""
    z = torch.randn(5, 9) * 2
    mask = torch.ones(5, 9, dtype=torch.bool)
    torch.testing.assert_close(masked_entmax(z, mask, torch.tensor(2.0)), masked_sparsemax(z, mask), atol=1e-5, rtol=0)
    torch.testing.assert_close(masked_entmax(z, mask, torch.tensor(1.5)), masked_entmax15(z, mask), atol=1e-5, rtol=0)
    torch.testing.assert_close(masked_entmax(z, mask, torch.tensor(1.001)), z.softmax(-1), atol=2e-3, rtol=0)


def test_the_learned_alpha_starts_at_one_and_a_half_and_learns():
    entmax = normalizer("entmax")
    assert isinstance(entmax, LearnedEntmax) and float(entmax.alpha.detach()) == 1.5
    z = torch.randn(4, 6)
    weights = entmax(z, torch.ones(4, 6, dtype=torch.bool))
    (weights * torch.randn(4, 6)).sum().backward()
    assert entmax.alpha_logit.grad is not None and float(entmax.alpha_logit.grad) != 0.0


def test_the_papers_values():
    z = torch.tensor([[-2.0, 0.0, 0.5]])
    torch.testing.assert_close(masked_sparsemax(z, ALL), torch.tensor([[0.0, 0.25, 0.75]]))
    torch.testing.assert_close(masked_entmax15(z, ALL), torch.tensor([[0.0, 0.326, 0.674]]), atol=1e-3, rtol=0)


@pytest.mark.parametrize("name", SPARSE)
def test_rows_sum_to_one_with_exact_zeros_and_masking_is_truncation(name):
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(6, 10, generator=generator) * 3
    lengths = torch.tensor([10, 7, 3, 1, 5, 9])
    mask = torch.arange(10).unsqueeze(0) < lengths.unsqueeze(1)
    weights = SPARSE[name](scores, mask)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(6))
    assert (weights[~mask] == 0).all() and (weights[mask] == 0).any()  # sparse: some real zeros too
    for row, length in enumerate(lengths.tolist()):
        alone = SPARSE[name](scores[row:row + 1, :length], torch.ones(1, length, dtype=torch.bool))
        torch.testing.assert_close(weights[row:row + 1, :length], alone)


@pytest.mark.parametrize("name", SPARSE)
def test_gradients_match_finite_differences(name):
    scores = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3, [True] * 2 + [False] * 5, [True] * 6 + [False]])
    # The normalisers compute in float32: check the float64 gradient of their float64 core.
    from seq2seq.models import normalizers

    if name == "entmax":  # the gradient in alpha too
        alpha = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda z, a: normalizers._EntmaxBisect.apply(z.masked_fill(~mask, -1e4), a),
                                        (scores, alpha), atol=1e-5)
        return
    core = {"sparsemax": normalizers._Sparsemax.apply, "entmax15": normalizers._Entmax15.apply}[name]
    assert torch.autograd.gradcheck(lambda z: core(z.masked_fill(~mask, -1e4)), (scores,))


@pytest.mark.parametrize("name", SPARSE)
def test_a_row_with_nothing_to_attend_is_zeros_not_nan(name):
    mask = torch.tensor([[True, True, False], [False, False, False]])
    weights = normalizer(name)(torch.randn(2, 3), mask)
    assert torch.isfinite(weights).all() and (weights[1] == 0).all()


@pytest.mark.parametrize("name", SPARSE)
def test_computed_in_float32_under_autocast(name):
    scores = torch.randn(3, 5).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        weights = SPARSE[name](scores, torch.ones(3, 5, dtype=torch.bool))
    assert weights.dtype == torch.float32
    torch.testing.assert_close(weights.sum(-1), torch.ones(3))


def test_a_transformer_config_keeps_a_sparse_normalizer_for_its_heads():
    """Since the Transformer taxonomy its heads normalise with the same key: it is kept, not noted away."""
    cfg = load_config(None, ["model.arch=transformer", "model.attention=scaled_dot",
                             "model.attention_normalizer=sparsemax"])
    assert cfg.model.attention_normalizer == "sparsemax"
    assert not any("attention_normalizer" in note for note in cfg.notes)


@pytest.mark.parametrize("name", SPARSE)
def test_an_lstm_with_a_sparse_normalizer_trains_and_translates(tiny_corpus, tmp_path, name):
    from seq2seq.run_folder import read_metrics
    from seq2seq.training.run import train

    out = tmp_path / "run"
    summary = train(tiny_corpus.config(out, "model.arch=lstm", "model.attention=general",
                                       f"model.attention_normalizer={name}", "train.max_steps=4", "train.warmup_steps=1",
                                       "train.lr=0.003",
                                       "train.valid_every=4", "train.log_every=1"), log=lambda m: None, quiet=True)
    records = read_metrics(out / "metrics.jsonl")
    losses = [r["loss"] for r in records if "loss" in r]
    assert summary.steps == 4 and all(map(torch.isfinite, torch.tensor(losses))) and losses[-1] < losses[0]
    assert [r["step"] for r in records if "valid_bleu" in r] == [4]
