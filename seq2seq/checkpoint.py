"""Checkpoints: written atomically, loaded safely, self-contained.

A checkpoint holds everything needed to resume a run bit-for-bit (model, optimiser, step,
data position, every RNG state) and everything needed to translate with it alone (the
resolved config and the SentencePiece model bytes). It is written to a temporary file,
fsync'ed and renamed into place, so a run killed at any moment leaves either the old file
or the new one, never half of one. It is read with ``torch.load(weights_only=True)``: a
pickle that carries code is refused instead of executed. The CRC-32 that torch.save stores for
each record is checked first, so a file damaged later is refused instead of loaded as wrong
weights.
"""

from __future__ import annotations

import os
import pickle
import pickletools
import random
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from seq2seq import CHECKPOINT_FORMAT, __version__
from seq2seq.errors import UserError
from seq2seq.files import replaced_atomically
from seq2seq.run_folder import checkpoint_dir, step_checkpoints


def run_payload(config: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: Any,
                plateau: Any, run_state: dict[str, Any], rng_states: list[dict[str, Any]],
                tokenizer_bytes: tuple[bytes, bytes | None]) -> dict[str, Any]:
    """What a checkpoint of a run holds (see the module docstring)."""
    src_bytes, tgt_bytes = tokenizer_bytes
    return {
        "format": CHECKPOINT_FORMAT,
        "attn_version": __version__,
        "config": config,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "plateau": plateau.state_dict(),
        "run_state": run_state,
        # Rank 0's RNG states, and under DDP every rank's (dropout differs per rank).
        "rng": rng_states[0],
        **({"rng_ranks": rng_states} if len(rng_states) > 1 else {}),
        "tokenizer": {"src": bytes_to_tensor(src_bytes),
                      "tgt": bytes_to_tensor(tgt_bytes) if tgt_bytes is not None else None},
    }


def save_atomic(payload: dict[str, Any], path: Path) -> None:
    """torch.save to a temp file in the same folder, fsync, then rename over ``path``."""
    try:
        with replaced_atomically(path) as tmp:
            with open(tmp, "wb") as f:
                torch.save(payload, f)
                f.flush()
                os.fsync(f.fileno())
            _test_pause()
    except OSError as exc:
        raise UserError(
            f"{path}: could not write the checkpoint ({exc.strerror or exc}); free disk space or "
            "choose another output_dir — the previous checkpoint is untouched"
        ) from None
    _fsync_dir(path.parent)


def _test_pause() -> None:
    """Test hook: ATTN_TEST_SLOW_SAVE=SECONDS sleeps between writing the temporary file and
    renaming it, so fault-injection tests can kill a run in the middle of a checkpoint write."""
    seconds = os.environ.get("ATTN_TEST_SLOW_SAVE")
    if seconds:
        time.sleep(float(seconds))


def remove_temp_files(output_dir: str | Path) -> None:
    """Delete the temporary files of checkpoint writes that never finished (the run was killed)."""
    folder = checkpoint_dir(output_dir)
    if folder.is_dir():
        for tmp in folder.glob(".*.pt.tmp*"):
            tmp.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    # The rename is only durable once the directory entry itself reaches the disk.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and sanity-check a checkpoint; every failure is a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found; pass a .pt file or a run's output_dir")
    damaged = _damaged_record(path)
    if damaged:
        raise UserError(f"{path}: damaged: {damaged} does not match the checksum stored when it was written "
                        "(a disk or copy error); use another checkpoint, e.g. an earlier step_*.pt")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # The weights-only unpickler names a GLOBAL when the pickle would import and call
        # something (code); any other failure is a file that is not a torch checkpoint at all.
        if "GLOBAL" in str(exc) or _pickle_imports(path):
            raise UserError(f"{path}: refused to load: it contains objects other than tensors and plain data "
                            "(possibly code); only load checkpoints you trust from attn") from None
        raise UserError(f"{path}: not a readable attn checkpoint (not a file torch.save wrote)") from None
    except Exception as exc:  # garbage makes the loader fail in many ways (zip, EOF, KeyError, ...)
        first = str(exc).splitlines()[0] if str(exc) and not isinstance(exc, LookupError) else type(exc).__name__
        raise UserError(f"{path}: not a readable attn checkpoint (truncated or corrupt: {first[:120]})") from None
    if not isinstance(payload, dict) or "format" not in payload or "model" not in payload:
        raise UserError(f"{path}: not an attn checkpoint (no format/model entries)")
    if payload["format"] != CHECKPOINT_FORMAT:
        raise UserError(
            f"{path}: checkpoint format {payload['format']} (attn {payload.get('attn_version', '?')}) "
            f"is not supported by attn {__version__} (format {CHECKPOINT_FORMAT})"
        )
    return payload


def _damaged_record(path: Path) -> str | None:
    """The first record of the checkpoint's zip whose bytes fail the CRC-32 that torch.save stored,
    or None. torch.load does not check them and would load flipped bits as weights. (About 0.4 s
    a GB; a file that is not a zip is left to torch.load to refuse.)"""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError):
        return None


def _pickle_imports(path: Path) -> bool:
    """Whether ``path`` starts with a pickle that imports something (a GLOBAL: what code-carrying
    pickles need). Only reads opcodes, runs nothing; anything that is not a pickle gives False."""
    try:
        with open(path, "rb") as f:
            return any(op.name in ("GLOBAL", "STACK_GLOBAL", "INST") for op, _, _ in pickletools.genops(f))
    except Exception:
        return False


# ----------------------------------------------------------------- finding checkpoints


def prune_step_checkpoints(output_dir: str | Path, keep_last: int) -> None:
    for old in step_checkpoints(output_dir)[:-keep_last]:
        old.unlink(missing_ok=True)


# ----------------------------------------------------------------- RNG state


def rng_state(device: torch.device = torch.device("cpu")) -> dict[str, Any]:
    """The RNG states training draws from (the CPU's, and the GPU's it trains on), as tensors
    and plain data, so weights_only loading accepts them."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "cached": cached},
    }
    if device.type == "cuda":
        # This GPU's only: a resume may see another number of GPUs.
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device = torch.device("cpu")) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and device.type == "cuda":
        cuda = state["cuda"]
        if isinstance(cuda, list):  # an older checkpoint: one state per GPU it could see
            cuda = cuda[device.index] if device.index < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)


def bytes_to_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def tensor_to_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.numpy().tobytes()


def newest_resumable(output_dir: Path, log: Callable[[str], None]) -> tuple[Path, dict[str, Any]]:
    """The newest step checkpoint that loads and holds an optimizer state, with its payload;
    a damaged newest one falls back to the one before (``log`` hears why)."""
    for path in reversed(step_checkpoints(output_dir)):
        try:
            payload = load_checkpoint(path)
        except UserError as exc:
            log(f"warning: skipping {exc}")
            continue
        if "optimizer" in payload:
            return path, payload
        log(f"warning: skipping {path}: no optimizer state to resume from (an averaged checkpoint?)")
    raise UserError(f"output_dir: no loadable checkpoint in {checkpoint_dir(output_dir)}")


# ----------------------------------------------------------------- averaging


def average_checkpoints(state_dicts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Element-wise mean of the floating-point tensors of several model state dicts.

    Averaging the last checkpoints of a run smooths out the noise of the final updates.
    Integer tensors and other values (counters, ids) cannot be averaged: they come from the
    first dict. The inputs are left unchanged.
    """
    if not state_dicts:
        raise UserError("no checkpoints to average; pass at least one checkpoint file")
    first = state_dicts[0]
    for number, other in enumerate(state_dicts[1:], start=2):
        _check_same_parameters(first, other, number)
    averaged = {}
    for name, value in first.items():
        if isinstance(value, Tensor) and value.is_floating_point():
            # Summing in float64 keeps the mean of identical tensors bit-identical.
            total = sum(sd[name].double() for sd in state_dicts)
            averaged[name] = (total / len(state_dicts)).to(value.dtype)
        else:
            averaged[name] = value.clone() if isinstance(value, Tensor) else value
    return averaged


def _check_same_parameters(first: dict[str, Any], other: dict[str, Any], number: int) -> None:
    if other.keys() != first.keys():
        differing = sorted(other.keys() ^ first.keys())
        raise UserError(
            f"checkpoint {number} has different parameters than checkpoint 1 "
            f"(e.g. {differing[0]}); average only checkpoints of the same model"
        )
    for name, value in first.items():
        if isinstance(value, Tensor) and value.shape != other[name].shape:
            raise UserError(
                f"checkpoint {number}: parameter {name} has shape {tuple(other[name].shape)} "
                f"but {tuple(value.shape)} in checkpoint 1; average only checkpoints of the same model"
            )
