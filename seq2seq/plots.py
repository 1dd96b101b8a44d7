"""Figures as PNG files: attention heatmaps, learning curves, bar charts.

Figures are built with ``matplotlib.figure.Figure`` directly rather than ``pyplot``: no
GUI backend is involved (PNG output goes through Agg, so it works headless), no global
figure registry keeps figures alive, and importing this module changes no global setting.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from numpy.typing import ArrayLike
from matplotlib.figure import Figure

from seq2seq.files import replaced_atomically

# Slightly larger than matplotlib's defaults, so figures stay readable in reports.
STYLE = {"font.size": 11, "axes.titlesize": 13, "axes.labelsize": 12, "legend.fontsize": 10}
DPI = 150


def attention_heatmap(
    path: str | Path, src_pieces: Sequence[str], tgt_pieces: Sequence[str], weights: ArrayLike,
    ylabel: str = "output pieces",
) -> None:
    """Attention weights [target, source] (tensor or array) as a grid: dark is strong attention.
    (Self-attention: the source pieces on both axes, ``ylabel`` naming the queries.)"""
    weights = _to_numpy(weights)
    if weights.shape != (len(tgt_pieces), len(src_pieces)):
        raise ValueError(
            f"weights have shape {weights.shape}, expected ({len(tgt_pieces)}, {len(src_pieces)}) "
            "= (target pieces, source pieces)"
        )
    with matplotlib.rc_context(STYLE):
        # The figure grows with the sentence so that every piece keeps a readable label.
        size = (2.5 + 0.35 * len(src_pieces), 1.5 + 0.35 * len(tgt_pieces))
        fig = Figure(figsize=(max(size[0], 4), max(size[1], 3)), layout="constrained")
        ax = fig.add_subplot()
        image = ax.imshow(weights, cmap="Greys", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(src_pieces)), src_pieces, rotation=90)
        ax.set_yticks(range(len(tgt_pieces)), tgt_pieces)
        ax.set_xlabel("source pieces")
        ax.set_ylabel(ylabel)
        fig.colorbar(image, ax=ax, label="attention weight")
        _save(fig, path)


def learning_curve(path: str | Path, records: Sequence[dict]) -> None:
    """Loss (training and validation) and validation BLEU against the training step.

    ``records`` are the lines of metrics.jsonl: training lines carry ``step`` and ``nll``
    (older runs: only ``loss``), validation lines ``step``, ``valid_loss`` and ``valid_bleu``;
    other keys are ignored. Both curves are the plain NLL per target token: the training
    ``loss`` includes label smoothing, which would draw validation below training.
    """
    train_loss = _series(records, "nll")
    if not train_loss[0]:
        train_loss = _series(records, "loss")
    valid_loss = _series(records, "valid_loss")
    valid_bleu = _series(records, "valid_bleu")
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(7, 6), layout="constrained")
        loss_ax, bleu_ax = fig.subplots(2, 1, sharex=True)
        loss_ax.plot(*train_loss, label="training", linewidth=1)
        loss_ax.plot(*valid_loss, "o-", label="validation")
        loss_ax.set_ylabel("NLL per target token")
        loss_ax.set_title("Learning curve")
        if train_loss[0] or valid_loss[0]:
            loss_ax.legend()
        bleu_ax.plot(*valid_bleu, "o-", color="tab:green")
        bleu_ax.set_ylabel("validation BLEU")
        bleu_ax.set_xlabel("training step")
        for ax in (loss_ax, bleu_ax):
            ax.grid(alpha=0.3)
        _save(fig, path)


def bar_chart(
    path: str | Path, labels: Sequence[str], values: Sequence[float], title: str, ylabel: str
) -> None:
    """One bar per label, its value written on top (e.g. BLEU per attention type)."""
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(max(4.0, 2.0 + 0.9 * len(labels)), 4.5), layout="constrained")
        ax = fig.add_subplot()
        bars = ax.bar(range(len(labels)), values, color="tab:blue")
        ax.bar_label(bars, fmt="%.2f", padding=2)
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.margins(y=0.12)  # headroom for the value labels
        ax.grid(axis="y", alpha=0.3)
        _save(fig, path)


def _series(records: Sequence[dict], key: str) -> tuple[list, list]:
    """(steps, values) of the records that have ``key``."""
    points = [(r["step"], r[key]) for r in records if key in r and "step" in r and r[key] is not None]
    return [step for step, _ in points], [value for _, value in points]


def _to_numpy(weights: ArrayLike) -> np.ndarray:
    if hasattr(weights, "detach"):  # a torch tensor, possibly on a GPU
        weights = weights.detach().float().cpu().numpy()
    return np.asarray(weights, dtype=float)


def _save(fig: Figure, path: str | Path) -> None:
    path = Path(path)
    # Atomically: the learning curve is redrawn at every validation, and a run killed while
    # drawing keeps the last complete one.
    with replaced_atomically(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format=path.suffix.lstrip(".") or "png")
