"""Rebuild a translation model from a checkpoint alone (its config and tokenizer travel with it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from seq2seq import kernels
from seq2seq.config import Config, config_from_dict
from seq2seq.data.tokenizer import Tokenizer
from seq2seq.errors import UserError
from seq2seq.models.builder import build_model
from seq2seq.run_folder import resolve_checkpoint
from seq2seq import checkpoint as ckpt


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: Tokenizer
    config: Config
    path: Path
    step: int


def decoding_device(name: torch.device | str) -> torch.device:
    """--device as a torch.device, or a one-line error: it must exist on this machine."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name}: not a device attn decodes on; use cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no GPU is visible on this machine; use --device cpu")
    return device


def load_model(path: str | Path, device: torch.device | str = "cpu", which: str = "best",
               warn: Callable[[str], None] | None = None) -> LoadedModel:
    """A checkpoint file, or a run folder or its checkpoints/ folder: its best checkpoint (``which``
    best; ``warn`` hears of a newer one never validated) or its newest (``which`` last)."""
    device = decoding_device(device)
    path = resolve_checkpoint(path, which, warn)
    payload = ckpt.load_checkpoint(path)
    try:
        cfg = config_from_dict(payload["config"])
        tok = payload["tokenizer"]
        tokenizer = Tokenizer.from_bytes(
            ckpt.tensor_to_bytes(tok["src"]),
            ckpt.tensor_to_bytes(tok["tgt"]) if tok["tgt"] is not None else None,
        )
    except (KeyError, TypeError) as exc:
        raise UserError(f"{path}: checkpoint lacks its config or tokenizer ({exc}); was it written by attn?") from None
    except UserError:  # the SentencePiece bytes do not parse
        raise UserError(f"{path}: the tokenizer stored in this checkpoint is damaged; use another checkpoint "
                        "of the run (e.g. a step_*.pt)") from None
    model = build_model(cfg.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError:
        raise UserError(f"{path}: the weights do not match the model its config describes; the file is damaged") from None
    model.to(device).eval()
    if device.type == "cuda":
        # float32 products on the tensor cores (TF32), as training runs them: several times the
        # throughput of true float32 products, and the model was trained with these.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return LoadedModel(model, tokenizer, cfg, path, payload.get("run_state", {}).get("step", 0))


def check_same_vocabulary(loaded: LoadedModel, tokenizer: Tokenizer, tokenizer_origin: str,
                          fix: str = "drop --tokenizer to use the checkpoint's own") -> None:
    """Refuse a tokenizer other than the one the checkpoint was trained with; ``fix`` says what
    to do instead."""
    if tokenizer.fingerprint() != loaded.tokenizer.fingerprint():
        raise UserError(
            f"{tokenizer_origin}: this tokenizer is not the one {loaded.path} was trained with "
            f"(vocabulary {tokenizer.src_vocab_size}/{tokenizer.tgt_vocab_size} vs "
            f"{loaded.tokenizer.src_vocab_size}/{loaded.tokenizer.tgt_vocab_size}); {fix}"
        )


def use_cpu_kernels(config: Config, override: str | None, device: torch.device | str) -> None:
    """For a command that decodes: the CPU fast paths the checkpoint was trained with
    (train.cpu_kernels) or ``override`` (--cpu-kernels), and, decoding on the CPU, the process
    settings that go with them."""
    kernels.configure(override or config.train.cpu_kernels)
    if torch.device(device).type == "cpu":
        kernels.tune_process()
