"""Skipping a non-finite update inside the fused optimizer, where this PyTorch lets us.

Fused Adam/AdamW (one kernel for all parameters, CPU and GPU) read an undocumented attribute,
``found_inf``, that GradScaler sets: where it is nonzero they leave parameters and moments
alone. Setting it ourselves skips a bad update without the host ever reading the device. Being
undocumented, it is checked once per device type by a step on a one-element parameter; where
the optimizer ignores it, the trainer reads the flag on the host and skips the step itself.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor


@functools.cache
def found_inf_skips(device_type: str) -> bool:
    """Whether fused Adam on ``device_type`` skips its step when ``found_inf`` is 1."""
    try:
        param = torch.nn.Parameter(torch.ones(1, device=device_type))
        param.grad = torch.ones(1, device=device_type)
        optimizer = torch.optim.Adam([param], lr=0.1, fused=True)
        optimizer.found_inf = torch.ones((), device=device_type)
        optimizer.step()
        return bool((param == 1).all())
    except Exception:  # noqa: BLE001 - no fused Adam here, or it rejects the attribute
        return False


def step_unless(optimizer: torch.optim.Optimizer, bad: Tensor) -> None:
    """``optimizer.step()``, skipped where the 0-d tensor ``bad`` is true: on the device where the
    fused optimizer honours ``found_inf``, else by reading ``bad`` on the host."""
    if found_inf_skips(bad.device.type):
        optimizer.found_inf = bad.float()
        optimizer.step()
    elif not bool(bad):
        optimizer.step()
