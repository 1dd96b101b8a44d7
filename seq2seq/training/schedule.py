"""Learning-rate schedules as pure functions of the step, plus reduce-on-plateau.

Every schedule returns a multiplier of ``train.lr``; a pure function of the step makes
resuming exact (nothing to restore but the step) and is trivial to test and plot.
"""

from __future__ import annotations

import math

from seq2seq.config import TrainConfig


def lr_at(step: int, cfg: TrainConfig, plateau_scale: float = 1.0) -> float:
    """The learning rate for update number ``step`` (1-based), times ``Plateau.scale`` (the
    plateau schedule's decay so far); never below ``train.min_lr``."""
    warmup = cfg.warmup_steps
    match cfg.schedule:
        case "constant" | "plateau":
            factor = min(1.0, step / warmup) if warmup else 1.0
        case "inverse_sqrt" | "noam":
            # Linear warm-up to lr, then lr * sqrt(warmup / step): the Transformer paper's
            # Noam curve normalised so the peak equals train.lr (fairseq's inverse_sqrt).
            if warmup and step < warmup:
                factor = step / warmup
            else:
                factor = math.sqrt(max(warmup, 1) / max(step, 1))
        case "cosine":
            if warmup and step < warmup:
                factor = step / warmup
            else:
                # Half a cosine from lr at the end of warm-up down to min_lr at max_steps.
                span = max(1, cfg.max_steps - warmup)
                progress = min(1.0, (step - warmup) / span)
                cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
                return cfg.min_lr + (max(cfg.lr, cfg.min_lr) - cfg.min_lr) * cosine
        case _:
            raise ValueError(f"unknown schedule {cfg.schedule}")
    return max(cfg.min_lr, cfg.lr * factor * plateau_scale)


class Plateau:
    """Multiplies the learning rate by ``plateau_factor`` when validation stops improving."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.factor = cfg.plateau_factor
        self.patience = cfg.plateau_patience
        self.scale = 1.0
        self.bad_validations = 0
        self.best: float | None = None

    def update(self, score: float, higher_is_better: bool) -> None:
        improved = self.best is None or (score > self.best if higher_is_better else score < self.best)
        if improved:
            self.best, self.bad_validations = score, 0
            return
        self.bad_validations += 1
        if self.bad_validations > self.patience:
            self.scale *= self.factor
            self.bad_validations = 0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "bad_validations": self.bad_validations, "best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.scale = state["scale"]
        self.bad_validations = state["bad_validations"]
        self.best = state["best"]
