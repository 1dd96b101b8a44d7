"""The encoder self-attention drawn by ``attn translate --self-attention``: the weights are the
ones the layer mixes its values with, they show each mechanism's pattern, and the command draws
them (or refuses by name where there is nothing to draw)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from seq2seq.config import ModelConfig
from seq2seq.models.attention_patterns import encoder_sparse_mask
from seq2seq.models.builder import build_model
from seq2seq.models.multihead import merge_heads, padding_mask, split_heads
from seq2seq.models.self_attention_map import encoder_self_attention, layer_weights
from tests.helpers_cli import assert_user_error, run_attn, write_config, write_corpus

BASE = dict(arch="transformer", hidden_dim=16, heads=2, ffn_dim=32, encoder_layers=2, decoder_layers=1, dropout=0.0)
MECHANISMS = {
    "scaled_dot": {},
    "local": {"window": 2},
    "sparse": {"window": 1, "global_tokens": 2, "random_blocks": 1},
    "gaussian": {"gaussian_bias": True},
    "sparsemax": {"attention_normalizer": "sparsemax"},
    "performer": {"attention": "performer", "features": 16},
}


def build(name: str) -> torch.nn.Module:
    settings = {"attention": name if name in ("local", "sparse") else "scaled_dot", **MECHANISMS[name]}
    torch.manual_seed(0)
    return build_model(ModelConfig(**BASE, **settings), 30, 30).eval()


def source() -> torch.Tensor:
    src = torch.randint(4, 30, (2, 11), generator=torch.Generator().manual_seed(1))
    src[1, 7:] = 0  # padding
    return src


@pytest.mark.parametrize("name", MECHANISMS)
def test_the_weights_drawn_are_those_the_layer_mixes_its_values_with(name):
    model = build(name)
    src = source()
    x = model.encoder.embed(src)
    src_mask = padding_mask(src)
    mask = model.encoder.attention_pattern(src_mask, blocked=False)
    layer = model.encoder.layers[0]
    attention = layer.self_attention
    normed = layer.self_attention_residual.sublayer_input(x)
    with torch.no_grad():
        weights = layer_weights(attention, normed, mask, src_mask)
        out, _ = attention(normed, mask, key_mask=src_mask)
        values = split_heads(attention.qkv(normed).chunk(3, dim=-1)[2], attention.heads)
        mixed = attention.out(merge_heads(weights.to(values.dtype) @ values))
    assert weights.shape == (2, 2, 11, 11)
    torch.testing.assert_close(mixed, out, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 11), atol=1e-5, rtol=1e-5)
    assert (weights[1, :, :7, 7:] == 0).all()  # padding is never attended by a real token


@pytest.mark.parametrize("name", ["local", "sparse"])
def test_local_and_sparse_show_their_pattern(name):
    model = build(name)
    src = source()
    cfg = model.config
    allowed = encoder_sparse_mask(padding_mask(src), cfg.window, cfg.global_tokens, cfg.random_blocks)[:, 0]
    for layer in (0, -1):
        weights = encoder_self_attention(model, src, layer)
        assert (weights[~allowed] == 0).all()
        assert (weights[allowed & padding_mask(src)[:, :, None]] > 0).all()  # softmax: every allowed key counts


def test_memory_slots_are_left_out_of_the_picture():
    torch.manual_seed(0)
    model = build_model(ModelConfig(**BASE, attention="scaled_dot", memory_slots=3), 30, 30).eval()
    weights = encoder_self_attention(model, source(), head=1)
    assert weights.shape == (2, 11, 11)
    assert (weights.sum(-1) < 1).all()  # the rest went to the slots


def test_translate_draws_the_encoder_self_attention_and_refuses_what_has_none(tmp_path: Path):
    corpus = write_corpus(tmp_path / "corpus", {"train": 200, "valid": 10, "test": 10})
    config = write_config(tmp_path / "run.yaml", corpus, tmp_path / "run")
    base = ["--set", "model.arch=transformer", "--set", "model.encoder_layers=2", "--set", "train.max_steps=1"]
    for name, attention in (("local", "local"), ("linformer", "linformer")):
        result = run_attn("train", config, "--quiet", *base, "--set", f"model.attention={attention}",
                         "--set", f"output_dir={tmp_path / name}", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    local = tmp_path / "local" / "checkpoints" / "best.pt"
    result = run_attn("translate", "-c", local, "--beam", "1", "--attention-plots", "plots", "--self-attention",
                     "--attention-layer", "1", "--attention-head", "0", cwd=tmp_path, input="hola mundo\nbuenos días\n")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["00001.png", "00002.png"]
    assert_user_error(run_attn("translate", "-c", local, "--self-attention", cwd=tmp_path, input="hola\n"),
                      "--self-attention", "--attention-plots")
    assert_user_error(run_attn("translate", "-c", local, "--attention-plots", "p2", "--self-attention",
                              "--attention-layer", "2", cwd=tmp_path, input="hola\n"),
                      "--attention-layer 2", "2 encoder layers")
    assert_user_error(run_attn("translate", "-c", local, "--attention-plots", "p2", "--self-attention",
                               "--alignments", cwd=tmp_path, input="hola\n"), "--alignments", "encoder layer")
    linformer = tmp_path / "linformer" / "checkpoints" / "best.pt"
    assert_user_error(run_attn("translate", "-c", linformer, "--attention-plots", "p3", "--self-attention",
                              cwd=tmp_path, input="hola\n"), "--self-attention", "Linformer")
    assert not (tmp_path / "p2").exists() and not (tmp_path / "p3").exists()
