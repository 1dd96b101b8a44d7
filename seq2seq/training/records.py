"""What a run records: metrics.jsonl (one JSON line per log interval and per validation), its
TensorBoard mirror, and the learning curve drawn from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from seq2seq.config import Config
from seq2seq.errors import UserError
from seq2seq.files import write_text_atomic
from seq2seq.run_folder import CURVE_FILE, METRICS_FILE, read_metrics


class MetricsLog:
    """Appends a run's records (rank 0 only: the others write nothing)."""

    def __init__(self, out: Path, is_main: bool) -> None:
        self.out, self.is_main = out, is_main
        self.tensorboard = None  # a SummaryWriter, opened by train() once the output folder is ready

    def write(self, record: dict[str, Any]) -> None:
        if not self.is_main:
            return
        if self.tensorboard is not None:
            group = "valid" if "valid_loss" in record else "train"
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(f"{group}/{key}", value, record["step"])
        try:
            with open(self.out / METRICS_FILE, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as exc:
            raise UserError(f"{self.out / METRICS_FILE}: cannot append ({exc.strerror or exc}); "
                            "free disk space, then continue with --resume") from None

    def plot(self) -> None:
        from seq2seq.plots import learning_curve

        records = read_metrics(self.out / METRICS_FILE)
        if records:
            learning_curve(self.out / CURVE_FILE, records)



def tensorboard_writer(cfg: Config) -> type | None:
    """TensorBoard's SummaryWriter when train.tensorboard is on (imported at start-up, so that
    a missing package is an error before anything is written)."""
    if not cfg.train.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("train.tensorboard: true needs the tensorboard package; "
                        "pip install 'attn[tensorboard]' or set it to false") from None
    return SummaryWriter


def trim_metrics(path: Path, step: int) -> None:
    """Drop lines logged after the checkpoint we resume from; they will be logged again."""
    if path.exists():
        records = [r for r in read_metrics(path) if r.get("step", 0) <= step]
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))
