"""The four stages and a sweep through the real CLI, on a slice of the bundled corpus.

Small on purpose (a few hundred pairs, a 32-wide model, a few dozen steps) so CI stays fast;
it checks that the stages fit together and write what they promise, not translation quality.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from seq2seq.config.schema import RNN_ATTENTIONS, TRANSFORMER_ATTENTIONS
from seq2seq.models.hard_attention import HARD_MODES
from seq2seq.models.normalizers import NORMALIZERS

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "bible-en-es-sample"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.slow


# Tiny models run fastest on one thread, and two spinning OpenMP threads per process make
# them many times slower when anything else shares the cores.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def attn(*args: str, cwd: Path, input: str | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=cwd, input=input,
                            capture_output=True, text=True, timeout=600, env=ONE_THREAD)
    assert result.returncode == 0, f"attn {' '.join(args)} failed:\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A slice of the bundled corpus and a tiny config that points at it."""
    root = tmp_path_factory.mktemp("e2e")
    for split, lines in (("train", 600), ("valid", 40), ("test", 40)):
        for lang in ("es", "en"):
            text = (SAMPLE / f"{split}.{lang}").read_text(encoding="utf-8").splitlines()[:lines]
            (root / f"{split}.{lang}").write_text("\n".join(text) + "\n", encoding="utf-8")
    (root / "tiny.yaml").write_text(f"""
output_dir: {root}/run
data:
  train: {root}/train
  valid: {root}/valid
  test: {root}/test
  tokenizer: {{vocab_size: 400}}
model: {{arch: gru, attention: additive, embed_dim: 32, hidden_dim: 32, encoder_layers: 1, decoder_layers: 1}}
train: {{batch_tokens: 1500, max_steps: 30, log_every: 10, valid_every: 15, lr: 0.003, warmup_steps: 5}}
decode: {{beam_size: 3, max_len_a: 1.2, max_len_b: 5}}
""", encoding="utf-8")
    return root


def test_tokenize_train_translate_evaluate(workspace: Path):
    config = str(workspace / "tiny.yaml")
    run = workspace / "run"
    first = attn("tokenize", config, cwd=ROOT)
    assert "train" in first.stderr and "pairs" in first.stderr
    assert "up to date" in attn("tokenize", config, cwd=ROOT).stderr

    attn("train", config, cwd=ROOT)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_lines = [r for r in records if "loss" in r]
    valid_lines = [r for r in records if "valid_bleu" in r]
    assert [r["step"] for r in train_lines] == [10, 20, 30]
    assert [r["step"] for r in valid_lines] == [15, 30]
    assert train_lines[-1]["loss"] < train_lines[0]["loss"]
    assert (run / "learning_curve.png").read_bytes().startswith(PNG_MAGIC)
    assert (run / "checkpoints" / "best.pt").is_file()

    # translate: file to file with heatmaps and alignments
    hyp = workspace / "test.hyp"
    plots = workspace / "plots"
    attn("translate", "-c", str(run), "-i", str(workspace / "test.es"), "-o", str(hyp),
         "--attention-plots", str(plots), "--max-plots", "3", cwd=ROOT)
    assert len(hyp.read_text(encoding="utf-8").splitlines()) == 40
    pngs = sorted(plots.glob("*.png"))
    assert len(pngs) == 3 and all(p.read_bytes().startswith(PNG_MAGIC) for p in pngs)

    # stdin -> stdout with n-best, scores and alignments
    out = attn("translate", "-c", str(run), "--nbest", "2", "--scores", "--alignments",
               cwd=ROOT, input="Y dijo Dios.\n\nSea la luz.\n").stdout.splitlines()
    assert len(out) == 6
    line_numbers = [row.split("\t")[0] for row in out]
    assert line_numbers == ["1", "1", "2", "2", "3", "3"]
    empty = [row.split("\t") for row in out if row.startswith("2\t")]
    assert all(fields[2] == "" for fields in empty)

    # evaluate a checkpoint on the test set
    report_dir = workspace / "eval"
    printed = attn("evaluate", "-c", str(run), "--src", str(workspace / "test.es"),
                   "--ref", str(workspace / "test.en"), "--report-dir", str(report_dir), cwd=ROOT).stdout
    report = json.loads((report_dir / "report.json").read_text())
    assert {"bleu", "chrf", "ter", "signature", "sentences_per_s", "checkpoint"} <= set(report)
    assert "nrefs:1" in printed and (report_dir / "report.md").is_file()
    assert (workspace / "results.csv").read_text().count("\n") == 2  # header + one row

    # the same scores come out of --hyp mode on the written hypotheses
    rescored = attn("evaluate", "--hyp", str(report_dir / "hypotheses.txt"), "--ref", str(workspace / "test.en"),
                    "--report-dir", str(workspace / "eval2"), cwd=ROOT)
    assert json.loads((workspace / "eval2" / "report.json").read_text())["bleu"] == pytest.approx(report["bleu"])
    assert rescored.stdout.splitlines()[0] == printed.splitlines()[0]


def test_experiment_writes_leaderboard_and_skips_finished_points(workspace: Path):
    sweep = workspace / "sweep.yaml"
    sweep.write_text(f"""
base: {workspace}/tiny.yaml
output_dir: {workspace}/sweep
set: {{train.max_steps: 8, train.valid_every: 8, train.log_every: 4}}
grid:
  model.attention: [dot, local_m]
""", encoding="utf-8")
    dry = attn("experiment", str(sweep), "--dry-run", cwd=ROOT).stdout
    assert "2 points" in dry and "attention-dot" in dry and "attention-local_m" in dry

    attn("experiment", str(sweep), cwd=ROOT)
    board = workspace / "sweep"
    rows = (board / "leaderboard.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("point,model.attention,test_bleu")
    assert (board / "leaderboard.png").read_bytes().startswith(PNG_MAGIC)
    assert "attention-local_m" in (board / "leaderboard.md").read_text()
    # both points share one tokenization
    assert len(list(board.glob("data-*"))) == 1

    again = attn("experiment", str(sweep), cwd=ROOT)
    assert again.stderr.count("finished earlier, skipped") == 2
    # a changed sweep makes its points unfinished again
    sweep.write_text(sweep.read_text().replace("train.max_steps: 8", "train.max_steps: 9"), encoding="utf-8")
    assert attn("experiment", str(sweep), "--dry-run", cwd=ROOT).stdout.count("to run") == 2


def run_taxonomy_sweep_small(workspace: Path, sweep_name: str, base: Path) -> list[dict]:
    """configs/``sweep_name``.yaml, every point as it is, from ``base`` at 4 updates a point;
    returns its points, after checking that each reached the leaderboard."""
    import yaml

    taxonomy = yaml.safe_load((ROOT / "configs" / f"{sweep_name}.yaml").read_text(encoding="utf-8"))
    small = {"base": str(base), "output_dir": str(workspace / sweep_name),
             "set": {"train.max_steps": 4, "train.valid_every": 4, "train.log_every": 4, "decode.beam_size": 1},
             "points": taxonomy["points"]}
    sweep = workspace / f"{sweep_name}.yaml"
    sweep.write_text(yaml.safe_dump(small), encoding="utf-8")
    attn("experiment", str(sweep), cwd=ROOT)
    rows = (workspace / sweep_name / "leaderboard.csv").read_text().splitlines()
    assert len(rows) == 1 + len(taxonomy["points"])
    return taxonomy["points"]


def test_the_rnn_taxonomy_sweep_trains_and_ranks_every_mechanism(workspace: Path):
    points = run_taxonomy_sweep_small(workspace, "sweep_rnn_taxonomy", workspace / "tiny.yaml")
    assert len(points) == 17

    def named(key: str) -> set:
        return {point[key] for point in points if key in point}

    # every mechanism, every way to train hard attention, every sparse normaliser, coverage, MoChA
    assert named("model.attention") == set(RNN_ATTENTIONS)
    assert named("model.hard_attention") == set(HARD_MODES)
    assert named("model.attention_normalizer") == set(NORMALIZERS) - {"softmax"}
    assert named("model.coverage") == {True} and named("model.chunk_size")


def test_the_transformer_taxonomy_sweep_trains_and_ranks_every_mechanism(workspace: Path):
    base = (workspace / "tiny.yaml").read_text(encoding="utf-8").replace(
        "model: {arch: gru, attention: additive, embed_dim: 32, hidden_dim: 32, encoder_layers: 1, decoder_layers: 1}",
        "model: {arch: transformer, attention: scaled_dot, hidden_dim: 32, heads: 2, ffn_dim: 64, encoder_layers: 1, "
        "decoder_layers: 1}")
    (workspace / "tiny_transformer.yaml").write_text(base, encoding="utf-8")
    points = run_taxonomy_sweep_small(workspace, "sweep_transformer_taxonomy", workspace / "tiny_transformer.yaml")

    def named(key: str) -> set:
        return {point[key] for point in points if key in point}

    assert named("model.attention") == set(TRANSFORMER_ATTENTIONS)
    assert named("model.attention_normalizer") == set(NORMALIZERS) - {"softmax"}
    assert named("model.gaussian_bias") == {True} and named("model.memory_slots")
