"""Translation behaviour: exact answers on a learnable task, and streaming through a pipe."""

from __future__ import annotations

import os
import select
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seq2seq.config import ModelConfig
from seq2seq.data.special import EOS_ID, PAD_ID
from seq2seq.decoding.search import beam_search
from seq2seq.models.builder import build_model
from tests.synthetic import make_reverse_batch, train_tiny

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_copy_task_model_translates_exactly_with_beam_5(one_torch_thread):
    torch.manual_seed(0)
    vocab = 12
    model = build_model(ModelConfig(arch="gru", attention="additive", decoder_style="bahdanau", embed_dim=16,
                                    hidden_dim=32, encoder_layers=1, decoder_layers=1, dropout=0.0), vocab, vocab)
    train_tiny(model, steps=400, vocab=vocab, lr=1e-2)
    model.eval()
    src, _, tgt_out = make_reverse_batch(30, vocab, 3, 8, torch.Generator().manual_seed(123))
    hypotheses = beam_search(model, src, beam_size=5, length_penalty=1.0, max_len_a=1.0, max_len_b=2)
    for row, best in zip(tgt_out, hypotheses):
        expected = [t for t in row.tolist() if t not in (PAD_ID, EOS_ID)]
        assert best[0].tokens == expected


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_corpus, tmp_path_factory) -> Path:
    from seq2seq.training.run import train

    run = tmp_path_factory.mktemp("translate") / "run"
    train(tiny_corpus.config(run, "train.max_steps=2", "train.valid_every=2"), quiet=True, log=lambda m: None)
    return run


def read_line(stream, timeout: float) -> str:
    """One line from a pipe, or fail if none arrives in time (the translator held it back)."""
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, "no answer arrived: the line was not translated until more input came"
    return stream.readline()


@pytest.mark.slow
def test_lines_from_a_pipe_are_answered_one_at_a_time(tiny_checkpoint: Path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "translate", "-c", str(tiny_checkpoint), "--beam", "1",
         "--max-len-a", "0", "--max-len-b", "3"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
    )
    try:
        answers = []
        for line in ("Y dijo Dios.", "", "Sea la luz."):
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
            # The pipe stays open: the answer must come before any further input.
            answers.append(read_line(proc.stdout, timeout=120))
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
        assert answers[1] == "\n"  # an empty line gives an empty line
        assert all(a.endswith("\n") for a in answers)
        assert proc.stdout.read() == ""  # exactly one output line per input line
    finally:
        if proc.poll() is None:
            proc.kill()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream and not stream.closed:
                stream.close()


@pytest.mark.slow
def test_head_closing_the_pipe_early_is_not_an_error(tiny_checkpoint: Path, tmp_path: Path):
    lines = tmp_path / "many.es"
    lines.write_text("Y dijo Dios.\n" * 300, encoding="utf-8")
    result = subprocess.run(
        f"{sys.executable} -m cli.main translate -c {tiny_checkpoint} --beam 1 --max-len-b 3 --max-len-a 0 "
        f"< {lines} | head -n 2",
        shell=True, cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode == 0
    assert len(result.stdout.splitlines()) == 2
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_translate_in_bf16_scores_like_fp32(tiny_checkpoint: Path, tmp_path: Path):
    # --precision bf16 decodes with a bf16 copy of the weights; the scores it prints are still
    # the model's log-probs, so they stay close to the fp32 decoding's.
    source = tmp_path / "in.es"
    source.write_text("Y dijo Dios.\nSea la luz.\nEn el principio.\n", encoding="utf-8")
    outputs = {}
    for precision in ("fp32", "bf16"):
        result = subprocess.run(
            [sys.executable, "-m", "cli.main", "translate", "-c", str(tiny_checkpoint), "--beam", "2",
             "--max-len-a", "0", "--max-len-b", "4", "--scores", "--precision", precision, "-i", str(source)],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
        )
        assert result.returncode == 0, result.stderr
        outputs[precision] = [float(line.split("\t")[0]) for line in result.stdout.splitlines()]
    assert len(outputs["bf16"]) == 3
    assert outputs["bf16"] == pytest.approx(outputs["fp32"], abs=0.5)


def test_translate_with_two_workers_writes_what_one_process_writes(tiny_checkpoint: Path, tmp_path: Path):
    source = tmp_path / "in.es"
    source.write_text("Y dijo Dios.\nSea la luz.\n\nEn el principio.\nY fue la tarde.\n", encoding="utf-8")
    outputs = {}
    for workers in ("1", "2"):
        target = tmp_path / f"out{workers}.en"
        result = subprocess.run(
            [sys.executable, "-m", "cli.main", "translate", "-c", str(tiny_checkpoint), "--beam", "2",
             "--batch-size", "2", "--max-len-a", "0", "--max-len-b", "4", "--scores", "--workers", workers,
             "-i", str(source), "-o", str(target)],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
        )
        assert result.returncode == 0, result.stderr
        outputs[workers] = target.read_text(encoding="utf-8").splitlines()
    assert len(outputs["2"]) == 5 and outputs["2"][2] == "0.0000\t"  # the empty line stays empty
    assert outputs["2"] == outputs["1"]


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_that_emulates_it_is_warned_about(monkeypatch, native):
    from seq2seq.decoding.settings import TranslateSettings
    from seq2seq.decoding.translator import Translator

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    model = build_model(ModelConfig(arch="gru", hidden_dim=8, embed_dim=8, encoder_layers=1, decoder_layers=1), 10, 10)
    warnings = []
    Translator(model, lambda lines: [[4]] * len(lines), str, TranslateSettings(precision="bf16"), warn=warnings.append)
    assert bool(warnings) != native
    assert all("--precision bf16" in w and "use fp32" in w for w in warnings)
    from seq2seq.kernels import check_bf16

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert check_bf16(torch.device("cuda"), "train.precision") is None  # Hopper multiplies bf16 natively
