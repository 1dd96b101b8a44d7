"""Faults: runs killed at random moments (also mid-checkpoint), Ctrl-C, a full disk.

The kill tests start ``attn train`` as a subprocess. ``ATTN_TEST_SLOW_SAVE`` (a test hook in
``checkpoint.save_atomic``) pauses between writing a checkpoint's temporary file and renaming
it, so that a kill can be aimed at a checkpoint write.
"""

from __future__ import annotations

import errno
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from seq2seq.errors import UserError
from seq2seq import checkpoint as ckpt
from seq2seq import run_folder
from seq2seq.run_folder import read_metrics
from seq2seq.training.run import train
from tests.helpers_cli import SAMPLE, tiny_run

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def attn_train(tiny_corpus, out: Path, *overrides: str, flags=(), env=None, **popen) -> subprocess.Popen:
    config = out.parent / "empty.yaml"
    config.write_text("# everything comes from --set\n")
    args = [sys.executable, "-m", "cli.main", "train", str(config),
            *tiny_corpus.cli_args(out, "train.threads=1", *overrides), *flags]
    return subprocess.Popen(args, cwd=ROOT, env={**os.environ, **(env or {})}, **popen)


def temp_files(out: Path, pid: int | None = None) -> list[Path]:
    """Checkpoint writes not (yet) renamed into place: all, or those of process ``pid``."""
    folder = run_folder.checkpoint_dir(out)
    pattern = f".*.pt.tmp{pid}" if pid else ".*.tmp*"
    return sorted(folder.glob(pattern)) if folder.is_dir() else []


def assert_every_checkpoint_loads(out: Path) -> list[int]:
    folder = run_folder.checkpoint_dir(out)
    paths = run_folder.step_checkpoints(out) + ([folder / run_folder.BEST_NAME] if (folder / run_folder.BEST_NAME).exists() else [])
    steps = []
    for path in paths:
        payload = ckpt.load_checkpoint(path)  # raises on a truncated or corrupt file
        steps.append(payload["run_state"]["step"])
    return steps


def wait_for_temp_checkpoint(proc: subprocess.Popen, out: Path, timeout: float = 60.0) -> bool:
    """Until ``proc`` is writing a checkpoint."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if temp_files(out, proc.pid):
            return True
        time.sleep(0.005)
    return False


def wait_for_training(proc: subprocess.Popen) -> bool:
    """Until ``proc`` logs its first training step (it is training, not starting up)."""
    return any(re.match(r"step +\d+/", line) for line in proc.stderr)


@pytest.mark.slow
def test_runs_killed_at_random_moments_resume_and_finish(tiny_corpus, tmp_path):
    rng = random.Random(1234)
    out = tmp_path / "run"
    # max_steps is out of reach until the last run, which sets it a few steps past the newest
    # checkpoint: however fast the machine, no run finishes before its kill.
    run = ("train.save_every=2", "train.valid_every=100", "train.log_every=1", "train.keep_last=3",
           "train.valid_max_sentences=5")
    slow_save = {"ATTN_TEST_SLOW_SAVE": "0.1"}
    killed_in_write = 0
    # SIGKILL at a random moment once training runs, or while a checkpoint is being written.
    for kind in ("random", "in_write", "random", "in_write", "random"):
        resumable = run_folder.step_checkpoints(out)
        flags = ["--resume" if resumable else "--overwrite"]
        proc = attn_train(tiny_corpus, out, *run, "train.max_steps=100000", flags=flags, env=slow_save,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            if kind == "in_write":
                assert wait_for_temp_checkpoint(proc, out), "the run ended without writing a checkpoint"
            else:
                assert wait_for_training(proc), "the run ended before training"
                time.sleep(rng.uniform(0.2, 2.0))
            writing = bool(temp_files(out, proc.pid))
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
        killed_in_write += writing and bool(temp_files(out, proc.pid))  # that write never got renamed
        assert_every_checkpoint_loads(out)
        read_metrics(out / "metrics.jsonl")
    assert killed_in_write >= 2

    newest = assert_every_checkpoint_loads(out)
    assert newest, "no checkpoint survived the kills"
    max_steps = max(newest) + 4
    proc = attn_train(tiny_corpus, out, *run, f"train.max_steps={max_steps}", flags=["--quiet", "--resume"],
                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr
    assert f"done: {max_steps} steps" in stderr
    assert max(assert_every_checkpoint_loads(out)) == max_steps
    assert ckpt.load_checkpoint(run_folder.step_checkpoint_path(out, max_steps))["run_state"]["step"] == max_steps
    assert temp_files(out) == []
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert steps == list(range(1, max_steps + 1))


@pytest.mark.slow
@pytest.mark.parametrize("signals", [[signal.SIGINT], [signal.SIGTERM, signal.SIGTERM], [signal.SIGINT, signal.SIGINT]],
                         ids=["ctrl-c", "sigterm-twice", "ctrl-c-twice-at-once"])
def test_ctrl_c_stops_cleanly_after_writing_a_checkpoint(tiny_corpus, tmp_path, signals):
    """A signal sent to a whole torchrun job reaches each worker twice at once (from the job
    and forwarded by torchrun): that is one request to stop, not the second Ctrl-C that aborts."""
    out = tmp_path / "run"
    proc = attn_train(tiny_corpus, out, "train.max_steps=100000", "train.log_every=1", "train.valid_every=100000",
                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if re.match(r"step +3/", line):
                break
        for sig in signals:
            proc.send_signal(sig)
            time.sleep(0.05)  # (two signals at the same instant would reach Python's handler as one)
        _, rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, rest  # so that `attn train ... && attn evaluate ...` stops
    step = int(re.search(r"interrupted at step (\d+)", rest).group(1))
    assert 3 <= step < 100000
    assert ckpt.load_checkpoint(run_folder.step_checkpoint_path(out, step))["run_state"]["step"] == step
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r][-1] == step
    last_line = rest.strip().splitlines()[-1]  # never validated: how to score it
    assert last_line.startswith("note: the final model was never validated")
    assert f"attn evaluate --checkpoint {run_folder.step_checkpoint_path(out, step)} --src " in last_line


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_during_translate_keeps_the_previous_output(tmp_path, tmp_path_factory, workers):
    """`timeout` or a cancelled CI job sends SIGTERM: it must leave what Ctrl-C leaves."""
    shared = tmp_path_factory.getbasetemp() / "attn-shared"
    shared.mkdir(exist_ok=True)
    run = tiny_run(shared)
    lines = (SAMPLE / "test.es").read_text(encoding="utf-8").splitlines()
    (tmp_path / "big.es").write_text("\n".join(lines * 40) + "\n", encoding="utf-8")
    (tmp_path / "out.txt").write_text("previous\n")
    args = [sys.executable, "-m", "cli.main", "translate", "-c", str(run), "-i", "big.es", "-o", "out.txt",
            "--beam", "5", "--workers", str(workers)]
    proc = subprocess.Popen(args, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(".out.txt.tmp*")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.5)  # translating now
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, f"exit {proc.returncode} (did it finish before the signal?)\n{stderr}"
    assert "Traceback" not in stderr and stderr.strip().endswith("interrupted"), stderr
    assert (tmp_path / "out.txt").read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.es", "out.txt"]


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(tiny_corpus, tmp_path, monkeypatch):
    out = tmp_path / "run"
    run = ("train.save_every=2", "train.valid_every=100", "train.log_every=1")
    train(tiny_corpus.config(out, *run, "train.max_steps=2"), log=lambda m: None, quiet=True)
    previous = run_folder.step_checkpoint_path(out, 2)
    previous_bytes = previous.read_bytes()

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"the first bytes of a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(UserError, match="disk space") as error:
        train(tiny_corpus.config(out, *run, "train.max_steps=4"), resume=True, log=lambda m: None, quiet=True)
    assert os.strerror(errno.ENOSPC) in str(error.value) and "step_00000004.pt" in str(error.value)
    assert previous.read_bytes() == previous_bytes
    assert ckpt.load_checkpoint(previous)["run_state"]["step"] == 2
    assert run_folder.step_checkpoints(out) == [previous]
    assert temp_files(out) == []


def test_a_validation_that_fails_leaves_a_checkpoint_of_its_step(tiny_corpus, tmp_path, monkeypatch):
    """Validation runs before the step's checkpoint is written: whatever breaks it (a kernel
    the CPU lacks, a full disk for the plot), the updates since the last checkpoint survive."""
    import seq2seq.training.validation as validation

    def broken(*args, **kwargs):
        raise RuntimeError("a bf16 op this CPU cannot run")

    monkeypatch.setattr(validation, "validate", broken)
    out = tmp_path / "run"
    messages = []
    with pytest.raises(RuntimeError, match="this CPU cannot run"):
        train(tiny_corpus.config(out, "train.max_steps=6", "train.valid_every=3", "train.log_every=1"),
              log=messages.append, quiet=True)
    saved = ckpt.load_checkpoint(run_folder.step_checkpoint_path(out, 3))
    assert saved["run_state"]["step"] == 3 and "optimizer" in saved
    assert any("validation at step 3 failed" in m and "step_00000003.pt" in m for m in messages)
    monkeypatch.undo()
    resumed = train(tiny_corpus.config(out, "train.max_steps=6", "train.valid_every=100"), resume=True,
                    log=lambda m: None, quiet=True)
    assert resumed.steps == 6


def test_records_that_fail_after_a_validation_leave_a_checkpoint_of_its_step(tiny_corpus, tmp_path, monkeypatch):
    """The learning curve drawn after a validation (a full disk, a broken font cache) fails
    before the step's checkpoint is written: that checkpoint is written first."""
    import seq2seq.training.records as records

    def broken(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(records.MetricsLog, "plot", broken)
    out = tmp_path / "run"
    with pytest.raises(OSError):
        train(tiny_corpus.config(out, "train.max_steps=6", "train.valid_every=3"), log=lambda m: None, quiet=True)
    assert ckpt.load_checkpoint(run_folder.step_checkpoint_path(out, 3))["run_state"]["step"] == 3
