"""bf16 on this machine: refused up front where it cannot run, a warning where it is emulated."""

from __future__ import annotations

import torch

from seq2seq.errors import UserError
from seq2seq.kernels import probe


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 products run natively: on a GPU, or a CPU with AVX512-BF16 or AMX.

    Elsewhere PyTorch emulates them with float32 instructions and conversions, usually slower
    than float32 itself. The CPU checks are private PyTorch functions, so a torch without them
    (or one where they raise) is answered "native": no warning rather than a wrong one."""
    if device.type != "cpu":
        return True
    try:
        checks = [getattr(torch.cpu, name) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return any(check() for check in checks)
    except Exception:  # noqa: BLE001 - missing or failing private checks: do not guess
        return True


def check_bf16(device: torch.device, key: str) -> str | None:
    """For ``key`` (say, train.precision) set to bf16: a UserError where bf16 products do not
    run on this CPU at all; else the warning to show where they are emulated (or None)."""
    if device.type != "cpu":
        return None
    runs = probe.bf16_runs()
    if not runs:
        raise UserError(f"{key}: bf16 does not run on this CPU ({runs.reason}); use fp32")
    if native_bf16(device):
        return None
    return (f"{key} bf16: this CPU has neither AVX512-BF16 nor AMX, so PyTorch emulates bf16 "
            "and it is likely slower than fp32; use fp32")
