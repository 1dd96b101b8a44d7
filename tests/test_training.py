"""The training loop: loss, schedules, gradient accumulation, logging, non-finite updates."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seq2seq.config import Config, TrainConfig
from seq2seq.data.prepare import load_prepared
from seq2seq.data.special import PAD_ID
from seq2seq import checkpoint as ckpt
from seq2seq import run_folder
from seq2seq.training import objective as objective_module
from seq2seq.training import trainer as trainer_module
from seq2seq.training.distributed import DistInfo
from seq2seq.training import loss as loss_module
from seq2seq.training.loss import label_smoothed_nll, projected_smoothed_nll
from seq2seq.training.schedule import Plateau, lr_at
from seq2seq.training.budget import TimeBudget
from seq2seq.errors import TrainingStopped
from seq2seq.run_folder import read_metrics
from seq2seq.training.data_order import accumulation_steps, uneven_update_warning
from seq2seq.training.setup import seed_everything
from seq2seq.training.run import train
from seq2seq.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_trainer(cfg) -> Trainer:
    seed_everything(cfg.train.seed)
    return Trainer(cfg, load_prepared(cfg.prepared_dir), DistInfo(), torch.device("cpu"), log=lambda m: None)


def grads(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


def params(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def poison_losses(monkeypatch: pytest.MonkeyPatch, bad_calls) -> None:
    """Make the training loss NaN on the given (1-based) micro-batch calls."""
    real = objective_module.projected_smoothed_nll
    calls = itertools.count(1)

    def patched(features, output, target, smoothing):
        sums = real(features, output, target, smoothing)
        if bad_calls(next(calls)):
            sums.loss = sums.loss * float("nan")
        return sums

    monkeypatch.setattr(objective_module, "projected_smoothed_nll", patched)


# ----------------------------------------------------------------------------- loss


def test_label_smoothing_and_padding_match_a_hand_computed_case():
    eps = 0.1
    rows = [[1.0, 2.0, 3.0, 0.0], [0.5, 0.5, 0.5, 2.0], [9.0, -9.0, 5.0, 7.0]]
    targets = [2, 1, PAD_ID]  # the third position is padding: it must not count at all
    logits = torch.tensor([rows], requires_grad=True)  # [batch 1, time 3, vocab 4]

    expected_loss = expected_nll = 0.0
    for row, target in zip(rows[:2], targets[:2]):
        log_z = math.log(sum(math.exp(x) for x in row))
        log_p = [x - log_z for x in row]
        nll = -log_p[target]
        uniform = -sum(log_p) / len(log_p)  # eps is spread over all 4 classes
        expected_loss += (1 - eps) * nll + eps * uniform
        expected_nll += nll
    # Row 0: 1 - log(e + e^2 + e^3 + 1) etc.; argmax hits row 0 (index 2), misses row 1 (3 != 1).

    sums = label_smoothed_nll(logits, torch.tensor([targets]), eps)
    assert sums.loss.item() == pytest.approx(expected_loss, abs=1e-5)
    assert sums.nll.item() == pytest.approx(expected_nll, abs=1e-5)
    assert sums.correct.item() == 1
    assert sums.tokens.item() == 2
    # Same definition as torch's cross_entropy(label_smoothing=eps), as a cross-check.
    reference = F.cross_entropy(logits[0], torch.tensor(targets), ignore_index=PAD_ID,
                                label_smoothing=eps, reduction="sum")
    assert sums.loss.item() == pytest.approx(reference.item(), abs=1e-5)
    # Padding gets no gradient, whatever its logits.
    sums.loss.backward()
    assert torch.all(logits.grad[0, 2] == 0)
    assert torch.all(logits.grad[0, :2].abs().sum(-1) > 0)
    no_smoothing = label_smoothed_nll(logits, torch.tensor([targets]), 0.0)
    assert no_smoothing.loss.item() == pytest.approx(expected_nll, abs=1e-5)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_the_chunked_training_loss_equals_projection_then_loss(monkeypatch, bias, smoothing):
    # Chunks of 3 rows over 11 tokens: several chunks and a short last one.
    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", 3 * 50)
    torch.manual_seed(0)
    output = torch.nn.Linear(8, 50, bias=bias)
    features = torch.randn(11, 8, requires_grad=True)
    target = torch.randint(1, 50, (11,))
    target[4] = 7
    with torch.no_grad():  # make one prediction certainly right, so `correct` is exercised
        output.weight[7] = 3 * features[4]

    reference = label_smoothed_nll(output(features), target, smoothing)
    (0.7 * reference.loss).backward()
    expected = [features.grad.clone()] + [p.grad.clone() for p in output.parameters()]
    features.grad = None
    output.zero_grad()

    sums = projected_smoothed_nll(features, output, target, smoothing)
    (0.7 * sums.loss).backward()
    got = [features.grad] + [p.grad for p in output.parameters()]
    assert sums.loss.item() == pytest.approx(reference.loss.item(), rel=1e-5)
    assert sums.nll.item() == pytest.approx(reference.nll.item(), rel=1e-5)
    assert sums.correct.item() == reference.correct.item() >= 1
    assert sums.tokens.item() == 11
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)  # float32 tolerances


def test_the_chunked_training_loss_under_bf16_autocast_keeps_fp32_weight_gradients(monkeypatch):
    # bf16 features (what an autocast decoder hands over), fp32 weights: the weight gradient
    # must come back in fp32 and close to the fp32 computation.
    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", 4 * 40)
    torch.manual_seed(2)
    output = torch.nn.Linear(16, 40)
    features = torch.randn(10, 16)
    target = torch.randint(1, 40, (10,))
    reference = label_smoothed_nll(output(features), target, 0.1)
    reference.loss.backward()
    expected = [p.grad.clone() for p in output.parameters()]
    output.zero_grad()

    half = features.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sums = projected_smoothed_nll(half, output, target, 0.1)
    sums.loss.backward()
    assert half.grad.dtype == torch.bfloat16
    assert sums.loss.item() == pytest.approx(reference.loss.item(), rel=2e-2)
    for p, grad in zip(output.parameters(), expected):
        assert p.grad.dtype == torch.float32
        torch.testing.assert_close(p.grad, grad, rtol=0.05, atol=2e-2)


def test_the_training_loss_survives_the_fp16_grad_scalers_first_scale():
    # GradScaler starts at 2**16, past fp16's largest number: scaling the features' gradient in
    # fp16 turned the whole first update into inf. (Small weights keep the true scaled gradient
    # within fp16's range, as it mostly is in training.)
    torch.manual_seed(3)
    output = torch.nn.Linear(16, 40)
    with torch.no_grad():
        output.weight.mul_(0.1)
    features, target = torch.randn(10, 16), torch.randint(1, 40, (10,))
    reference = features.clone().requires_grad_()
    label_smoothed_nll(output(reference), target, 0.1).loss.backward()

    half = features.half().requires_grad_()
    with torch.autocast("cpu", dtype=torch.float16):
        sums = projected_smoothed_nll(half, output, target, 0.1)
    scale = 2.0**16
    (sums.loss * scale).backward()
    assert half.grad.dtype == torch.float16 and bool(half.grad.isfinite().all())
    torch.testing.assert_close(half.grad.float() / scale, reference.grad, rtol=0.02, atol=2e-4)


def test_the_training_loss_projects_all_rows_at_once_on_a_gpu():
    vocab = 8000
    assert loss_module.chunk_rows(torch.device("cuda", 0), 12_345, vocab) == 12_345
    assert loss_module.chunk_rows(torch.device("cpu"), 12_345, vocab) == loss_module.CHUNK_ELEMENTS // vocab
    assert loss_module.chunk_rows(torch.device("cpu"), 10, 2 * loss_module.CHUNK_ELEMENTS) == 1
    assert loss_module.chunk_rows(torch.device("cuda"), 0, vocab) == 1  # (a range step of 0 would raise)


def test_the_chunked_training_loss_without_gradients_gives_the_same_sums():
    torch.manual_seed(1)
    output = torch.nn.Linear(6, 30)
    features, target = torch.randn(9, 6), torch.randint(1, 30, (9,))
    with torch.no_grad():
        sums = projected_smoothed_nll(features, output, target, 0.1)
        reference = label_smoothed_nll(output(features), target, 0.1)
    assert sums.loss.item() == pytest.approx(reference.loss.item(), rel=1e-5)


# ----------------------------------------------------------------------------- schedules


def test_inverse_sqrt_peaks_at_lr_after_warmup_then_decays_as_sqrt():
    cfg = TrainConfig(schedule="inverse_sqrt", lr=1e-3, warmup_steps=100)
    assert lr_at(100, cfg) == pytest.approx(1e-3)
    assert lr_at(50, cfg) == pytest.approx(0.5e-3)  # linear warm-up
    for step in (100, 150, 400, 900, 10_000):
        assert lr_at(step, cfg) == pytest.approx(1e-3 * math.sqrt(100 / step))
    curve = [lr_at(s, cfg) for s in range(1, 2001)]
    assert max(curve) == pytest.approx(1e-3) and int(np.argmax(curve)) + 1 == 100
    assert all(a > b for a, b in zip(curve[99:], curve[100:]))
    noam = TrainConfig(schedule="noam", lr=1e-3, warmup_steps=100)
    assert [lr_at(s, noam) for s in (1, 100, 777)] == [lr_at(s, cfg) for s in (1, 100, 777)]
    floored = TrainConfig(schedule="inverse_sqrt", lr=1e-3, warmup_steps=100, min_lr=1e-4)
    assert lr_at(10**6, floored) == pytest.approx(1e-4)


def test_cosine_goes_from_lr_to_min_lr():
    cfg = TrainConfig(schedule="cosine", lr=1e-3, warmup_steps=100, max_steps=1100, min_lr=1e-5)
    assert lr_at(50, cfg) == pytest.approx(0.5e-3)
    assert lr_at(100, cfg) == pytest.approx(1e-3)
    assert lr_at(600, cfg) == pytest.approx((1e-3 + 1e-5) / 2)  # half-way down
    assert lr_at(1100, cfg) == pytest.approx(1e-5)
    assert lr_at(5000, cfg) == pytest.approx(1e-5)  # past max_steps (resumed with more steps)
    curve = [lr_at(s, cfg) for s in range(100, 1101)]
    assert all(a > b for a, b in zip(curve, curve[1:]))


def test_constant_schedule_and_plateau_decay():
    cfg = TrainConfig(schedule="constant", lr=2e-3, warmup_steps=10)
    assert [lr_at(s, cfg) for s in (1, 5, 10, 11, 10_000)] == pytest.approx([2e-4, 1e-3, 2e-3, 2e-3, 2e-3])
    assert lr_at(1, TrainConfig(schedule="constant", lr=2e-3, warmup_steps=0)) == 2e-3

    plateau = Plateau(TrainConfig(schedule="plateau", plateau_factor=0.5, plateau_patience=1))
    for score in (10.0, 11.0, 10.5, 10.9):  # improves, then two validations without improvement
        plateau.update(score, higher_is_better=True)
    assert plateau.scale == 0.5
    restored = Plateau(TrainConfig())
    restored.load_state_dict(plateau.state_dict())
    assert restored.scale == 0.5 and restored.best == 11.0

    # train.min_lr is a floor for the decayed rate too (as for torch's ReduceLROnPlateau).
    floored = TrainConfig(schedule="plateau", lr=1e-3, warmup_steps=0, min_lr=1e-4)
    assert lr_at(100, floored, plateau_scale=0.5) == pytest.approx(5e-4)
    assert lr_at(100, floored, plateau_scale=0.5**6) == pytest.approx(1e-4)


# ----------------------------------------------------------------------------- one update


def test_update_size_that_processes_cannot_split_evenly_is_warned_about():
    cfg = Config(train=TrainConfig(batch_tokens=4096, update_tokens=16384))
    assert [accumulation_steps(cfg, world) for world in (1, 2, 3, 4)] == [4, 2, 1, 1]
    assert uneven_update_warning(cfg, 4) is None
    assert "updates hold up to 12288 tokens" in uneven_update_warning(cfg, 3)


def test_accumulated_micro_batches_give_the_full_batch_gradient(tiny_corpus, tmp_path):
    trainer = make_trainer(tiny_corpus.config(tmp_path / "run", "model.dropout=0.0"))
    full = max(trainer.sampler.batches(0)[:6], key=len)
    assert len(full) >= 6

    whole = trainer.accumulate_gradients([full])
    expected = grads(trainer)
    assert sum(g.norm().item() for g in expected.values()) > 0
    for k in (2, 3):
        trainer.optimizer.zero_grad(set_to_none=True)
        parts = np.array_split(full, k)
        figures = trainer.accumulate_gradients(parts)
        assert max_difference(grads(trainer), expected) <= 1e-6, f"{k} micro-batches"
        assert figures["tokens"].item() == whole["tokens"].item()
        assert figures["loss"].item() == pytest.approx(whole["loss"].item(), rel=1e-5)


def test_a_non_finite_update_is_skipped_and_leaves_the_parameters(tiny_corpus, tmp_path, monkeypatch):
    trainer = make_trainer(tiny_corpus.config(tmp_path / "run", "model.dropout=0.0", "train.lr=0.01",
                                              "train.schedule=constant", "train.warmup_steps=0"))
    group = [trainer.sampler.batches(0)[0]]
    poison_losses(monkeypatch, lambda call: call == 2)

    trainer.optimizer_step(group)  # a good step, so Adam has moments to protect
    before = params(trainer)
    moments = {k: v.clone() for k, v in trainer.optimizer.state[next(trainer.model.parameters())].items()}
    figures = trainer.optimizer_step(group)  # NaN loss -> NaN gradients
    assert not math.isfinite(figures["loss"].item())
    assert max_difference(params(trainer), before) == 0
    after = trainer.optimizer.state[next(trainer.model.parameters())]
    assert all(torch.equal(after[k], v) for k, v in moments.items())
    assert trainer.skipped.item() == 1 and trainer.bad_run.item() == 1
    assert trainer.state.step == 2

    trainer.optimizer_step(group)  # good again: parameters move, the bad run resets
    assert max_difference(params(trainer), before) > 0
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert trainer.skipped.item() == 1 and trainer.bad_run.item() == 0


def test_skipped_updates_are_reported_and_training_goes_on(tiny_corpus, tmp_path, monkeypatch):
    poison_losses(monkeypatch, lambda call: call == 3)
    messages: list[str] = []
    cfg = tiny_corpus.config(tmp_path / "run", "train.max_steps=6", "train.log_every=2", "train.valid_every=100")
    summary = train(cfg, log=messages.append, quiet=True)
    assert summary.steps == 6
    assert any("warning: skipped 1 update" in m for m in messages), messages
    skipped = {r["step"]: r["skipped_steps"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r}
    assert skipped == {2: 0, 4: 1, 6: 1}


def test_max_bad_steps_in_a_row_stop_training_with_a_usable_checkpoint(tiny_corpus, tmp_path, monkeypatch):
    poison_losses(monkeypatch, lambda call: call >= 4)
    out = tmp_path / "run"
    cfg = tiny_corpus.config(out, "train.max_steps=50", "train.max_bad_steps=3", "train.save_every=3",
                             "train.valid_every=100", "train.log_every=10")
    with pytest.raises(TrainingStopped, match="3 non-finite"):
        train(cfg, log=lambda m: None, quiet=True)
    last = ckpt.load_checkpoint(run_folder.step_checkpoint_path(out, 6))
    good = ckpt.load_checkpoint(run_folder.step_checkpoint_path(out, 3))
    assert last["run_state"]["step"] == 6
    for name, tensor in last["model"].items():  # the three bad updates changed nothing
        assert torch.isfinite(tensor).all()
        assert torch.equal(tensor, good["model"][name]), name


def test_max_minutes_stops_after_the_update_that_crosses_the_budget(tiny_corpus, tmp_path, monkeypatch):
    # A fake clock: every update takes 30 s, so a 2-minute budget ends the run at step 4.
    steps_done = [0]
    real_step = Trainer.optimizer_step

    def counted_step(self, group):
        figures = real_step(self, group)
        steps_done[0] = self.state.step
        return figures

    monkeypatch.setattr(Trainer, "optimizer_step", counted_step)
    monkeypatch.setattr(TimeBudget, "seconds", lambda self: 30.0 * steps_done[0])
    out = tmp_path / "run"
    cfg = tiny_corpus.config(out, "train.max_steps=50", "train.max_minutes=2", "train.valid_every=100",
                             "train.log_every=10")
    summary = train(cfg, log=lambda m: None, quiet=True)
    assert summary.steps == 4
    assert "train.max_minutes" in summary.stopped_because
    assert ckpt.load_checkpoint(run_folder.step_checkpoint_path(out, 4))["run_state"]["wall_seconds"] == 120.0


def test_a_run_ended_by_max_epochs_validates_its_final_model(tiny_corpus, tmp_path):
    """Otherwise the steps after the last validation are never scored, and a run shorter than
    train.valid_every has no best.pt at all."""
    out = tmp_path / "run"
    cfg = tiny_corpus.config(out, "train.max_steps=1000", "train.max_epochs=1", "train.valid_every=1000",
                             "train.batch_tokens=4000", "train.valid_max_sentences=8")
    summary = train(cfg, log=lambda m: None, quiet=True)
    assert "train.max_epochs" in summary.stopped_because and 0 < summary.steps < 1000
    validations = [r["step"] for r in read_metrics(out / "metrics.jsonl") if "valid_loss" in r]
    assert validations == [summary.steps] and summary.best_step == summary.steps
    assert ckpt.load_checkpoint(run_folder.checkpoint_dir(out) / run_folder.BEST_NAME)["run_state"]["step"] == summary.steps


def test_ctrl_c_during_a_validation_abandons_it_and_saves(tiny_corpus, tmp_path, monkeypatch):
    """The checkpoint must not wait for a long validation (torchrun kills workers 30 s after
    forwarding a signal). The abandoned validation counts for nothing."""
    from seq2seq.decoding.translator import Translator
    from seq2seq.training import validation

    monkeypatch.setattr(validation, "ABANDON_CHECK_SENTENCES", 4)
    init, translate, trainers, chunks = Trainer.__init__, Translator.translate, [], []

    def recording_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        trainers.append(self)

    def translate_then_ctrl_c(self, lines, first_line=1):
        chunks.append(first_line)
        trainers[0].interrupted = True  # what the signal handler does
        return translate(self, lines, first_line)

    monkeypatch.setattr(Trainer, "__init__", recording_init)
    monkeypatch.setattr(Translator, "translate", translate_then_ctrl_c)
    out = tmp_path / "run"
    cfg = tiny_corpus.config(out, "train.max_steps=50", "train.valid_every=2", "train.valid_max_sentences=12")
    summary = train(cfg, log=lambda m: None, quiet=True)
    assert chunks == [1]  # one chunk of 4 sentences translated, then abandoned
    assert summary.steps == 2 and summary.interrupted and summary.best_score is None
    assert not any("valid_loss" in r for r in read_metrics(out / "metrics.jsonl"))
    assert ckpt.load_checkpoint(run_folder.step_checkpoint_path(out, 2))["run_state"]["validations_without_improvement"] == 0


# ----------------------------------------------------------------------------- a short run


@pytest.fixture(scope="module")
def short_run(one_torch_thread, tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("short_run") / "run"
    cfg = tiny_corpus.config(out, "train.max_steps=30", "train.log_every=3", "train.valid_every=15",
                             "train.schedule=constant", "train.warmup_steps=0", "train.lr=0.005",
                             "train.clip_norm=1.0")
    summary = train(cfg, log=lambda m: None, quiet=True)
    return out, summary, read_metrics(out / "metrics.jsonl")


def test_loss_decreases_on_the_bundled_corpus(short_run):
    _, summary, records = short_run
    losses = [r["loss"] for r in records if "loss" in r]
    assert summary.steps == 30 and len(losses) == 10
    assert losses[-1] < losses[0] - 0.5, losses


def test_metrics_lines_have_the_documented_fields(short_run):
    out, _, records = short_run
    train_lines = [r for r in records if "loss" in r]
    valid_lines = [r for r in records if "valid_loss" in r]
    assert [r["step"] for r in train_lines] == list(range(3, 31, 3))
    assert [r["step"] for r in valid_lines] == [15, 30]
    for r in train_lines:
        assert {"step", "loss", "lr", "tokens_per_s"} <= r.keys()
        assert r["lr"] == pytest.approx(0.005) and r["tokens_per_s"] > 0 and r["skipped_steps"] == 0
    for r in valid_lines:
        assert {"step", "valid_loss", "valid_bleu"} <= r.keys()
        assert math.isfinite(r["valid_loss"]) and r["valid_bleu"] >= 0
    for line in (out / "metrics.jsonl").read_text().splitlines():
        json.loads(line)


def test_run_writes_curve_config_and_checkpoints(short_run):
    out, summary, _ = short_run
    assert (out / "learning_curve.png").read_bytes().startswith(b"\x89PNG")
    config = (out / "config.yaml").read_text()
    assert "max_steps: 30" in config and "lr: 0.005" in config
    steps = [ckpt.load_checkpoint(p)["run_state"]["step"] for p in run_folder.step_checkpoints(out)]
    assert steps == [15, 30]
    best = ckpt.load_checkpoint(out / "checkpoints" / "best.pt")
    assert best["run_state"]["step"] == summary.best_step


def test_tensorboard_logs_the_same_figures(tiny_corpus, tmp_path, one_torch_thread):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train(tiny_corpus.config(run, "train.max_steps=4", "train.log_every=2", "train.valid_every=4",
                             "train.tensorboard=true"), quiet=True, log=lambda m: None)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/tokens_per_s", "valid/valid_bleu", "valid/valid_loss"} <= tags
    logged = [r for r in read_metrics(run / "metrics.jsonl") if "loss" in r]
    assert [e.step for e in events.Scalars("train/loss")] == [r["step"] for r in logged]
    assert events.Scalars("train/loss")[-1].value == pytest.approx(logged[-1]["loss"], rel=1e-6)


def test_validation_leaves_out_pairs_that_learned_positions_cannot_read(tiny_corpus, tmp_path):
    """Only training pairs are length-filtered: a valid pair longer than model.max_positions
    used to stop the run with a traceback at its first validation."""
    cfg = tiny_corpus.config(tmp_path / "run", "model.arch=transformer", "model.heads=2", "model.positions=learned",
                             "model.max_positions=40", "data.max_len=30", f"data.prepared_dir={tmp_path / 'data'}",
                             "train.max_steps=1", "train.valid_every=1")
    summary = train(cfg, log=lambda m: None, quiet=True)
    valid = load_prepared(tmp_path / "data").dataset("valid")
    assert max(valid.src_lengths.max(), valid.tgt_lengths.max()) >= 40  # the case this is about
    assert summary.steps == 1
    assert [r["valid_loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "valid_loss" in r]


def test_live_status_line_is_ended_once_and_shows_no_speed_before_it_is_known():
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    progress = trainer_module.Progress(max_steps=10, enabled=True, stream=terminal)
    progress.tick(step=1, epoch=0, elapsed=1.0, steps_done=1)
    assert "tok/s" not in terminal.getvalue()  # not "0 tok/s" before the first log line
    progress.finish()  # e.g. max_minutes ran out between log lines
    progress.finish()
    assert terminal.getvalue().endswith("   \n") and terminal.getvalue().count("\n") == 1


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(),
                    reason="resetting the peak RSS needs Linux's /proc/self/clear_refs")
def test_peak_rss_counts_from_the_last_reset():
    from seq2seq.training.memory import peak_rss_mib, reset_peak_rss

    reset_peak_rss()
    before = peak_rss_mib()
    block = np.ones(300 * 2**20 // 8)  # 300 MiB, touched
    high = peak_rss_mib()
    del block
    reset_peak_rss()
    assert high - before > 250 and peak_rss_mib() < high - 250
