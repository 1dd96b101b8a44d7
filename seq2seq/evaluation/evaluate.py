"""Translate a test set with a checkpoint and score it: what ``attn evaluate --checkpoint`` runs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from seq2seq.config import DecodeConfig
from seq2seq.data.corpus import count_text_lines, read_lines
from seq2seq.decoding.loading import load_model, use_cpu_kernels
from seq2seq.decoding.settings import TranslateSettings
from seq2seq.decoding.translator import make_translator
from seq2seq.errors import UserError
from seq2seq.files import make_output_folder, not_a_file
from seq2seq.evaluation.metrics import paired_bootstrap, score_corpus
from seq2seq.evaluation.report import append_results_csv, write_report
from seq2seq.run_folder import CHECKPOINT_DIR, REPORT_DIR, RESULTS_CSV


def read_text_file(path: Path, option: str) -> list[str]:
    """All lines of a UTF-8 text file; a missing, binary or non-UTF-8 file is a UserError."""
    if not path.is_file():
        raise UserError(f"{option} {path}: {not_a_file(path)}")
    count_text_lines(path)  # validates UTF-8 and rejects binary files, naming the line
    return list(read_lines(path))


def default_report_dir(checkpoint: Path) -> Path:
    """``<run>/eval`` for a run folder or a checkpoint inside one, else ``eval`` beside the
    checkpoint file: where the user pointed, not the output_dir the run was trained in (the
    run may have moved since, or that path may be relative to another folder)."""
    folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
    return (folder.parent if folder.name == CHECKPOINT_DIR else folder) / REPORT_DIR


def translate_and_score(checkpoint: Path, src: Path, refs: list[Path], beam: int | None,
                        report_dir: Path | None, device: str = "cpu",
                        warn=lambda message: None, precision: str | None = None,
                        workers: int = 1, decode: DecodeConfig | None = None,
                        engine: str = "torch", cpu_kernels: str | None = None,
                        which: str = "best") -> tuple[dict[str, Any], Path]:
    """Translate ``src``, score against ``refs``, write the report; returns (report, report_dir).
    Decoding follows ``decode`` (default: the checkpoint's decode settings), then ``beam`` and
    ``precision`` where given; ``workers``: decoding processes (Translator); ``engine``: --engine;
    ``cpu_kernels``: --cpu-kernels (default: the checkpoint's train.cpu_kernels); ``which``: --which."""
    loaded = load_model(checkpoint, device, which, warn)
    use_cpu_kernels(loaded.config, cpu_kernels, device)
    settings = TranslateSettings.from_config(decode or loaded.config.decode, workers=workers, engine=engine)
    if beam is not None:
        settings.beam_size = beam
    if precision is not None:
        settings.precision = precision
    sources = read_text_file(src, "--src")
    references = [read_text_file(path, "--ref") for path in refs]
    # Checked before translating: a mismatch must not cost a decode, nor replace an earlier
    # hypotheses.txt in report_dir.
    for path, lines in zip(refs, references):
        if len(lines) != len(sources):
            raise UserError(f"--ref {path} has {len(lines)} lines but --src {src} has {len(sources)}; "
                            "they must be line-parallel (one reference per source line)")
    with make_translator(loaded.model, loaded.tokenizer, settings, warn, device) as translator:
        start = time.perf_counter()
        results = translator.translate(sources)
        seconds = max(time.perf_counter() - start, 1e-9)  # the workers' shutdown not counted
    hypotheses = [r[0].text for r in results]
    pieces = sum(len(r[0].tokens) for r in results)

    report_dir = report_dir or default_report_dir(checkpoint)
    try:
        report_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{report_dir}: cannot create the report folder ({exc.strerror}); "
                        "pass --report-dir with a writable folder") from None
    hyp_path = report_dir / "hypotheses.txt"
    hyp_path.write_text("".join(h + "\n" for h in hypotheses), encoding="utf-8")
    metrics = score_corpus(hypotheses, references, hyps_file=str(hyp_path), refs_files=[str(p) for p in refs])
    meta = {
        "checkpoint": str(loaded.path), "step": loaded.step, "source": str(src),
        "references": [str(p) for p in refs], "hypotheses": str(hyp_path), "sentences": len(sources),
        "config": {"arch": loaded.config.model.arch, "attention": loaded.config.model.attention,
                   "output_dir": loaded.config.output_dir},
        "decode": {"beam_size": settings.beam_size, "length_penalty": settings.length_penalty,
                   "max_len_a": settings.max_len_a, "max_len_b": settings.max_len_b,
                   "precision": settings.precision, "workers": settings.workers, "engine": settings.engine},
        "sentences_per_s": round(len(sources) / seconds, 2),
        "tokens_per_s": round(pieces / seconds, 1),
        "seconds": round(seconds, 2),
    }
    return write_reports(report_dir, metrics, meta), report_dir


def score_hypotheses(hyp: Path, refs: list[Path], compare: Path | None,
                     report_dir: Path | None) -> tuple[dict[str, Any], Path]:
    """``attn evaluate --hyp``: score a file of translations as it is (and, with ``compare``,
    the paired bootstrap test against another system's); write the report (default: ``eval``
    beside ``hyp``); returns (report, report_dir)."""
    references = [read_text_file(path, "--ref") for path in refs]
    hypotheses = read_text_file(hyp, "--hyp")
    metrics = score_corpus(hypotheses, references, hyps_file=str(hyp), refs_files=[str(p) for p in refs])
    meta: dict[str, Any] = {"hypotheses": str(hyp), "references": [str(p) for p in refs], "sentences": len(hypotheses)}
    if compare is not None:
        other = read_text_file(compare, "--compare")
        meta["paired_bootstrap"] = {"system_a": str(compare), "system_b": str(hyp),
                                    **paired_bootstrap(other, hypotheses, references, names=(str(compare), str(hyp)),
                                                       refs_files=[str(p) for p in refs])}
    report_dir = report_dir or hyp.parent / REPORT_DIR
    make_output_folder(report_dir, "--report-dir")
    return write_reports(report_dir, metrics, meta), report_dir


def write_reports(report_dir: Path, metrics: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """report.json/report.md in ``report_dir``, a row in the run's results.csv; the report."""
    write_report(report_dir, metrics, meta)
    append_results_csv(report_dir.parent / RESULTS_CSV, results_row(metrics, meta))
    return {**metrics, **meta}


def results_row(metrics: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """One line of the run-level results.csv, so experiments can be compared."""
    return {
        "hypotheses": meta.get("hypotheses", ""), "checkpoint": meta.get("checkpoint", ""),
        "bleu": round(metrics["bleu"], 2), "chrf": round(metrics["chrf"], 2), "ter": round(metrics["ter"], 2),
        "beam": meta.get("decode", {}).get("beam_size", ""), "sentences_per_s": meta.get("sentences_per_s", ""),
        "references": meta.get("references", ""), "engine": meta.get("decode", {}).get("engine", ""),
    }
