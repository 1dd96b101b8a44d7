"""``attn experiment`` bookkeeping: which points count as finished, and what an interrupted
point leaves (a re-run must resume it, not skip it with a half-trained score)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from seq2seq.config import dump_config
from seq2seq.experiment import REPORT, load_sweep, run_sweep
from seq2seq.run_folder import CONFIG_FILE
from seq2seq.training.run_state import TrainSummary


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


def test_a_point_trained_with_other_threads_is_still_finished(tmp_path, tiny_corpus):
    """A Ray task lowers train.threads to its CPUs: a local re-run must not train the point again."""
    (point,) = load_sweep(write_sweep(tmp_path, tiny_corpus, max_steps=3)).points
    pretend_finished(dataclasses.replace(point, config=dataclasses.replace(
        point.config, train=dataclasses.replace(point.config.train, threads=7))))
    assert point.finished


def test_an_interrupted_point_is_not_scored(tmp_path, tiny_corpus, monkeypatch):
    import seq2seq.evaluation.evaluate as evaluate
    import seq2seq.training.run as trainer

    sweep = load_sweep(write_sweep(tmp_path, tiny_corpus, max_steps=3))
    interrupted = TrainSummary(sweep.points[0].output_dir, 2, 0, None, "bleu", "interrupted at step 2",
                               interrupted=True)
    monkeypatch.setattr(trainer, "train", lambda *args, **kwargs: interrupted)
    monkeypatch.setattr(evaluate, "translate_and_score",
                        lambda *args, **kwargs: pytest.fail("an interrupted point was evaluated"))
    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep, log=lambda message: None)
    assert not (sweep.points[0].output_dir / REPORT).exists()


def finished_summary(point) -> TrainSummary:
    return TrainSummary(point.output_dir, 3, 3, 1.0, "bleu", "reached train.max_steps")


def test_a_changed_point_loses_its_old_report_before_it_trains(tmp_path, tiny_corpus, monkeypatch):
    """Otherwise a changed point interrupted mid-training (its new config.yaml already written)
    counted as finished on the next run, with the old config's score."""
    import seq2seq.training.run as trainer

    (point,) = load_sweep(write_sweep(tmp_path, tiny_corpus, max_steps=3)).points
    pretend_finished(point)
    changed = load_sweep(write_sweep(tmp_path, tiny_corpus, max_steps=4))
    interrupted = TrainSummary(point.output_dir, 3, 0, None, "bleu", "interrupted", interrupted=True)
    monkeypatch.setattr(trainer, "train", lambda *args, **kwargs: interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(changed, log=lambda message: None)
    assert not (point.output_dir / REPORT).exists()


def test_points_are_scored_with_their_own_decode_settings(tmp_path, tiny_corpus, monkeypatch):
    """A sweep over decode.* settings must decode with them, not with the checkpoint's."""
    import seq2seq.evaluation.evaluate as evaluate
    import seq2seq.experiment as experiment
    import seq2seq.training.run as trainer

    path = write_sweep(tmp_path, tiny_corpus, max_steps=3)
    path.write_text(path.read_text().replace("model.attention: [dot]", "decode.beam_size: [2, 3]"))
    sweep = load_sweep(path)
    decoded = []

    def translate_and_score(*args, decode, **kwargs):
        decoded.append(decode.beam_size)
        return {"bleu": 1, "chrf": 1}, None

    monkeypatch.setattr(trainer, "train", lambda cfg, **kwargs: finished_summary(sweep.points[0]))
    monkeypatch.setattr(evaluate, "translate_and_score", translate_and_score)
    monkeypatch.setattr(experiment, "write_leaderboard", lambda sweep: tmp_path / "leaderboard.md")
    run_sweep(sweep, log=lambda message: None)
    assert decoded == [2, 3]


@pytest.mark.parametrize("train_device, gpu_visible, scored_on", [
    ("auto", True, "cuda:0"), ("auto", False, "cpu"), ("cuda", True, "cuda:0"), ("cpu", True, "cpu"),
])
def test_points_are_scored_on_the_device_they_trained_on(tmp_path, tiny_corpus, monkeypatch, train_device,
                                                         gpu_visible, scored_on):
    import torch

    import seq2seq.evaluation.evaluate as evaluate
    import seq2seq.experiment as experiment
    import seq2seq.training.run as trainer

    path = write_sweep(tmp_path, tiny_corpus, max_steps=3)
    path.write_text(path.read_text().replace("train.device: cpu", f"train.device: {train_device}"))
    sweep = load_sweep(path)
    devices = []

    def translate_and_score(*args, device="cpu", **kwargs):
        devices.append(device)
        return {"bleu": 1, "chrf": 1}, None

    # What a machine with one GPU answers (nothing here runs on it).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu_visible)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: int(gpu_visible))
    monkeypatch.setattr(trainer, "train", lambda cfg, **kwargs: finished_summary(sweep.points[0]))
    monkeypatch.setattr(evaluate, "translate_and_score", translate_and_score)
    monkeypatch.setattr(experiment, "write_leaderboard", lambda sweep: tmp_path / "leaderboard.md")
    run_sweep(sweep, log=lambda message: None)
    assert devices == [scored_on]


def test_a_failing_point_does_not_stop_the_others(tmp_path, tiny_corpus, monkeypatch):
    import seq2seq.evaluation.evaluate as evaluate
    import seq2seq.experiment as experiment
    import seq2seq.training.run as trainer
    from seq2seq.errors import UserError

    path = write_sweep(tmp_path, tiny_corpus, max_steps=3)
    path.write_text(path.read_text().replace("[dot]", "[dot, general]"))
    sweep = load_sweep(path)

    def train(cfg, **kwargs):
        if cfg.model.attention == "dot":
            raise UserError("data.train: corpus file not found")
        return finished_summary(sweep.points[1])

    evaluated, leaderboards, messages = [], [], []

    def translate_and_score(checkpoint, *args, **kwargs):
        evaluated.append(checkpoint)
        return {"bleu": 1, "chrf": 1}, None

    monkeypatch.setattr(trainer, "train", train)
    monkeypatch.setattr(evaluate, "translate_and_score", translate_and_score)
    monkeypatch.setattr(experiment, "write_leaderboard", lambda sweep: leaderboards.append(sweep) or tmp_path / "lb.md")
    with pytest.raises(UserError, match=r"1 of 2 points failed \(attention-dot"):
        run_sweep(sweep, log=messages.append)
    assert evaluated == [sweep.points[1].output_dir] and leaderboards == [sweep]
    assert any("attention-dot: error: data.train: corpus file not found" in m for m in messages)


def test_a_point_resumes_only_when_its_model_and_data_are_unchanged(tmp_path, tiny_corpus):
    from seq2seq.experiment import can_resume

    (point,) = load_sweep(write_sweep(tmp_path, tiny_corpus, max_steps=3)).points
    assert not can_resume(point)  # no checkpoints yet
    pretend_finished(point)
    (point.output_dir / "checkpoints").mkdir()
    (point.output_dir / "checkpoints" / "step_00000003.pt").write_bytes(b"")
    (longer,) = load_sweep(write_sweep(tmp_path, tiny_corpus, max_steps=6)).points
    assert can_resume(longer)
    bigger_path = write_sweep(tmp_path, tiny_corpus, max_steps=6)
    bigger_path.write_text(bigger_path.read_text() + "  model.hidden_dim: [48]\n")
    (bigger,) = load_sweep(bigger_path).points
    bigger.config.output_dir = str(point.output_dir)
    assert not can_resume(bigger)


def test_points_whose_short_names_collide_get_full_key_names_and_reordered_twins_are_refused(tmp_path, tiny_corpus):
    from seq2seq.errors import UserError

    path = write_sweep(tmp_path, tiny_corpus, max_steps=3)
    text = path.read_text().replace("grid:\n  model.attention: [dot]\n", "")
    path.write_text(text + "points:\n  - {train.precision: bf16}\n  - {decode.precision: bf16}\n")
    assert [p.name for p in load_sweep(path).points] == ["train.precision-bf16", "decode.precision-bf16"]
    path.write_text(text + "points:\n  - {model.arch: gru, model.attention: dot}\n"
                           "  - {model.attention: dot, model.arch: gru}\n")
    with pytest.raises(UserError, match="two points have the same overrides"):
        load_sweep(path)


# ----------------------------------------------------------------------------- shards


def sharded_sweep(tmp_path: Path, tiny_corpus, attentions: str, max_steps: int = 2) -> Path:
    """A sweep whose output folder is relative, as a repository's sweep file has it: each CI job
    (here: each working folder) gets its own."""
    path = write_sweep(tmp_path, tiny_corpus, max_steps)
    text = path.read_text().replace(f"output_dir: {tmp_path / 'sweep'}", "output_dir: sweep")
    path.write_text(text.replace("[dot]", attentions))
    return path


def test_shards_hold_every_point_once_whatever_has_finished(tmp_path, tiny_corpus, monkeypatch):
    from seq2seq.errors import UserError
    from seq2seq.sweep_shards import parse_shard, shard

    monkeypatch.chdir(tmp_path)
    sweep = load_sweep(sharded_sweep(tmp_path, tiny_corpus, "[dot, general, additive, scaled_dot, local_m]"))
    names = [[p.name for p in shard(sweep, i, 2).points] for i in (1, 2)]
    assert names == [["attention-dot", "attention-additive", "attention-local_m"],
                     ["attention-general", "attention-scaled_dot"]]
    pretend_finished(sweep.points[0])
    assert [[p.name for p in shard(load_sweep(sweep.path), i, 2).points] for i in (1, 2)] == names
    assert parse_shard(" 2 / 3") == (2, 3)
    for bad in ("0/2", "3/2", "1", "a/b"):
        with pytest.raises(UserError, match=f"--shard {bad}: write I/N"):
            parse_shard(bad)


def test_a_sweep_run_as_two_shards_and_merged_gives_the_whole_runs_leaderboard(tmp_path, tiny_corpus, monkeypatch):
    import csv

    from seq2seq.sweep_shards import merge_shards, shard

    path = sharded_sweep(tmp_path, tiny_corpus, "[dot, general, additive, scaled_dot]")
    boards = {}
    for job in ("whole", "shard1", "shard2"):
        (tmp_path / job).mkdir()
        monkeypatch.chdir(tmp_path / job)
        sweep = load_sweep(path)
        boards[job] = run_sweep(sweep if job == "whole" else shard(sweep, int(job[-1]), 2), log=lambda m: None).resolve()
    (tmp_path / "merge").mkdir()
    monkeypatch.chdir(tmp_path / "merge")
    merged = merge_shards(load_sweep(path), [tmp_path / "shard1" / "sweep", tmp_path / "shard2" / "sweep"],
                          log=lambda m: None)

    def scores(board: Path) -> list[dict]:
        # Speed, memory and wall time differ between runs; what the points learned must not.
        with open(board.with_suffix(".csv"), encoding="utf-8") as f:
            return [{k: row[k] for k in ("point", "model.attention", "test_bleu", "test_chrf", "parameters")}
                    for row in csv.DictReader(f)]

    whole = scores(boards["whole"])
    assert len(whole) == 4 and len(scores(boards["shard1"])) == 2
    # report.html: every point's translation of each of the first 3 test sentences, side by side
    report = (merged.parent / "report.html").read_text(encoding="utf-8")
    assert report.count('class="card"') == 4 * 3 and report.count("<polyline") == 4
    assert all(report.count(f"<h3>{row['point']}</h3>") == 3 for row in whole)
    assert sorted(whole, key=str) == sorted(scores(merged), key=str)
    assert [row["point"] for row in scores(merged)] == [row["point"] for row in whole]


def test_a_merge_refuses_another_sweeps_points_and_replaces_nothing(tmp_path, tiny_corpus, monkeypatch):
    from seq2seq.errors import UserError
    from seq2seq.sweep_shards import merge_shards

    (tmp_path / "shard").mkdir()
    monkeypatch.chdir(tmp_path / "shard")
    other = load_sweep(sharded_sweep(tmp_path, tiny_corpus, "[dot]", max_steps=3))
    pretend_finished(other.points[0])
    (tmp_path / "merge").mkdir()
    monkeypatch.chdir(tmp_path / "merge")
    sweep = load_sweep(sharded_sweep(tmp_path, tiny_corpus, "[dot]", max_steps=4))
    with pytest.raises(UserError, match=r"--merge .*shard/sweep/attention-dot: not a point of .*sweep.yaml as it is now"):
        merge_shards(sweep, [tmp_path / "shard" / "sweep"], log=lambda m: None)
    assert not (tmp_path / "merge" / "sweep").exists()
    with pytest.raises(UserError, match="--merge .*nowhere: not a folder"):
        merge_shards(sweep, [tmp_path / "nowhere"], log=lambda m: None)
