"""What this machine's processor does natively, where it changes what a setting costs."""

from __future__ import annotations

import torch


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 products run natively: on a GPU, or a CPU with AVX512-BF16 or AMX.

    Elsewhere PyTorch emulates them with float32 instructions and conversions, usually slower
    than float32 itself."""
    if device.type != "cpu":
        return True
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if None in checks:  # a torch without these (private) checks: do not guess
        return True
    return any(check() for check in checks)


def emulated_bf16_warning(device: torch.device, key: str) -> str | None:
    """The warning for ``key`` (say, train.precision) set to bf16 where bf16 is emulated."""
    if native_bf16(device):
        return None
    return (f"{key} bf16: this CPU has neither AVX512-BF16 nor AMX, so PyTorch emulates bf16 "
            "and it is likely slower than fp32; use fp32")
