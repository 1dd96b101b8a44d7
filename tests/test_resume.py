"""--resume continues the very same run: same losses, same data order, same dropout noise."""

from __future__ import annotations

import json

import pytest
import torch

from seq2seq.errors import UserError
from seq2seq import checkpoint as ckpt
from seq2seq import run_folder
from seq2seq.run_folder import read_metrics
from seq2seq.training.records import trim_metrics
from seq2seq.training.run import train
from tests.helpers_cli import flip_a_weight_byte

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Dropout > 0, so the RNG state must be restored; two micro-batches per update over the 18
# batches of an epoch, so steps 7..12 run from the middle of epoch 1 into epoch 2 (data position).
RUN = ("model.dropout=0.3", "train.update_tokens=3000", "train.log_every=1", "train.save_every=6",
       "train.valid_every=6", "train.schedule=constant", "train.warmup_steps=0", "train.lr=0.003")


def quiet_train(cfg, **kwargs):
    return train(cfg, log=lambda m: None, quiet=True, **kwargs)


def train_losses(out) -> dict[int, float]:
    lines = [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    steps = [r["step"] for r in lines]
    assert len(steps) == len(set(steps)), f"duplicate steps in metrics.jsonl: {steps}"
    return {r["step"]: r["loss"] for r in lines}


# The second: an LSTM decoder of 2 layers with input feeding, which in training runs attn's own
# steps (seq2seq/kernels/lstm_step.py) with attn's dropout between the layers.
# The third draws its attention positions (REINFORCE), so the resumed run must draw the same.
# The last two are the Transformer taxonomy's: Performer's random features must come back as
# drawn, and sparse attention's random blocks, memory slots and Gaussian bias with their state.
MODELS = {"default": (), "lstm-input-feeding": ("model.arch=lstm", "model.decoder_layers=2",
                                                "model.decoder_style=luong", "model.input_feeding=true"),
          "hard-attention": ("model.attention=hard", "model.hard_attention=reinforce"),
          "transformer-performer": ("model.arch=transformer", "model.attention=performer", "model.features=16"),
          "transformer-sparse-extras": ("model.arch=transformer", "model.attention=sparse", "model.window=2",
                                        "model.global_tokens=1", "model.random_blocks=1", "model.memory_slots=2",
                                        "model.gaussian_bias=true")}


@pytest.mark.parametrize("model", MODELS)
def test_resumed_run_matches_the_uninterrupted_run(tiny_corpus, tmp_path, model):
    a, b = tmp_path / "a", tmp_path / "b"
    run = (*RUN, *MODELS[model])
    quiet_train(tiny_corpus.config(a, *run, "train.max_steps=12"))
    quiet_train(tiny_corpus.config(b, *run, "train.max_steps=6"))
    summary = quiet_train(tiny_corpus.config(b, *run, "train.max_steps=12"), resume=True)
    assert summary.steps == 12

    losses_a, losses_b = train_losses(a), train_losses(b)
    assert sorted(losses_a) == sorted(losses_b) == list(range(1, 13))
    for step in range(7, 13):
        assert losses_b[step] == pytest.approx(losses_a[step], abs=1e-6), f"step {step}"
    epochs = {r["step"]: r["epoch"] for r in read_metrics(b / "metrics.jsonl") if "loss" in r}
    assert epochs[7] == 1 and epochs[12] == 2  # the resumed part crossed an epoch boundary
    valid_steps = [r["step"] for r in read_metrics(b / "metrics.jsonl") if "valid_loss" in r]
    assert valid_steps == [6, 12]

    final_a = ckpt.load_checkpoint(run_folder.step_checkpoint_path(a, 12))
    final_b = ckpt.load_checkpoint(run_folder.step_checkpoint_path(b, 12))
    clocks = {key: final_a["run_state"][key] for key in ("train_seconds", "wall_seconds")}
    assert final_a["run_state"] == {**final_b["run_state"], **clocks}
    for name, tensor in final_a["model"].items():
        assert torch.allclose(tensor, final_b["model"][name], rtol=0, atol=1e-6), name


def test_resume_needs_a_checkpoint_and_refuses_to_clobber(tiny_corpus, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(UserError, match="no checkpoint to resume from"):
        quiet_train(tiny_corpus.config(out, "train.max_steps=2"), resume=True)
    quiet_train(tiny_corpus.config(out, "train.max_steps=2", "train.valid_every=100"))
    with pytest.raises(UserError, match="already holds a run"):
        quiet_train(tiny_corpus.config(out, "train.max_steps=2"))


@pytest.mark.parametrize("damage", ["cut-short", "one-byte-changed"])
def test_resume_skips_a_corrupt_newest_checkpoint(tiny_corpus, tmp_path, damage):
    out = tmp_path / "run"
    run = ("train.save_every=2", "train.valid_every=100", "train.log_every=1")
    quiet_train(tiny_corpus.config(out, *run, "train.max_steps=4"))
    newest = run_folder.step_checkpoint_path(out, 4)
    if damage == "cut-short":
        newest.write_bytes(newest.read_bytes()[:1000])  # e.g. a disk that lied about a write
    else:
        flip_a_weight_byte(newest)  # loads without complaint unless its checksums are checked
    messages: list[str] = []
    summary = train(tiny_corpus.config(out, *run, "train.max_steps=5"), resume=True, log=messages.append, quiet=True)
    assert any("skipping" in m and "step_00000004.pt" in m for m in messages)
    assert any("resumed from" in m and "at step 2" in m for m in messages)
    assert summary.steps == 5
    assert sorted(train_losses(out)) == [1, 2, 3, 4, 5]


def test_metrics_with_a_line_cut_short_by_a_kill_are_read_and_trimmed(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in (1, 2, 3)]
    path.write_text("\n".join(lines) + "\n" + '{"step": 4, "lo')
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    trim_metrics(path, 2)
    assert path.read_text() == "\n".join(lines[:2]) + "\n"
