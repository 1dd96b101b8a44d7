"""Thin helpers over torch.distributed, for runs launched with ``torchrun``.

attn never launches processes itself: ``torchrun --nproc_per_node N -m cli.main train ...``
sets RANK/WORLD_SIZE/LOCAL_RANK and we join that group (NCCL for a run on GPUs, gloo on CPU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from seq2seq.errors import MainRankFailed, UserError

# How long a rank waits in a collective. The others wait for rank 0 while it validates (and
# while it tokenizes, the first time): NCCL's default of 10 minutes would abort a run whose
# validation set takes longer to decode. A corpus that takes longer to tokenize than this is
# tokenized first with `attn tokenize` (see the README).
COLLECTIVE_TIMEOUT = timedelta(hours=1)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def dist_info() -> DistInfo:
    """This process's place in the group torchrun describes; a plain single process otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    return DistInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))


def join_group(info: DistInfo, device: torch.device) -> None:
    """Join the process group with the backend of the device training runs on: NCCL takes
    only GPU tensors, so a run with train.device=cpu on a machine with GPUs uses gloo."""
    if not info.enabled or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT)


def stop_all_if_main_failed(error: UserError | None, info: DistInfo) -> None:
    """Rank 0's start-up error (``error``, None when it has none) stops every rank.

    Only rank 0 checks the output folder and prepares the data. Without this the others
    would die in the next collective with a transport traceback, which torchrun then reports
    as the root cause. Also a barrier: no rank goes on before rank 0 is ready.
    """
    if info.enabled:
        message = [str(error) if error is not None else None]
        dist.broadcast_object_list(message, src=0)
        if message[0] is not None and not info.is_main:
            raise MainRankFailed(message[0])
    if error is not None:
        raise error


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(obj: object, info: DistInfo) -> list:
    """``obj`` from every rank, in rank order (a one-item list on a single process)."""
    if not info.enabled:
        return [obj]
    gathered: list = [None] * info.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_from_main(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    """Rank 0's numbers (a validation's decisions, the plateau's learning-rate scale) for every
    rank, so that all stop together and step with the same learning rate. float64, so a scale
    arrives exactly as rank 0 holds it: replicas with learning rates a rounding apart drift."""
    if not info.enabled:
        return list(values)
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return t.tolist()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
