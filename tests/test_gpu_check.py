"""``make gpu-check`` (bench/gpu_check.py) as far as a machine without a GPU can check it: the
no-GPU answer, the arithmetic and verdicts behind its rows, a failing check's row; and the GPU
settings of translation that load_model makes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import gpu_check
from bench.gpu_check import (Check, Row, compare_losses, judge_training, one_line, peak_bf16_flops, render_table,
                             run_check_in_child, run_child, speed_summary, transformer_training_flops)

ROOT = Path(__file__).resolve().parents[1]


def test_without_a_gpu_it_says_so_in_one_line_and_exits_0():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-m", "bench.gpu_check"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1 and "no CUDA device visible" in done.stdout


# ----------------------------------------------------------------------------- the rows' arithmetic


def test_training_flops_of_one_tiny_pair_by_hand():
    # d 2, FFN 4, one layer each side, vocabulary 10; 3 source and 2 target positions. Forward:
    # encoder 2*3*(16 + 16) + 4*9*2 = 264; decoder 2*2*(16 + 8 + 16) + 2*3*8 + 4*4*2 + 4*2*3*2 = 288;
    # vocabulary 2*2*2*10 = 80. Training: 3 x (264 + 288 + 80).
    assert transformer_training_flops(2, 4, 1, 1, 10, [3], [2]) == 3 * 632
    # Pairs add up; layers multiply their part only.
    two = transformer_training_flops(2, 4, 1, 1, 10, [3, 5], [2, 4])
    assert two == transformer_training_flops(2, 4, 1, 1, 10, [3], [2]) + transformer_training_flops(2, 4, 1, 1, 10, [5], [4])
    assert transformer_training_flops(2, 4, 2, 2, 10, [3], [2]) == 3 * (2 * 264 + 2 * 288 + 80)


def test_the_peak_comes_from_the_device_name():
    assert peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12  # SXM
    assert peak_bf16_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_bf16_flops("NVIDIA H200") == 989e12
    assert peak_bf16_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_bf16_flops("Some Future GPU") is None


def test_mfu_is_model_flops_per_second_over_the_peak():
    status, text = speed_summary(target_tokens=1000, flops=989e12, seconds=2.0, device_name="NVIDIA H100 80GB HBM3")
    assert status == "ok"
    assert text == "500 tgt tok/s, 494.5 model TFLOP/s, MFU 50.0% of 989 TFLOP/s"
    assert "MFU n/a (no peak known for Mystery)" in speed_summary(1000, 1e12, 1.0, "Mystery")[1]


def records(losses: list[float], skipped: int = 0, every: int = 10) -> list[dict]:
    return [{"step": every * (i + 1), "loss": loss, "skipped_steps": skipped, "tokens_per_s": 1000.0 + i}
            for i, loss in enumerate(losses)] + [{"step": every * len(losses), "valid_loss": 3.0, "valid_bleu": 1.0}]


def test_a_training_row_wants_a_falling_loss_all_updates_and_no_bf16_skips():
    assert judge_training(records([7.0, 6.0, 5.5]), "bf16", 30)[0] == "ok"
    assert judge_training(records([7.0, 6.0, 7.5]), "bf16", 30)[0] == "FAIL"
    status, text = judge_training(records([7.0, 6.0, 5.5], skipped=1), "bf16", 30)
    assert status == "FAIL" and text.startswith("updates skipped in bf16")
    assert judge_training(records([7.0, 6.0, 5.5], skipped=3), "fp16", 30)[0] == "ok"  # 10%: the scaler's
    assert judge_training(records([7.0, 6.0, 5.5], skipped=4), "fp16", 30)[0] == "FAIL"
    status, text = judge_training(records([7.0, 6.0]), "bf16", 30)
    assert status == "FAIL" and "stopped at update 20 of 30" in text
    assert judge_training([], "bf16", 30) == ("FAIL", "no training records in metrics.jsonl")


def test_resumed_losses_must_match_bit_for_bit():
    full = records([7.0, 6.0, 5.5])
    assert compare_losses(full, records([7.0, 6.0, 5.5])) == (True, "all 3 update losses bit-identical")
    same, text = compare_losses(full, records([7.0, 6.0, 5.5 + 1e-12]))
    assert not same and "1 of 3 update losses differ, the first at update 30" in text
    assert not compare_losses(full, records([7.0, 6.0]))[0]


def test_the_table_aligns_its_columns_and_keeps_each_row_on_one_line():
    table = render_table([Row("train T bf16", "ok", "loss 7.0 -> 5.5"),
                          Row("torchrun", "FAIL", "exit 1:\nNCCL error")])
    lines = table.splitlines()
    assert lines[0].split() == ["check", "status", "result"] and set(lines[1]) == {"-"}
    assert lines[2] == "train T bf16  ok      loss 7.0 -> 5.5"
    assert lines[3] == "torchrun      FAIL    exit 1: NCCL error"


# ----------------------------------------------------------------------------- a failing check


def test_a_check_that_raises_gives_a_fail_row_with_its_reason(monkeypatch, capsys):
    def broken(workdir: Path) -> list[Row]:
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore detail")

    monkeypatch.setattr(gpu_check, "CHECKS", (Check("broken", 10, broken),))
    assert run_child("broken", Path("unused")) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith(gpu_check.ROWS_MARK)
    assert '"status": "FAIL"' in last and "RuntimeError: CUDA error: an illegal memory access" in last
    assert "more detail" not in last


def test_a_check_process_that_dies_or_hangs_gives_a_fail_row(tmp_path):
    (tmp_path / "logs").mkdir()
    (row,) = run_check_in_child(Check("no-such-check", 60, lambda workdir: []), tmp_path, seconds=60)
    assert row.status == "FAIL" and row.result.startswith("exit 1: StopIteration")
    (row,) = run_check_in_child(Check("speed", 60, lambda workdir: []), tmp_path, seconds=0.2)
    assert row.status == "FAIL" and row.result.startswith("timed out after 0 s")


def test_with_a_gpu_every_check_gets_a_row_and_a_failure_fails_the_command(monkeypatch, capsys, tmp_path):
    # What a machine with a GPU answers, and checks that report without running anything.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(gpu_check, "CHECKS", tuple(Check(name, 60, lambda workdir: []) for name in ("good", "bad", "late")))

    def run_check(check: Check, workdir: Path, seconds: float) -> list[Row]:
        if check.name == "bad":
            monkeypatch.setattr(gpu_check, "TOTAL_SECONDS", 0)  # it took all the time there was
            return [Row("bad", "FAIL", "exit 1: boom")]
        return [Row(check.name, "ok", "fine")]

    monkeypatch.setattr(gpu_check, "run_check_in_child", run_check)
    monkeypatch.setattr(sys, "argv", ["gpu_check", "--workdir", str(tmp_path / "work")])
    assert gpu_check.main() == 1
    table = capsys.readouterr().out
    assert "NVIDIA H100 80GB HBM3 x1" in table
    assert [line.split()[:2] for line in table.splitlines() if line.split()[:1] in (["good"], ["bad"], ["late"])] == [
        ["good", "ok"], ["bad", "FAIL"], ["late", "SKIP"]]
    assert table.rstrip().endswith("1 of 3 rows FAIL, 1 SKIP")


def test_one_line_keeps_the_type_and_the_first_line():
    assert one_line(ValueError("bad value\nsecond line")) == "ValueError: bad value"
    assert one_line(gpu_check.CheckFailed("no update 40 within 120 s")) == "no update 40 within 120 s"
    assert one_line(KeyError()) == "KeyError"


# ----------------------------------------------------------------------------- translation on a GPU


@pytest.fixture(scope="module")
def one_step_checkpoint(tiny_corpus, tmp_path_factory) -> Path:
    from seq2seq.training.run import train

    out = tmp_path_factory.mktemp("one_step")
    train(tiny_corpus.config(out, "train.max_steps=1", "train.valid_every=100"), log=lambda m: None, quiet=True)
    return out


def test_loading_a_model_for_a_gpu_turns_on_tf32_as_training_does(one_step_checkpoint, monkeypatch):
    import seq2seq.decoding.loading as loading

    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = matmul.allow_tf32, cudnn.allow_tf32  # (process-wide switches: restored below)
    try:
        matmul.allow_tf32 = cudnn.allow_tf32 = False
        loading.load_model(one_step_checkpoint, "cpu")
        assert not matmul.allow_tf32 and not cudnn.allow_tf32

        # As on a machine with a GPU (the model stays on the CPU: moving it is all that would differ).
        monkeypatch.setattr(loading, "decoding_device", lambda name: torch.device("cuda", 0))
        monkeypatch.setattr(torch.nn.Module, "to", lambda self, *args, **kwargs: self)
        loading.load_model(one_step_checkpoint, "cuda")
        assert matmul.allow_tf32 and cudnn.allow_tf32
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = before
