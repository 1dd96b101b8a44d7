"""Plots come out as valid PNG files that matplotlib can read back."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import pytest
import torch

from seq2seq.plots import attention_heatmap, bar_chart, learning_curve

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_attention_heatmap(tmp_path: Path):
    weights = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.7, 0.2]])
    path = tmp_path / "plots" / "attention.png"
    attention_heatmap(path, ["▁el", "▁gato", "</s>"], ["▁the", "▁cat"], weights)
    assert_png(path)


def test_attention_heatmap_checks_the_shape(tmp_path: Path):
    with pytest.raises(ValueError, match="shape"):
        attention_heatmap(tmp_path / "bad.png", ["a", "b"], ["x"], torch.ones(2, 1))


def test_learning_curve(tmp_path: Path):
    records = [
        {"step": 50, "loss": 6.1, "lr": 1e-4},
        {"step": 100, "loss": 5.2},
        {"step": 100, "valid_loss": 5.4, "valid_bleu": 1.2},
        {"step": 150, "loss": 4.8},
        {"step": 200, "loss": 4.5},
        {"step": 200, "valid_loss": 4.9, "valid_bleu": 3.5},
    ]
    learning_curve(tmp_path / "curve.png", records)
    assert_png(tmp_path / "curve.png")
    # Early in training there may be no validation yet.
    learning_curve(tmp_path / "early.png", records[:2])
    assert_png(tmp_path / "early.png")


def test_bar_chart(tmp_path: Path):
    labels, values = ["additive", "dot", "general"], [20.1, 19.3, 21.0]
    bar_chart(tmp_path / "bars.png", labels, values, title="BLEU by attention", ylabel="BLEU")
    assert_png(tmp_path / "bars.png")
