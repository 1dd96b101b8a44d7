"""Reading device values on the host without stalling a GPU.

On a GPU every value the host reads from the device (``.item()``, ``int()``, ``bool()``, a
boolean mask's size) makes it wait until the device has done all the work queued so far, and
the device then idles while the host queues the next step. These helpers read several values
with one wait, send host values back without one, or read a value one step late. On the CPU
they cost nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor


def fetch_to_host(*tensors: Tensor | None) -> list[Tensor | None]:
    """CPU copies of ``tensors`` (None stays None), with one wait for the device for all of them
    instead of one wait each."""
    copies = [None if t is None else t.to("cpu", non_blocking=True) for t in tensors]
    on_gpu = [t for t in tensors if t is not None and t.is_cuda]
    if on_gpu:
        torch.cuda.current_stream(on_gpu[0].device).synchronize()
    return copies


def host_to_device(host: Tensor, device: torch.device) -> Tensor:
    """A tensor the host computed, on ``device``: from pinned memory the copy is queued behind
    the device's work like a kernel, without making the host wait."""
    if device.type == "cpu":
        return host
    return host.pin_memory().to(device, non_blocking=True)


class DelayedCopy:
    """A device tensor's values on the host one step late, so that reading them never stalls.

    ``swap(tensor)`` starts copying ``tensor`` to pinned host memory and returns the copy that
    the previous ``swap`` started (None the first time). Waiting for that copy waits for the
    previous step's work only, while this step's is queued behind it and keeps the device busy.
    (The trainer reads its interrupt flag the same way.) A CPU tensor is simply kept a step.
    """

    def __init__(self) -> None:
        self.pending: tuple[Tensor, torch.cuda.Event | None] | None = None

    def swap(self, tensor: Tensor) -> Tensor | None:
        previous = self.pending
        if tensor.is_cuda:
            host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            host.copy_(tensor, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record()
            self.pending = (host, copied)
        else:
            self.pending = (tensor.clone(), None)
        if previous is None:
            return None
        if previous[1] is not None:
            previous[1].synchronize()
        return previous[0]

    def forget(self) -> None:
        """Drop the copy in flight: the rows it describes have changed."""
        self.pending = None
