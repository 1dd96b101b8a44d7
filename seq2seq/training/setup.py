"""Setting up a run before the first update: the device, precision checks, seeds, the output
folder (refusing to clobber another run), the optimizer and autocast."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from seq2seq import kernels
from seq2seq.config import Config
from seq2seq.data.prepare import PreparedData, prepare_data
from seq2seq.errors import UserError
from seq2seq.run_folder import CONFIG_FILE, CURVE_FILE, METRICS_FILE, REPORT_DIR, RESULTS_CSV, TENSORBOARD_DIR
from seq2seq import checkpoint as ckpt
from seq2seq import run_folder
from seq2seq.training.distributed import DistInfo, join_group, stop_all_if_main_failed
from seq2seq.training.records import tensorboard_writer


def pick_device(cfg: Config, info: DistInfo) -> torch.device:
    if cfg.train.device == "cpu" or (cfg.train.device == "auto" and not torch.cuda.is_available()):
        if cfg.train.precision == "fp16":  # device cpu is refused at load time; auto found no GPU
            raise UserError("train.precision: fp16 needs a GPU and none is visible; use bf16 or fp32 on the CPU")
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError("train.device: cuda was asked for but no GPU is visible; use auto or cpu")
    return torch.device("cuda", local_cuda_index(info.local_rank, torch.cuda.device_count()))


def local_cuda_index(local_rank: int, visible: int) -> int:
    """The GPU this process trains on: its LOCAL_RANK among the GPUs it sees, or the only one it
    sees (a scheduler that sets CUDA_VISIBLE_DEVICES per rank gives each process one GPU, cuda:0)."""
    if visible == 1:
        return 0
    if local_rank < visible:
        return local_rank
    raise UserError(f"LOCAL_RANK {local_rank} but this process sees {visible} GPUs; give each process one GPU "
                    "(CUDA_VISIBLE_DEVICES) or at least as many as ranks per node")


def check_precisions(cfg: Config, device: torch.device, log: Callable[[str], None]) -> None:
    """bf16 in train.precision or decode.precision (which validation uses): refused before
    anything is written where it cannot run on this CPU, a warning where it is emulated."""
    for key, value in (("train.precision", cfg.train.precision), ("decode.precision", cfg.decode.precision)):
        if value == "bf16" and (warning := kernels.check_bf16(device, key)):
            log(f"warning: {warning}")


def make_deterministic() -> None:
    """train.deterministic: the same algorithms every run, so a resumed GPU run repeats the
    uninterrupted one bit for bit (cuBLAS needs its workspace fixed before its first use)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_output_dir(cfg: Config, resume: bool, overwrite: bool) -> Path:
    """Refuse to clobber another run; make sure we can write before spending any compute.
    Nothing of an earlier run is deleted here: see ``clear_earlier_run``."""
    out = Path(cfg.output_dir)
    if resume and overwrite:
        raise UserError("--resume continues the run in output_dir and --overwrite deletes it; pass one of them")
    if out.exists() and not out.is_dir():
        raise UserError(f"output_dir: {out} exists and is a file; choose a directory path")
    # A run that trained (metrics or checkpoints); a config.yaml alone is a run that failed early.
    has_run = (out / METRICS_FILE).exists() or bool(run_folder.step_checkpoints(out))
    if resume and not run_folder.step_checkpoints(out):
        instead = "start over with --overwrite" if has_run else "run without --resume"
        raise UserError(f"output_dir: {out} has no checkpoint to resume from; {instead}")
    if has_run and not resume and not overwrite:
        raise UserError(
            f"output_dir: {out} already holds a run; pass --resume to continue it, "
            "--overwrite to start over, or choose another output_dir"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"output_dir: cannot write to {out} ({exc.strerror or exc}); choose a writable directory") from None
    ckpt.remove_temp_files(out)  # half-written checkpoints of a run that was killed
    return out


def clear_earlier_run(out: Path) -> None:
    """--overwrite: delete what the earlier run wrote (checkpoints, records, its evaluations:
    they describe a model that is gone), once the new run is known to start (its data, model and
    optimizer built), so that bad input never costs the old run. The prepared data stays."""
    for folder in (run_folder.checkpoint_dir(out), out / TENSORBOARD_DIR, out / REPORT_DIR):
        shutil.rmtree(folder, ignore_errors=True)
    for name in (METRICS_FILE, CURVE_FILE, CONFIG_FILE, RESULTS_CSV):
        (out / name).unlink(missing_ok=True)


def build_optimizer(model: nn.Module, cfg: Config, device: torch.device) -> torch.optim.Optimizer:
    t = cfg.train
    opt_class = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    # Fused Adam is one kernel for all parameters, on CPU and GPU alike, and it can skip a
    # non-finite update on its own (found_inf), so the loop never waits on the device.
    return opt_class(model.parameters(), lr=t.lr, betas=t.betas, weight_decay=t.weight_decay, fused=True)


def autocast_context(cfg: Config, device: torch.device) -> contextlib.AbstractContextManager:
    if cfg.train.precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if cfg.train.precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def set_up_process(cfg: Config, info: DistInfo, log: Callable[[str], None]) -> torch.device:
    """The device, the CPU kernels and process settings, precision checks, determinism, the
    process group, threads and TF32: everything about this process, before anything is written."""
    device = pick_device(cfg, info)
    kernels.configure(cfg.train.cpu_kernels)
    if device.type == "cpu":
        kernels.tune_process()  # before any model runs here: oneDNN reads its cache caps once
    check_precisions(cfg, device, log)
    if cfg.train.deterministic:
        make_deterministic()
    join_group(info, device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def prepare_run(cfg: Config, info: DistInfo, resume: bool, overwrite: bool,
                log: Callable[[str], None]) -> tuple[Path, PreparedData, type | None]:
    """Rank 0 checks the output folder and prepares the data (refusals reach every rank); the
    others then load the data. -> output folder, data, TensorBoard's writer class (or None)."""
    out, writer, refused = Path(cfg.output_dir), None, None
    if info.is_main:
        try:
            writer = tensorboard_writer(cfg)
            out = check_output_dir(cfg, resume, overwrite)
            keep_built = ("--resume goes on with the data the run was trained on: restore its config and "
                          "corpus, or start over with --overwrite") if resume else None
            prepared = prepare_data(cfg, log=log, keep_built=keep_built)
        except UserError as exc:
            refused = exc
    stop_all_if_main_failed(refused, info)
    if not info.is_main:
        prepared = prepare_data(cfg, log=log)  # up to date now: only loads
    return out, prepared, writer
