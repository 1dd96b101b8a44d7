"""A run that stops on its time budget validates its final model inside the budget; a run
stopped before validating says so, and translating from its folder warns of the newer model."""

from __future__ import annotations

import time

import pytest

from seq2seq.run_folder import read_metrics, resolve_checkpoint
from seq2seq import checkpoint as ckpt
from seq2seq import run_folder
from seq2seq.training.run import train
from seq2seq.training.trainer import Trainer
from tests.helpers_cli import run_attn

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.slow
def test_a_time_budget_ends_with_the_final_model_validated_within_it(tiny_corpus, tmp_path):
    out, budget = tmp_path / "run", 0.2  # minutes
    start = time.perf_counter()
    summary = train(tiny_corpus.config(out, "train.max_steps=1000000", "train.valid_every=7", "train.log_every=1",
                                       "train.warmup_steps=10", f"train.max_minutes={budget}"),
                    log=lambda m: None, quiet=True)
    seconds = time.perf_counter() - start
    validations = [r for r in read_metrics(out / "metrics.jsonl") if "valid_loss" in r]
    assert len(validations) >= 2 and validations[-1]["step"] == summary.steps  # the final model's score
    if summary.steps % 7:  # it stopped between two validations
        assert "the final validation took" in summary.stopped_because
    assert summary.unvalidated is None
    best = ckpt.load_checkpoint(run_folder.checkpoint_dir(out) / run_folder.BEST_NAME)["run_state"]["step"]
    scores = {r["step"]: r["valid_bleu"] for r in validations}
    assert best == summary.best_step and scores[best] == max(scores.values())
    # Start-up (loading the data, building the model) is outside the budget: 3 s of slack.
    assert seconds <= 60 * budget + validations[-1]["valid_seconds"] + 3.0


@pytest.fixture(scope="module")
def interrupted_run(tiny_corpus, tmp_path_factory, one_torch_thread):
    """A run stopped by Ctrl-C at step 5, its last validation at step 3."""
    out = tmp_path_factory.mktemp("interrupted") / "run"
    step = Trainer.optimizer_step

    def ctrl_c_at_step_5(self, group):
        figures = step(self, group)
        self.interrupted = self.interrupted or self.state.step == 5
        return figures

    Trainer.optimizer_step = ctrl_c_at_step_5
    try:
        summary = train(tiny_corpus.config(out, "train.max_steps=100", "train.valid_every=3"),
                        log=lambda m: None, quiet=True)
    finally:
        Trainer.optimizer_step = step
    assert summary.interrupted and summary.steps == 5
    assert summary.unvalidated == run_folder.step_checkpoint_path(out, 5)
    return out


def test_the_run_folder_resolves_to_best_and_warns_of_the_newer_model(interrupted_run):
    warnings = []
    best = resolve_checkpoint(interrupted_run, "best", warnings.append)
    assert best == run_folder.checkpoint_dir(interrupted_run) / run_folder.BEST_NAME
    assert ckpt.load_checkpoint(best)["run_state"]["step"] == 3
    assert len(warnings) == 1 and "step_00000005.pt (step 5" in warnings[0] and "--which last" in warnings[0]
    assert resolve_checkpoint(interrupted_run, "last") == run_folder.step_checkpoint_path(interrupted_run, 5)
    for which in ("best", "last"):  # the checkpoints/ folder is the run folder's
        assert resolve_checkpoint(run_folder.checkpoint_dir(interrupted_run), which) == resolve_checkpoint(interrupted_run, which)


@pytest.mark.slow
def test_translate_warns_of_the_newer_model_and_which_last_takes_it(interrupted_run, tmp_path):
    source = tmp_path / "in.es"
    source.write_text("Y dijo Dios.\nSea la luz.\n", encoding="utf-8")
    common = ("--beam", "1", "--max-len-a", "0", "--max-len-b", "5", "--scores", "-i", source)
    best = run_attn("translate", "-c", interrupted_run, *common, cwd=tmp_path)
    assert best.returncode == 0, best.stderr
    warnings = [line for line in best.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "step_00000005.pt" in warnings[0] and "--which last" in warnings[0]
    last = run_attn("translate", "-c", interrupted_run, "--which", "last", *common, cwd=tmp_path)
    assert last.returncode == 0 and "warning" not in last.stderr
    step_5 = run_attn("translate", "-c", run_folder.step_checkpoint_path(interrupted_run, 5), *common, cwd=tmp_path)
    assert last.stdout == step_5.stdout
    folder = run_attn("translate", "-c", run_folder.checkpoint_dir(interrupted_run), *common, cwd=tmp_path)
    assert folder.returncode == 0 and folder.stdout == best.stdout


def test_the_reserve_for_the_final_validation_is_at_most_half_the_budget():
    from seq2seq.training.budget import TimeBudget

    assert TimeBudget(2.0).capped(30.0) == 30.0
    assert TimeBudget(2.0).capped(500.0) == 60.0
    assert TimeBudget(None).capped(500.0) == 500.0


def test_resuming_a_finished_run_does_not_call_its_validated_model_unvalidated(interrupted_run, tiny_corpus,
                                                                                tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(interrupted_run, out)
    first = train(tiny_corpus.config(out, "train.max_steps=6", "train.valid_every=3"), resume=True,
                  log=lambda m: None, quiet=True)
    assert first.steps == 6 and first.unvalidated is None  # step 6 ends at max_steps: validated
    again = train(tiny_corpus.config(out, "train.max_steps=6", "train.valid_every=3"), resume=True,
                  log=lambda m: None, quiet=True)
    assert again.steps == 6 and again.unvalidated is None
