"""Corpus metrics through sacrebleu, significance tests, and report files."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import sacrebleu

from seq2seq.errors import UserError
from seq2seq.evaluation.metrics import paired_bootstrap, score_corpus
from seq2seq.evaluation.report import append_results_csv, write_report

REFS = [
    "In the beginning God created the heaven and the earth.",
    "And the earth was without form, and void.",
    "And God said, Let there be light: and there was light.",
    "And God saw the light, that it was good.",
    "And the evening and the morning were the first day.",
    "And God called the firmament Heaven.",
]
HYPS = [
    "In the beginning God made the heaven and the earth.",
    "The earth was without form and empty.",
    "And God said, Let there be light: and there was light.",
    "God saw that the light was good.",
    "And evening and morning were the first day.",
    "God called the sky Heaven.",
]


def test_references_against_themselves_score_perfectly():
    scores = score_corpus(REFS, [REFS])
    assert scores["bleu"] == pytest.approx(100.0)
    assert scores["chrf"] == pytest.approx(100.0)
    assert scores["ter"] == pytest.approx(0.0)


def test_scores_equal_sacrebleus_own():
    scores = score_corpus(HYPS, [REFS])
    assert 0 < scores["bleu"] < 100
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score)
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score)
    assert scores["ter"] == pytest.approx(sacrebleu.corpus_ter(HYPS, [REFS]).score)
    assert scores["signature"]["bleu"].startswith("nrefs:1|")
    assert set(scores["signature"]) == {"bleu", "chrf", "ter"}


def test_several_reference_sets():
    scores = score_corpus(HYPS, [REFS, HYPS])
    assert scores["bleu"] == pytest.approx(100.0)
    assert scores["signature"]["bleu"].startswith("nrefs:2|")


def test_wrong_reference_length_names_both_files():
    with pytest.raises(UserError) as error:
        score_corpus(HYPS, [REFS[:-1]], hyps_file="out.en", refs_files=["test.en"])
    message = str(error.value)
    assert "references file test.en has 5 lines but hypotheses file out.en has 6" in message


def test_empty_hypotheses_are_an_error():
    with pytest.raises(UserError, match="empty"):
        score_corpus([], [[]], hyps_file="out.en")


def test_paired_bootstrap():
    refs = [REFS * 5]
    weaker = ["the"] * len(refs[0])
    clear = paired_bootstrap(REFS * 5, weaker, refs, n=200, seed=1)
    assert set(clear) == {"bleu", "chrf"}
    assert clear["bleu"]["a"] == pytest.approx(100.0)
    assert clear["bleu"]["b"] < 1.0
    assert clear["bleu"]["p_value"] < 0.05
    close = paired_bootstrap(HYPS * 5, HYPS * 4 + REFS, refs, n=200, seed=1)
    assert 0.0 < close["chrf"]["p_value"] <= 1.0
    assert close == paired_bootstrap(HYPS * 5, HYPS * 4 + REFS, refs, n=200, seed=1)
    assert "SACREBLEU_SEED" not in os.environ


def test_report_files_are_written_and_parse(tmp_path: Path):
    metrics = score_corpus(HYPS, [REFS])
    meta = {
        "checkpoint": tmp_path / "best.pt",
        "decode": {"beam_size": 5, "length_penalty": 1.0},
        "speed": {"sentences_per_s": 12.5, "tokens_per_s": 310.0},
        "sentences": 6,
        "config": {"model": {"arch": "gru", "attention": "additive"}},
    }
    json_path, md_path = write_report(tmp_path / "eval", metrics, meta)
    report = json.loads(json_path.read_text())
    assert report["bleu"] == pytest.approx(metrics["bleu"])
    assert report["signature"] == metrics["signature"]
    assert report["checkpoint"] == str(tmp_path / "best.pt")
    assert report["speed"]["tokens_per_s"] == 310.0
    markdown = md_path.read_text()
    assert f"| BLEU | {metrics['bleu']:.2f} |" in markdown
    assert "nrefs:1|" in markdown and "## config" in markdown
    assert sorted(p.name for p in json_path.parent.iterdir()) == ["report.json", "report.md"]  # no temp files


def test_results_csv_keeps_its_columns_and_adds_new_ones(tmp_path: Path):
    path = tmp_path / "results.csv"
    append_results_csv(path, {"run": "gru-additive", "bleu": 20.5})
    append_results_csv(path, {"bleu": 22.0, "run": "gru-dot", "chrf": 48.1})
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
        f.seek(0)
        header = f.readline().strip()
    assert header == "run,bleu,chrf"
    assert rows == [
        {"run": "gru-additive", "bleu": "20.5", "chrf": ""},
        {"run": "gru-dot", "bleu": "22.0", "chrf": "48.1"},
    ]


def test_default_report_folder_is_where_the_user_pointed(tmp_path):
    from seq2seq.evaluation.evaluate import default_report_dir

    run = tmp_path / "moved_run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.pt").write_bytes(b"")
    (tmp_path / "averaged.pt").write_bytes(b"")
    assert default_report_dir(run) == run / "eval"
    assert default_report_dir(run / "checkpoints" / "best.pt") == run / "eval"
    assert default_report_dir(tmp_path / "averaged.pt") == tmp_path / "eval"


def test_reports_are_readable_like_any_file_written_here(tmp_path):
    write_report(tmp_path, score_corpus(["a b c"], [["a b c"]]), {"sentences": 1})
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
