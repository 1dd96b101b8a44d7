"""A run folder's layout, in one place: what training writes and what translation, evaluation
and sweeps read back.

    <run>/config.yaml           the resolved config
    <run>/metrics.jsonl         one JSON record per log interval and per validation
    <run>/learning_curve.png    training and validation NLL against steps
    <run>/tensorboard/          (train.tensorboard)
    <run>/checkpoints/          step_<8 digits>.pt (the last train.keep_last) and best.pt
    <run>/data/                 the prepared data (unless data.prepared_dir says elsewhere)
    <run>/eval/                 attn evaluate's report; <run>/results.csv, one row per evaluation
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from seq2seq.errors import UserError

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "learning_curve.png"
TENSORBOARD_DIR = "tensorboard"
CHECKPOINT_DIR = "checkpoints"
BEST_NAME = "best.pt"
REPORT_DIR = "eval"
RESULTS_CSV = "results.csv"
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / CHECKPOINT_DIR


def step_checkpoint_path(output_dir: str | Path, step: int) -> Path:
    return checkpoint_dir(output_dir) / f"step_{step:08d}.pt"


def step_checkpoints(output_dir: str | Path) -> list[Path]:
    """The run's step checkpoints, oldest first."""
    return _steps_in(checkpoint_dir(output_dir))


def _steps_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_FILE.match(p.name))]
    return [p for _, p in sorted(found)]


def step_of(path: Path) -> int | None:
    """The step a step checkpoint's name says, or None (best.pt, an averaged file)."""
    match = _STEP_FILE.match(path.name)
    return int(match.group(1)) if match else None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of metrics.jsonl; a line cut short by a killed run is left out."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def last_validated_step(run: Path) -> int | None:
    """The step of the run's last validation (metrics.jsonl), or None if it has none on record."""
    steps = [r["step"] for r in read_metrics(run / METRICS_FILE) if "valid_loss" in r and "step" in r]
    return max(steps) if steps else None


WHICH = ("best", "last")


def resolve_checkpoint(path: str | Path, which: str = "best", warn: Callable[[str], None] | None = None) -> Path:
    """A .pt file as is; a run folder (or its checkpoints/ folder) -> a checkpoint in it.

    ``which`` best: best.pt, the best validated model (the newest step checkpoint where there is
    no best.pt); ``warn`` is told when a newer step checkpoint was never validated (a run stopped
    by Ctrl-C or a crash), and how to choose it. ``which`` last: the newest step checkpoint.
    """
    path = Path(path)
    if not path.is_dir():
        if which == "last" and warn is not None:
            warn(f"--which last: {path} is a checkpoint file, not a run folder; using it as given")
        return path
    folder = checkpoint_dir(path) if checkpoint_dir(path).is_dir() else path
    best, steps = folder / BEST_NAME, _steps_in(folder)
    if not steps and not best.is_file():
        raise UserError(f"{path}: no checkpoints in this folder (nor in its {CHECKPOINT_DIR}/); "
                        "train first or pass a .pt file")
    if which == "last" or not best.is_file():
        return steps[-1] if steps else best
    newest = step_of(steps[-1]) if steps else None
    validated = last_validated_step(folder.parent)
    if warn is not None and newest is not None and validated is not None and newest > validated:
        warn(f"using {best} (the best validated model); the newer {steps[-1]} (step {newest}, after the last "
             f"validation at step {validated}) was never validated: pass --which last to use it")
    return best
