"""bf16 on this machine: refused up front where it cannot run, a warning where it is emulated."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from seq2seq.errors import UserError
from seq2seq.kernels import probe


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 products run natively: on a GPU from compute capability 8.0 (Ampere) on, or
    a CPU with AVX512-BF16 or AMX.

    Elsewhere PyTorch emulates them with float32 instructions and conversions, usually slower
    than float32 itself. The CPU checks are private PyTorch functions, so a torch without them
    (or one where they raise) is answered "native": no warning rather than a wrong one."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type != "cpu":
        return True
    try:
        checks = [getattr(torch.cpu, name) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return any(check() for check in checks)
    except Exception:  # noqa: BLE001 - missing or failing private checks: do not guess
        return True


@functools.cache
def bf16_runs() -> probe.Decision:
    """Whether bf16 products run on this CPU at all, plainly and under autocast (stock
    PyTorch, whatever the cpu kernels mode): the precision checks' question."""

    def products() -> tuple[object, str]:
        x, weight = probe.tiny(3, 8), probe.tiny(5, 8)
        got = F.linear(x.bfloat16(), weight.bfloat16()).float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = F.linear(x, weight).float()
        expected = F.linear(x, weight)
        close = {"rtol": 3e-2, "atol": 3e-2}
        if not (torch.allclose(got, expected, **close) and torch.allclose(autocast, expected, **close)):
            return None, "bf16 products disagree with float32 ones"
        return True, "bf16 products run"

    return probe.run(products)


def check_bf16(device: torch.device, key: str) -> str | None:
    """For ``key`` (say, train.precision) set to bf16: a UserError where bf16 products do not
    run on this CPU at all; else the warning to show where they are emulated (or None)."""
    if device.type == "cpu" and not (runs := bf16_runs()):
        raise UserError(f"{key}: bf16 does not run on this CPU ({runs.reason}); use fp32")
    if native_bf16(device):
        return None
    if device.type == "cuda":
        return (f"{key} bf16: this GPU (compute capability below 8.0) emulates bf16, likely slower than "
                "fp32 or fp16; use fp16 (train.precision) or fp32")
    return (f"{key} bf16: this CPU has neither AVX512-BF16 nor AMX, so PyTorch emulates bf16 "
            "and it is likely slower than fp32; use fp32")


@functools.cache
def bf16_rnn_runs() -> bool:
    """Whether an LSTM runs under CPU bf16 autocast here (forward and backward): oneDNN's bf16
    RNN kernel needs AVX-512, and without it the LSTM raises. Where it does not, the RNN
    models run their RNN calls in float32 (models/rnn_layers.py), the rest in bf16."""

    def lstm() -> tuple[object, str]:
        module = torch.nn.LSTM(4, 4, batch_first=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output, _ = module(probe.tiny(2, 3, 4))
        output.float().sum().backward()
        return True, "an LSTM runs under bf16 autocast"

    return bool(probe.run(lstm))
