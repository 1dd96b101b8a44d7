"""Tiny models learn to reverse random token sequences: the end-to-end check that encoder,
attention and decoder actually work together (a wiring bug trains but never gets there)."""

import pytest
import torch

from seq2seq.config import ModelConfig
from seq2seq.models.builder import build_model
from tests.synthetic import make_reverse_batch, token_accuracy, train_tiny

VOCAB = 12  # 8 distinct pieces
RNN = dict(embed_dim=16, hidden_dim=32, encoder_layers=1, decoder_layers=1, dropout=0.0)
TRANSFORMER = dict(
    arch="transformer", hidden_dim=32, heads=2, ffn_dim=64, encoder_layers=1, decoder_layers=1, dropout=0.0
)

CASES = {
    "gru-additive": (dict(RNN, arch="gru", attention="additive", decoder_style="bahdanau"), 300, 1e-2),
    "lstm-general-input-feeding": (
        dict(RNN, arch="lstm", attention="general", decoder_style="luong", input_feeding=True),
        300,
        1e-2,
    ),
    "gru-local_p": (
        dict(RNN, arch="gru", attention="local_p", window=3, decoder_style="luong"), 300, 1e-2
    ),
    "transformer": (dict(TRANSFORMER, attention="scaled_dot"), 600, 5e-3),
    "transformer-local": (dict(TRANSFORMER, attention="local", window=2), 600, 5e-3),
}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train fastest on one thread: more only add synchronisation, and on shared
    CI cores they can make a run several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_learns_to_reverse(name):
    overrides, steps, lr = CASES[name]
    torch.manual_seed(0)
    model = build_model(ModelConfig(**overrides), VOCAB, VOCAB)
    train_tiny(model, steps, VOCAB, batch_size=64, lr=lr, seed=1)
    held_out = make_reverse_batch(500, VOCAB, 3, 8, torch.Generator().manual_seed(1234))
    assert token_accuracy(model, *held_out) >= 0.95
