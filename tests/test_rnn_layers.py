"""The RNN encoder-decoder's layers (seq2seq/models/rnn_layers.py, rnn.py): one nn.RNN/GRU/LSTM module per layer
and direction, attn's dropout between layers, checkpoints of the old multi-layer layout, and the
GPU's rules (packed sequences, RNNs outside autocast), each forced here on the CPU."""

import re

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seq2seq.data.special import PAD_ID
from seq2seq.kernels import lstm_step
from seq2seq.models import rnn, rnn_layers
from tests.test_models import RNN_BASE, build, make_batch, max_diff

CELLS = ["rnn", "gru", "lstm"]

# The per-layer name and the multi-layer module's: rnn.l1_reverse.weight_ih_l0 <- rnn.weight_ih_l1_reverse
PER_LAYER_NAME = re.compile(r"((?:.*\.)?)l(\d+)(_reverse)?\.(weight_ih|weight_hh|bias_ih|bias_hh)_l0")


def multi_layer_names(state_dict: dict) -> dict:
    """``state_dict`` with the names of checkpoints from before per-layer modules, when the
    encoder and the decoder each held one multi-layer nn.RNN/GRU/LSTM."""
    renamed = {}
    for key, value in state_dict.items():
        match = PER_LAYER_NAME.fullmatch(key)
        renamed[f"{match[1]}{match[4]}_l{match[2]}{match[3] or ''}" if match else key] = value
    return renamed


def force_gpu_rule(monkeypatch, name: str) -> None:
    """Make the models take the GPU's choice ``name`` (uses_packed_sequences: the encoder's, in
    rnn.py; runs_outside_autocast: rnn_call's, in rnn_layers.py)."""
    monkeypatch.setattr(rnn if name == "uses_packed_sequences" else rnn_layers, name, lambda x: True)


def count_calls(monkeypatch, module, name: str) -> list:
    """Wrap ``module.name`` so that each call's arguments are recorded in the returned list."""
    calls, original = [], getattr(module, name)

    def recorded(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, recorded)
    return calls


@pytest.mark.parametrize("path", ["padded", "packed"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidirectional", [True, False])
def test_encoder_equals_torchs_multi_layer_rnn_over_packed_sequences(monkeypatch, path, cell, bidirectional):
    """Both ways the encoder runs its layers (padded rows, the CPU's; packed sequences, the
    GPU's, forced) give what one 2-layer nn.RNN/GRU/LSTM with the same weights gives over packed
    sequences: outputs at real positions, final states, gradients of weights and embeddings."""
    packs = count_calls(monkeypatch, rnn_layers, "pack_padded_sequence")
    if path == "packed":
        force_gpu_rule(monkeypatch, "uses_packed_sequences")
    encoder = build(**dict(RNN_BASE, arch=cell, attention="dot", bidirectional=bidirectional,
                           encoder_layers=2, dropout=0.0)).encoder
    directions = 2 if bidirectional else 1
    reference = rnn_layers.RNN_CELLS[cell](RNN_BASE["embed_dim"], RNN_BASE["hidden_dim"] // directions, num_layers=2,
                                    bidirectional=bidirectional, batch_first=True)
    reference.load_state_dict(multi_layer_names(encoder.rnn.state_dict()))
    src = make_batch(n=8)[0]
    mask = src != PAD_ID
    assert mask.sum(1).unique().numel() > 2, "precondition: rows of several lengths"

    outputs, finals = encoder(src, mask)
    assert len(packs) == (2 * directions if path == "packed" else 0)  # the path taken

    embedded = encoder.embedding(src)
    packed = pack_padded_sequence(embedded, mask.sum(1), batch_first=True, enforce_sorted=False)
    packed_outputs, packed_final = reference(packed)
    expected_outputs, _ = pad_packed_sequence(packed_outputs, batch_first=True, total_length=src.size(1))
    expected_finals = packed_final if isinstance(packed_final, tuple) else (packed_final,)
    # the top layer's states, directions side by side
    expected_finals = tuple(torch.cat(list(state[-directions:]), dim=-1) for state in expected_finals)

    assert outputs.shape == expected_outputs.shape
    assert max_diff(outputs, expected_outputs) < 1e-5
    assert torch.all(outputs[~mask] == 0.0)
    for final, expected in zip(finals, expected_finals, strict=True):
        assert max_diff(final, expected) < 1e-5
    weights = torch.randn_like(outputs)

    def gradients(out, fin, parameters):
        loss = (out * weights).sum() + sum(f.square().sum() for f in fin)
        return torch.autograd.grad(loss, [encoder.embedding.weight, *parameters])

    got = gradients(outputs, finals, encoder.rnn.parameters())
    want = gradients(expected_outputs, expected_finals, reference.parameters())
    for g, w in zip(got, want, strict=True):
        assert max_diff(g, w) < 1e-4


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("style,input_feeding", [("bahdanau", True), ("luong", True), ("luong", False)])
def test_decoder_drops_out_between_layers_through_attns_dropout(monkeypatch, cell, style, input_feeding):
    """No RNN module has a dropout of its own (on a GPU it would draw from cuDNN's state, which
    no checkpoint holds): the dropout between the 2 layers is attn's, in rnn.py or in
    DeferredLSTM (an LSTM in training on the CPU, where the probe allows it)."""
    model = build(**dict(RNN_BASE, arch=cell, attention="dot", decoder_style=style, input_feeding=input_feeding,
                         decoder_layers=2, encoder_layers=2, dropout=0.5)).train()
    assert all(module.dropout == 0.0 for module in model.modules() if isinstance(module, nn.RNNBase))
    calls = [count_calls(monkeypatch, module, "dropout") for module in (rnn, rnn_layers, lstm_step)]
    src, tgt_in, _ = make_batch()
    model(src, tgt_in)
    between_layers = [args for args in sum(calls, []) if args[1] == 0.5 and args[2]]
    # Luong without input feeding runs the decoder's RNN once over the whole target.
    decoder_calls = tgt_in.size(1) if style == "bahdanau" or input_feeding else 1
    assert len(between_layers) == 1 + decoder_calls  # and 1 between the encoder's layers


def test_decoder_dropout_between_layers_follows_the_seed():
    """Only the dropout between the decoder's layers is on: the same seed, the same noise (so a
    resumed run repeats it), another seed, other noise; none in eval."""
    model = build(**dict(RNN_BASE, arch="gru", attention="dot", decoder_style="luong", decoder_layers=2,
                         dropout=0.5)).train()
    model.encoder.dropout.p = model.decoder.dropout.p = 0.0  # embeddings and outputs: no dropout
    src, tgt_in, _ = make_batch()

    def run(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return model(src, tgt_in).detach()

    dropped = run(1)
    assert torch.equal(run(1), dropped)
    assert max_diff(run(2), dropped) > 1e-3
    with torch.no_grad():
        assert max_diff(model.eval()(src, tgt_in), dropped) > 1e-3


@pytest.mark.parametrize("settings", [
    dict(arch="lstm", bidirectional=True, encoder_layers=2, decoder_layers=2),
    dict(arch="gru", bidirectional=False, encoder_layers=3, decoder_layers=2, decoder_style="luong",
         input_feeding=False),
    dict(arch="rnn", bidirectional=True, encoder_layers=1, decoder_layers=1),
])
def test_checkpoint_of_the_multi_layer_layout_loads_and_gives_the_same_outputs(settings):
    config = dict(RNN_BASE, attention="general", **settings)
    model = build(**config).eval()
    old = multi_layer_names(model.state_dict())
    assert "encoder.rnn.weight_ih_l0" in old and "decoder.rnn.bias_hh_l0" in old  # precondition
    assert ("encoder.rnn.weight_hh_l0_reverse" in old) == settings["bidirectional"]

    torch.manual_seed(1)
    loaded = rnn.RNNSeq2Seq(model.config, model.src_vocab_size, model.tgt_vocab_size).eval()
    src, tgt_in, _ = make_batch()
    with torch.no_grad():
        assert max_diff(loaded(src, tgt_in), model(src, tgt_in)) > 1e-3  # precondition: other weights
        loaded.load_state_dict(old)  # strict: every old name found its new one
        assert torch.equal(loaded(src, tgt_in), model(src, tgt_in))

    # The optimizer state is positional: the parameters keep the multi-layer module's order.
    for part, layers in (("encoder", settings["encoder_layers"]), ("decoder", settings["decoder_layers"])):
        bidirectional = part == "encoder" and settings["bidirectional"]
        multi_layer = rnn_layers.RNN_CELLS[settings["arch"]](4, 4, num_layers=layers, bidirectional=bidirectional)
        names = [name for name, _ in getattr(loaded, part).rnn.named_parameters()]
        assert list(multi_layer_names(dict.fromkeys(names))) == [name for name, _ in multi_layer.named_parameters()]


@pytest.mark.parametrize("cell", CELLS)
def test_rnn_call_on_a_gpu_runs_outside_autocast_in_the_weights_dtype(monkeypatch, cell):
    """Autocast would run cuDNN's RNN in fp16 even for bf16; forced here on the CPU's autocast."""
    module = rnn_layers.RNN_CELLS[cell](4, 5, batch_first=True)
    x = torch.randn(2, 3, 4).bfloat16()  # what an autocast layer before the RNN hands it
    h = torch.randn(1, 2, 5).bfloat16()
    hx = (h, h) if cell == "lstm" else h
    monkeypatch.setattr(rnn_layers, "bf16_rnn_runs", lambda: True)  # a CPU with a bf16 RNN kernel
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert rnn_layers.rnn_call(module, x, hx)[0].dtype == torch.bfloat16  # the CPU: autocast decides
        force_gpu_rule(monkeypatch, "runs_outside_autocast")
        output, new_hx = rnn_layers.rnn_call(module, x, hx)
    expected, expected_hx = module(x.float(), (h.float(), h.float()) if cell == "lstm" else h.float())
    assert output.dtype == torch.float32
    torch.testing.assert_close(output, expected)
    torch.testing.assert_close(new_hx, expected_hx)


@pytest.mark.parametrize("path", ["padded", "packed"])
def test_under_autocast_every_rnn_of_the_model_runs_in_float32_on_a_gpu(monkeypatch, path):
    force_gpu_rule(monkeypatch, "runs_outside_autocast")
    if path == "packed":
        force_gpu_rule(monkeypatch, "uses_packed_sequences")
    model = build(**dict(RNN_BASE, arch="lstm", attention="general", bidirectional=True, encoder_layers=2,
                         decoder_layers=2)).train()
    dtypes = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.RNNBase):
            module.register_forward_hook(
                lambda module, args, output, name=name: dtypes.setdefault(name, set()).add(output[1][0].dtype))
    src, tgt_in, _ = make_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(src, tgt_in).float().sum().backward()
    assert len(dtypes) == 6  # encoder: 2 layers x 2 directions; decoder: 2 layers
    assert all(found == {torch.float32} for found in dtypes.values()), dtypes


def test_packing_uses_the_lengths_training_already_has_on_the_host(monkeypatch):
    """On a GPU ``lengths.cpu()`` would make every training batch wait for the device: training
    passes the lengths its batch has on the host, and they pack the same sequences."""
    force_gpu_rule(monkeypatch, "uses_packed_sequences")
    seen = []
    real_run_packed = rnn.run_packed

    def recording(*args, cpu_lengths, **kwargs):
        seen.append(cpu_lengths)
        return real_run_packed(*args, cpu_lengths=cpu_lengths, **kwargs)

    monkeypatch.setattr(rnn, "run_packed", recording)
    model = build(**dict(RNN_BASE, arch="lstm", attention="dot", bidirectional=True, encoder_layers=2)).eval()
    src, tgt_in, _ = make_batch()
    host_lengths = (src != PAD_ID).sum(dim=1)
    with torch.no_grad():
        given = model(src, tgt_in, host_lengths=host_lengths)
        assert seen and all(lengths is host_lengths for lengths in seen)
        seen.clear()
        computed = model(src, tgt_in)
    assert seen and all(lengths is not host_lengths for lengths in seen)
    assert torch.equal(given, computed)
