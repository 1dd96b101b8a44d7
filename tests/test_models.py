"""Every architecture through attn's model interface: gradients, padding, causality, and
incremental decoding against teacher forcing."""

import pytest
import torch

from seq2seq.config import Config, ModelConfig
from seq2seq.data.special import BOS_ID, PAD_ID
from seq2seq.errors import UserError
from seq2seq.models.builder import build_model, count_parameters, describe_model
from seq2seq.models.state import reorder_state
from seq2seq.models.multihead import KVCache
from seq2seq.training.objective import batch_loss
from tests.synthetic import make_reverse_batch

SRC_VOCAB = 20
TGT_VOCAB = 23  # differs from SRC_VOCAB for share_vocab: false models, to catch mix-ups

RNN_BASE = dict(embed_dim=16, hidden_dim=24, encoder_layers=1, decoder_layers=1, window=2, dropout=0.1)
# (cell, attention, decoder style, other settings): every cell and every attention at least
# once, both styles, with and without input feeding, bridge, bidirectional encoder, tying, sharing.
RNN_CASES = [
    ("gru", "additive", "bahdanau", {}),
    ("lstm", "additive", "luong", {"encoder_layers": 2}),
    ("rnn", "dot", "luong", {"input_feeding": False}),
    ("gru", "dot", "bahdanau", {"bidirectional": False}),
    ("lstm", "general", "bahdanau", {"decoder_layers": 2}),
    ("gru", "general", "luong", {"input_feeding": False, "tie_embeddings": False, "share_vocab": False}),
    ("rnn", "scaled_dot", "bahdanau", {"bridge": False}),
    ("lstm", "scaled_dot", "luong", {"bridge": False}),
    ("gru", "local_m", "luong", {"local_score": "dot", "input_feeding": False}),
    ("lstm", "local_m", "bahdanau", {"local_score": "additive", "share_vocab": False}),
    ("rnn", "local_p", "luong", {"local_score": "general"}),
    ("gru", "local_p", "luong", {"local_score": "scaled_dot", "input_feeding": False, "decoder_layers": 2}),
    ("lstm", "none", "luong", {}),
    ("gru", "none", "bahdanau", {"encoder_layers": 2}),
    # The rest of each mechanism's pairings with both styles and input feeding, e.g. demo.yaml's.
    ("gru", "general", "luong", {}),
    ("gru", "additive", "luong", {"input_feeding": False}),
    ("lstm", "dot", "luong", {}),
    ("gru", "scaled_dot", "luong", {"input_feeding": False}),
    ("lstm", "local_m", "luong", {"local_score": "general", "window": 1}),
    ("gru", "local_p", "bahdanau", {"local_score": "dot"}),
    ("rnn", "local_p", "luong", {"local_score": "additive", "bidirectional": False}),
    ("gru", "none", "luong", {"input_feeding": False}),
    # Every score function with a sparse normaliser (models/normalizers.py).
    ("lstm", "additive", "luong", {"attention_normalizer": "sparsemax"}),
    ("gru", "dot", "bahdanau", {"attention_normalizer": "entmax15"}),
    ("gru", "general", "luong", {"attention_normalizer": "entmax"}),
    ("rnn", "scaled_dot", "luong", {"attention_normalizer": "entmax15", "input_feeding": False}),
    ("lstm", "local_m", "luong", {"attention_normalizer": "entmax", "local_score": "dot"}),
    ("gru", "local_p", "bahdanau", {"attention_normalizer": "sparsemax", "local_score": "additive"}),
    # Coverage, hard (every way of training it), monotonic and MoChA, Gaussian mixtures.
    ("gru", "additive", "luong", {"coverage": True}),
    ("lstm", "additive", "bahdanau", {"coverage": True, "attention_normalizer": "entmax15"}),
    ("gru", "hard", "luong", {"hard_attention": "reinforce"}),
    ("lstm", "hard", "bahdanau", {"hard_attention": "gumbel", "local_score": "dot"}),
    ("gru", "hard", "luong", {"hard_attention": "exact", "local_score": "additive"}),
    ("rnn", "hard", "luong", {"hard_attention": "exact", "input_feeding": False}),
    ("gru", "hard", "luong", {"hard_attention": "reinforce", "input_feeding": False}),
    ("gru", "monotonic", "luong", {}),
    ("lstm", "monotonic", "bahdanau", {"chunk_size": 3, "local_score": "additive"}),
    ("gru", "monotonic", "luong", {"chunk_size": 2, "input_feeding": False}),
    ("gru", "gmm", "luong", {}),
    ("lstm", "gmm", "bahdanau", {"gmm_components": 2}),
]
TRANSFORMER_BASE = dict(
    arch="transformer", attention="scaled_dot", hidden_dim=16, heads=2, ffn_dim=32, encoder_layers=2,
    decoder_layers=2, window=1, dropout=0.1,
)
# (self-attention, norm, other settings)
TRANSFORMER_CASES = [
    # The taxonomy's Transformer half: sparse patterns, kernel and low-rank attention, Gaussian
    # localness, memory slots, sparse normalisers (per head).
    ("sparse", "pre", {"global_tokens": 1, "random_blocks": 1}),
    ("sparse", "post", {"global_tokens": 2}),
    ("performer", "pre", {"features": 16}),
    ("performer", "post", {"features": 8, "memory_slots": 2}),
    ("linformer", "pre", {"rank": 4, "max_positions": 32}),
    ("scaled_dot", "pre", {"gaussian_bias": True}),
    ("scaled_dot", "pre", {"memory_slots": 3, "attention_normalizer": "entmax"}),
    ("local", "post", {"attention_normalizer": "sparsemax", "gaussian_bias": True}),
    ("sparse", "pre", {"attention_normalizer": "entmax15", "memory_slots": 1}),
    ("scaled_dot", "pre", {}),
    ("scaled_dot", "post", {"positions": "learned", "activation": "gelu"}),
    ("local", "pre", {"activation": "silu", "tie_embeddings": False, "share_vocab": False}),
    ("local", "post", {"positions": "learned", "share_vocab": False}),
]


def case_name(*parts) -> str:
    *names, settings = parts
    return "-".join([*names, *(f"{key}={value}" for key, value in settings.items())])


CASES = {
    case_name(cell, attention, style, settings): dict(
        RNN_BASE, arch=cell, attention=attention, decoder_style=style, **settings
    )
    for cell, attention, style, settings in RNN_CASES
}
CASES |= {
    case_name("transformer", attention, norm, settings): dict(
        TRANSFORMER_BASE, attention=attention, norm=norm, **settings
    )
    for attention, norm, settings in TRANSFORMER_CASES
}


def make_model(name: str) -> torch.nn.Module:
    return build(**CASES[name])


def build(**settings) -> torch.nn.Module:
    cfg = ModelConfig(**settings)
    torch.manual_seed(0)
    tgt_vocab = SRC_VOCAB if cfg.share_vocab else TGT_VOCAB
    return build_model(cfg, SRC_VOCAB, tgt_vocab)


def make_batch(n: int = 4, seed: int = 0):
    """Sentences of different lengths (3..7 pieces), so every batch has padding."""
    return make_reverse_batch(n, SRC_VOCAB, 3, 7, torch.Generator().manual_seed(seed))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


all_models = pytest.mark.parametrize("name", list(CASES))


@all_models
def test_forward_backward_reaches_every_parameter(name):
    model = make_model(name).train()
    src, tgt_in, tgt_out = make_batch()
    logits = model(src, tgt_in)
    assert logits.shape == (*tgt_in.shape, model.tgt_vocab_size)
    # The training objective (objective.py: hard attention's REINFORCE surrogate or exact sum,
    # the coverage loss) with the trainer's arguments.
    cfg = Config(model=ModelConfig(**CASES[name]))
    cfg.train.coverage_loss = 1.0 if cfg.model.coverage else 0.0
    real = (tgt_out.flatten() != PAD_ID).nonzero().squeeze(1)
    sums = batch_loss(model, model.output_layer, src, tgt_in, real, tgt_out.flatten()[real], cfg)
    sums.objective.backward()
    # No exceptions needed: the bridge feeds "none" models, local_p's Gaussian carries
    # gradients to its position predictor, REINFORCE's surrogate to hard attention's scores.
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None, parameter_name
        assert parameter.grad.abs().sum() > 0, parameter_name


@all_models
def test_padding_does_not_change_real_positions(name):
    model = make_model(name).eval()
    src, tgt_in, _ = make_batch()
    with torch.no_grad():
        logits, attention = model(src, tgt_in, return_attention=True)
        padded_src = torch.nn.functional.pad(src, (0, 5), value=PAD_ID)
        padded_tgt = torch.nn.functional.pad(tgt_in, (0, 3), value=PAD_ID)
        padded_logits, padded_attention = model(padded_src, padded_tgt, return_attention=True)
    length, src_length = tgt_in.size(1), src.size(1)
    assert max_diff(padded_logits[:, :length], logits) < 1e-5
    assert max_diff(padded_attention[:, :length, :src_length], attention) < 1e-5
    assert torch.all(padded_attention[:, :, src_length:] == 0.0)


@all_models
def test_attention_weights_are_zero_on_padding_and_sum_to_one(name):
    model = make_model(name).eval()
    src, tgt_in, _ = make_batch()
    with torch.no_grad():
        _, attention = model(src, tgt_in, return_attention=True)
    assert attention.shape == (src.size(0), tgt_in.size(1), src.size(1))
    assert torch.all(attention[(src == PAD_ID).unsqueeze(1).expand_as(attention)] == 0.0)
    sums = attention.sum(dim=-1)
    match CASES[name]["attention"]:
        case "none":
            assert torch.all(sums == 0.0)
        case "local_p":  # Luong's Gaussian is applied after the softmax: at most 1
            assert torch.all(sums <= 1.0 + 1e-5) and torch.all(sums > 0.0)
        case "monotonic" | "gmm":  # may run off the end of the source: at most 1
            assert torch.all(sums <= 1.0 + 1e-5)
        case _ if CASES[name].get("memory_slots"):  # the rest goes to the slots
            assert torch.all(sums <= 1.0 + 1e-5) and torch.all(sums > 0.0)
        case _:
            assert max_diff(sums, torch.ones_like(sums)) < 1e-5


@all_models
def test_future_target_tokens_do_not_change_earlier_outputs(name):
    model = make_model(name).eval()
    src, tgt_in, _ = make_batch()
    changed = tgt_in.clone()
    position = 3
    changed[:, position] = (tgt_in[:, position] + 1) % SRC_VOCAB
    with torch.no_grad():
        before, after = model(src, tgt_in), model(src, changed)
    # Output t predicts the token after input t: outputs before the changed input must not move.
    assert max_diff(before[:, :position], after[:, :position]) < 1e-6
    assert max_diff(before[:, position], after[:, position]) > 1e-4  # the change is seen


@all_models
def test_step_by_step_decoding_matches_teacher_forcing_across_a_reorder(name):
    model = make_model(name).eval()
    src, tgt_in, _ = make_batch(n=5)
    with torch.no_grad():
        expected_logits, expected_attention = model(src, tgt_in, return_attention=True)
        state = model.init_state(model.encode(src))
        rows = torch.arange(src.size(0))  # which original sentence each state row holds
        assert torch.all(tgt_in[:, 0] == BOS_ID)
        for t in range(tgt_in.size(1)):
            if t == 3:
                permutation = torch.tensor([4, 2, 0, 3, 1])
                state = model.reorder(state, permutation)
                rows = rows[permutation]
            logits, state, attention = model.step(tgt_in[rows, t], state)
            assert max_diff(logits, expected_logits[rows, t]) < 1e-4, t
            assert max_diff(attention, expected_attention[rows, t]) < 1e-4, t


@all_models
def test_bf16_step_by_step_decoding_matches_bf16_teacher_forcing(name):
    # decode.precision bf16 runs a bf16 copy of the model (the Transformer keeps its
    # self-attention cache in float32 on the CPU); steps must still agree with a full pass.
    model = make_model(name).eval().to(torch.bfloat16)
    src, tgt_in, _ = make_batch(n=5)
    with torch.no_grad():
        expected = model(src, tgt_in).float()
        state = model.init_state(model.encode(src))
        state = model.reorder(state, torch.tensor([4, 2, 0, 3, 1]))
        for t in range(tgt_in.size(1)):
            logits, state, _ = model.step(tgt_in[[4, 2, 0, 3, 1], t], state)
            assert logits.dtype == torch.bfloat16
            assert max_diff(logits.float(), expected[[4, 2, 0, 3, 1], t]) < 0.05 * (1 + expected.abs().max().item()), t


@all_models
def test_reorder_expands_a_batch_for_beam_search(name):
    model = make_model(name).eval()
    src, tgt_in, _ = make_batch(n=3)
    beam = 2
    with torch.no_grad():
        expected = model(src, tgt_in)
        state = model.init_state(model.encode(src))
        state = model.reorder(state, torch.arange(3).repeat_interleave(beam))
        for t in range(tgt_in.size(1)):
            logits, state, _ = model.step(tgt_in[:, t].repeat_interleave(beam), state)
            assert max_diff(logits, expected[:, t].repeat_interleave(beam, dim=0)) < 1e-4


def test_reorder_state_selects_rows_everywhere_and_keeps_shared_tensors_shared():
    memory = torch.arange(6.0).view(3, 2)
    state = {"keys": memory, "values": memory, "layers": [(memory + 1,)], "step": 4}
    reordered = reorder_state(state, torch.tensor([2, 0]))
    assert torch.equal(reordered["values"], memory[[2, 0]])
    assert reordered["keys"] is reordered["values"]
    assert isinstance(reordered["layers"][0], tuple)
    assert torch.equal(reordered["layers"][0][0], memory[[2, 0]] + 1)
    assert reordered["step"] == 4


def test_transformer_local_encoder_sees_only_its_window():
    model = build(**dict(TRANSFORMER_BASE, attention="local", encoder_layers=1, window=1)).eval()
    src = torch.tensor([[5, 6, 7, 8, 9, 10, 3]])
    changed = src.clone()
    changed[0, 5] = 11
    with torch.no_grad():
        before, after = model.encode(src)["memory"], model.encode(changed)["memory"]
    # One layer, half-width 1: position 5 reaches positions 4..6 only.
    assert max_diff(before[0, :4], after[0, :4]) == 0.0
    assert max_diff(before[0, 4:], after[0, 4:]) > 1e-4


def test_transformer_returns_the_chosen_layer_and_head():
    model = build(**TRANSFORMER_BASE).eval()
    src, tgt_in, _ = make_batch()
    with torch.no_grad():
        _, mean_last = model(src, tgt_in, return_attention=True)
        model.attention_layer, model.attention_head = 0, 1
        _, first_layer_head = model(src, tgt_in, return_attention=True)
        _, _, stepped = model.step(tgt_in[:, 0], model.init_state(model.encode(src)))
    assert max_diff(mean_last, first_layer_head) > 1e-3
    assert max_diff(stepped, first_layer_head[:, 0]) < 1e-5


def test_tied_output_shares_the_embedding_matrix_even_when_sizes_differ():
    model = build(**RNN_BASE)  # embed 16, hidden 24: a projection bridges them
    assert model.decoder.output.weight is model.decoder.embedding.weight
    assert model.decoder.embedding is model.encoder.embedding  # share_vocab
    untied = build(**RNN_BASE, tie_embeddings=False, share_vocab=False)
    assert untied.decoder.output.weight is not untied.decoder.embedding.weight
    assert untied.decoder.embedding is not untied.encoder.embedding


def test_interface_attributes():
    rnn = build(**RNN_BASE, share_vocab=False)
    assert (rnn.src_vocab_size, rnn.tgt_vocab_size) == (SRC_VOCAB, TGT_VOCAB)
    assert rnn.max_positions is None
    learned = build(**TRANSFORMER_BASE, positions="learned", max_positions=64)
    assert learned.max_positions == 64
    assert build(**TRANSFORMER_BASE).max_positions is None  # sinusoidal positions never end


def test_count_parameters_counts_shared_matrices_once():
    model = build(**TRANSFORMER_BASE)
    counts = count_parameters(model)
    unique = {id(p): p.numel() for p in model.parameters()}
    assert counts["total"] == sum(unique.values())
    assert counts["total"] == counts["embeddings"] + counts["encoder"] + counts["decoder"]
    assert counts["embeddings"] == SRC_VOCAB * 16  # one table: source, target and output
    assert "parameters" in describe_model(model)


def test_share_vocab_with_different_vocabularies_is_a_user_error():
    cfg = ModelConfig(**{**RNN_BASE, "share_vocab": True})
    with pytest.raises(UserError, match="model.share_vocab.*data.tokenizer.joint: true"):
        build_model(cfg, 20, 30)


@pytest.mark.parametrize(
    "overrides,key",
    [
        (dict(arch="transformer", attention="additive", hidden_dim=16, heads=2), "model.attention"),
        (dict(arch="gru", attention="local"), "model.attention"),
        (dict(arch="gru", bidirectional=True, hidden_dim=25), "model.hidden_dim"),
        (dict(arch="gru", attention="none", bridge=False), "model.bridge"),
    ],
)
def test_unsupported_combinations_name_the_key(overrides, key):
    with pytest.raises(UserError, match=key):
        build_model(ModelConfig(**{**RNN_BASE, **overrides}), SRC_VOCAB, SRC_VOCAB)


@pytest.mark.parametrize("indices", [
    [0, 1, 1, 3, 4, 5],  # one row changes: copied within the buffers
    [0, 5, 2, 3],  # rows leave and the last fills a hole: also within the buffers
    [5, 4, 3, 2, 1, 0],  # most rows change: new buffers
    [0, 0, 1, 1, 2, 2, 3],  # more rows than before (beam expansion): new buffers
])
def test_kv_cache_reorder_selects_rows_and_can_still_grow(indices):
    keys, values = torch.randn(6, 2, 5, 3), torch.randn(6, 2, 5, 3)
    cache = KVCache.empty(6, 2, 3, keys, capacity=5).append(keys, values)
    cache = cache.reorder_rows(torch.tensor(indices))
    more_keys, more_values = torch.randn(len(indices), 2, 1, 3), torch.randn(len(indices), 2, 1, 3)
    grown_keys, grown_values = cache.append(more_keys, more_values).keys_values()  # past capacity
    assert torch.equal(grown_keys, torch.cat([keys[indices], more_keys], dim=2))
    assert torch.equal(grown_values, torch.cat([values[indices], more_values], dim=2))
