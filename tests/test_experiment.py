"""``attn experiment`` bookkeeping: which points count as finished, and what an interrupted
point leaves (a re-run must resume it, not skip it with a half-trained score)."""

from __future__ import annotations

from pathlib import Path

import pytest

from seq2seq.config import dump_config
from seq2seq.experiment import REPORT, load_sweep, run_sweep
from seq2seq.training.trainer import CONFIG_FILE, TrainSummary


def write_sweep(tmp_path: Path, tiny_corpus, max_steps: int) -> Path:
    base = tmp_path / "base.yaml"
    base.write_text("{}\n")  # everything comes from the sweep's `set`
    lines = [f"base: {base}", f"output_dir: {tmp_path / 'sweep'}", "set:"]
    lines += [f"  {override.replace('=', ': ', 1)}" for override in tiny_corpus.overrides]
    lines += [f"  train.max_steps: {max_steps}", "grid:", "  model.attention: [dot]"]
    path = tmp_path / "sweep.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def pretend_finished(point) -> None:
    """What a finished point leaves behind: its config and its test report."""
    point.output_dir.mkdir(parents=True, exist_ok=True)
    (point.output_dir / CONFIG_FILE).write_text(dump_config(point.config), encoding="utf-8")
    (point.output_dir / REPORT).parent.mkdir(exist_ok=True)
    (point.output_dir / REPORT).write_text("{}")


def test_a_point_is_finished_only_with_the_config_it_has_now(tmp_path, tiny_corpus):
    (point,) = load_sweep(write_sweep(tmp_path, tiny_corpus, max_steps=3)).points
    assert not point.finished
    pretend_finished(point)
    assert point.finished
    (changed,) = load_sweep(write_sweep(tmp_path, tiny_corpus, max_steps=4)).points
    assert changed.output_dir == point.output_dir and not changed.finished


def test_an_interrupted_point_is_not_scored(tmp_path, tiny_corpus, monkeypatch):
    import seq2seq.evaluation.evaluate as evaluate
    import seq2seq.training.trainer as trainer

    sweep = load_sweep(write_sweep(tmp_path, tiny_corpus, max_steps=3))
    interrupted = TrainSummary(sweep.points[0].output_dir, 2, 0, None, "bleu", "interrupted at step 2",
                               interrupted=True)
    monkeypatch.setattr(trainer, "train", lambda *args, **kwargs: interrupted)
    monkeypatch.setattr(evaluate, "translate_and_score",
                        lambda *args, **kwargs: pytest.fail("an interrupted point was evaluated"))
    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep, log=lambda message: None)
    assert not (sweep.points[0].output_dir / REPORT).exists()
