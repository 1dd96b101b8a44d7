"""``attn experiment --launcher ray``: points as Ray tasks on a local instance, a failing point
failing alone, finished points skipped, and the leaderboard a local run would write."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

from seq2seq.errors import UserError
from seq2seq.experiment import load_sweep, run_sweep
from tests.test_experiment import write_sweep


def sweep_file(tmp_path: Path, tiny_corpus, points: str, resources: str = "resources: {cpus: 1}\n") -> Path:
    path = write_sweep(tmp_path, tiny_corpus, max_steps=2)
    path.write_text(path.read_text().replace("grid:\n  model.attention: [dot]\n", "") + resources + points)
    return path


def scores(board: Path) -> dict[str, tuple[str, str]]:
    with open(board.with_suffix(".csv"), encoding="utf-8") as f:
        return {row["point"]: (row["test_bleu"], row["test_chrf"]) for row in csv.DictReader(f)}


def test_without_ray_the_launcher_names_the_install_command(tmp_path, tiny_corpus, monkeypatch):
    from seq2seq.ray_launcher import run_sweep_on_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails
    sweep = load_sweep(sweep_file(tmp_path, tiny_corpus, "points:\n  - {model.attention: dot}\n"))
    with pytest.raises(UserError, match=r"--launcher ray: Ray is not installed; pip install 'attn\[ray\]'"):
        run_sweep_on_ray(sweep, log=lambda m: None)


@pytest.mark.parametrize("resources, message", [
    ("resources: {cpu: 1}\n", "resources.cpu: unknown"),
    ("resources: {cpus: -1}\n", "resources.cpus: -1 must be a number >= 0"),
    ("resources: {cpus: 0, gpus: 0}\n", "a point needs some cpus or gpus"),
    ("resources: 2\n", "'resources' must be a mapping"),
])
def test_bad_resources_are_refused_by_key(tmp_path, tiny_corpus, resources, message):
    with pytest.raises(UserError, match=message):
        load_sweep(sweep_file(tmp_path, tiny_corpus, "points:\n  - {model.attention: dot}\n", resources))


def test_points_run_as_ray_tasks_and_a_failing_one_fails_alone(tmp_path, tiny_corpus, monkeypatch):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'attn[ray]')")
    from seq2seq.ray_launcher import run_sweep_on_ray

    monkeypatch.chdir(tmp_path)
    points = ("points:\n  - {model.attention: dot}\n"
              f"  - {{model.attention: general, data.train: {tmp_path / 'missing' / 'train'}}}\n")
    (tmp_path / "local").mkdir()
    alone = sweep_file(tmp_path / "local", tiny_corpus, "points:\n  - {model.attention: dot}\n")
    local = run_sweep(load_sweep(alone), log=lambda m: None)
    sweep = load_sweep(sweep_file(tmp_path, tiny_corpus, points))
    messages: list[str] = []
    with pytest.raises(UserError, match=r"1 of 2 points failed \(attention-general_train"):
        run_sweep_on_ray(sweep, log=messages.append)
    assert not ray.is_initialized()  # the local instance is shut down
    assert any("attention-general_train" in m and "error:" in m and "not found" in m for m in messages), messages
    board = sweep.output_dir / "leaderboard.md"
    assert scores(board) == {"attention-dot": scores(local)["attention-dot"]}  # as a local run scores it
    messages.clear()
    with pytest.raises(UserError, match="1 of 2 points failed"):
        run_sweep_on_ray(load_sweep(sweep.path), log=messages.append)
    assert any("attention-dot: finished earlier, skipped" in m for m in messages)


def test_a_shared_data_folder_is_tokenized_once_before_the_tasks_start(tmp_path, tiny_corpus, monkeypatch):
    import seq2seq.data.prepare as prepare
    from seq2seq.ray_launcher import prepare_shared_data

    built = []
    monkeypatch.setattr(prepare, "prepare_data", lambda cfg, log: built.append(cfg.data.prepared_dir))
    sweep = load_sweep(sweep_file(tmp_path, tiny_corpus, "points:\n  - {model.attention: dot}\n"
                                                        "  - {model.attention: general}\n"))
    prepare_shared_data(sweep.points, log=lambda m: None)
    assert built == [sweep.points[0].config.data.prepared_dir]  # two points, one shared folder, built once


@pytest.mark.parametrize("configured, cpus, threads", [("2", 1, 1), ("null", 2, 2), ("1", 4, 1)])
def test_a_task_runs_no_more_threads_than_the_cpus_ray_gave_it(tmp_path, tiny_corpus, monkeypatch, configured,
                                                              cpus, threads):
    """Two points of one CPU each, both at the demo's 2 threads, would oversubscribe 2 cores."""
    import seq2seq.ray_launcher as launcher

    ran = []
    monkeypatch.chdir(tmp_path)  # the task moves to the driver's folder
    monkeypatch.setattr(launcher, "run_point", lambda point, header, log: ran.append(point.config.train.threads))
    (point,) = load_sweep(sweep_file(tmp_path, tiny_corpus, f"points:\n  - {{train.threads: {configured}}}\n")).points
    launcher.run_point_task(point, "point", str(tmp_path), cpus)
    assert ran == [threads]
