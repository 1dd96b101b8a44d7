"""Evaluation reports: ``report.json`` for programs, ``report.md`` for people, and one CSV
that collects a row per evaluated run.

Every file is written to a temporary file first and then renamed over the target, so an
interrupted run never leaves a half-written report behind.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from seq2seq.files import write_text_atomic

METRIC_KEYS = ("bleu", "chrf", "ter", "signature")
METRIC_NAMES = {"bleu": "BLEU", "chrf": "chrF", "ter": "TER"}


def write_report(report_dir: str | Path, metrics: dict, meta: dict) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` into ``report_dir``; return their paths.

    ``metrics`` is the output of ``score_corpus``; ``meta`` adds what produced the scores
    (checkpoint, config, decode settings, speed, counts). Meta values that JSON cannot hold
    are written as strings.
    """
    clashes = set(meta) & set(METRIC_KEYS)
    if clashes:
        raise ValueError(f"meta keys {sorted(clashes)} would overwrite the metrics")
    report = {**{key: metrics[key] for key in METRIC_KEYS}, **meta}
    report_dir = Path(report_dir)
    json_path, md_path = report_dir / "report.json", report_dir / "report.md"
    write_text_atomic(json_path, json.dumps(report, indent=2, default=str) + "\n")
    write_text_atomic(md_path, render_markdown(report))
    return json_path, md_path


def render_markdown(report: dict) -> str:
    """The report as Markdown: scores first, then signatures, then everything else."""
    lines = ["# Evaluation report", "", "| metric | score |", "|---|---:|"]
    lines += [f"| {METRIC_NAMES[key]} | {report[key]:.2f} |" for key in METRIC_NAMES]
    lines += ["", "sacrebleu signatures:", ""]
    lines += [f"- {METRIC_NAMES[key]}: `{signature}`" for key, signature in report["signature"].items()]
    details = {key: value for key, value in report.items() if key not in METRIC_KEYS}
    simple = {key: value for key, value in details.items() if not isinstance(value, (dict, list))}
    if simple:
        lines += ["", "## Details", ""] + _table(simple)
    for key, value in details.items():
        if key in simple:
            continue
        lines += ["", f"## {key}", ""]
        if isinstance(value, dict) and not any(isinstance(v, (dict, list)) for v in value.values()):
            lines += _table(value)
        else:
            lines += ["```json", json.dumps(value, indent=2, default=str), "```"]
    return "\n".join(lines) + "\n"


def _table(values: dict) -> list[str]:
    rows = [f"| {key} | {_cell(value)} |" for key, value in values.items()]
    return ["| key | value |", "|---|---|", *rows]


def _cell(value: Any) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|")  # a bare | would split the table cell


def append_results_csv(csv_path: str | Path, row: dict) -> None:
    """Add ``row`` to a CSV of results, creating it with a header the first time.

    Keys not seen before become new columns at the end (earlier rows get empty cells
    there), so existing columns never move. Values that are dicts or lists are stored as
    JSON. Two processes appending at the same moment can lose one row.
    """
    csv_path = Path(csv_path)
    header: list[str] = []
    rows: list[dict] = []
    if csv_path.exists():
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = list(reader)
    header += [key for key in row if key not in header]
    rows.append({key: _csv_value(value) for key, value in row.items()})

    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=header, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(csv_path, out.getvalue())


def _csv_value(value: Any) -> Any:
    return json.dumps(value, default=str) if isinstance(value, (dict, list)) else value
