"""Which CPU fast paths this process uses: decided once, by running each on a tiny input.

Every fast path in this package exists for some processors and some PyTorch builds only: an op
can be missing from a build, raise on a processor without the instructions it needs (oneDNN's
packed bf16 weights want AVX-512 or AVX-NE-CONVERT), or, in principle, compute something else.
So nothing is assumed from the processor's name or flags: the first time a path is asked for,
its op runs on a tiny input and its answer is compared with stock PyTorch's. A path that is
missing, raises or disagrees is not used, and its callers run stock PyTorch instead.

``configure("off")`` (``train.cpu_kernels: off`` in a config, ``--cpu-kernels off`` on the
command line) turns every path off, and so does ``ATTN_CPU_KERNELS=off`` in the environment,
which wins over both (the portable test run sets it). Nothing here runs at import time.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

MODES = ("auto", "off")
ENV_VAR = "ATTN_CPU_KERNELS"


@dataclass(frozen=True)
class Decision:
    """One fast path's verdict: ``value`` is what callers use (an op, or True), None when off."""

    value: Any
    reason: str  # why it is on or off, for `attn kernels` and the tests' skip reasons

    def __bool__(self) -> bool:
        return self.value is not None


_mode = "auto"
_decisions: dict[str, Decision] = {}


def configure(mode: str) -> None:
    """Use the fast paths (``auto``: where the probe finds they work) or none (``off``)."""
    global _mode
    if mode not in MODES:
        raise ValueError(f"cpu kernels mode must be one of {MODES}, not {mode!r}")
    _mode = mode


def mode() -> str:
    """The mode in force: the environment's ``ATTN_CPU_KERNELS=off`` wins over ``configure``."""
    return "off" if os.environ.get(ENV_VAR, "").strip().lower() == "off" else _mode


def reset() -> None:
    """Forget the decisions (tests that swap an op for a broken one probe again)."""
    _decisions.clear()


def decision(name: str) -> Decision:
    """The decision for fast path ``name`` (one of PROBES), probing it the first time."""
    if mode() == "off":
        return Decision(None, "off (cpu kernels: off)")
    found = _decisions.get(name)
    if found is None:
        found = _decisions[name] = _run(PROBES[name])
    return found


def get(name: str) -> Any:
    """The fast path's op (or True) where it is used, else None. Cheap after the first call."""
    return decision(name).value


def decisions() -> dict[str, Decision]:
    """Every fast path's decision, probing those not yet probed."""
    return {name: decision(name) for name in PROBES}


def processor_name() -> str:
    """The CPU's model name as lscpu prints it (Linux), else what the platform module knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown processor"


def find_op(namespace: str, name: str) -> Callable | None:
    """``torch.ops.<namespace>.<name>``, or None where this build lacks it. Tests swap this."""
    try:
        return getattr(getattr(torch.ops, namespace), name)
    except (AttributeError, RuntimeError):
        return None


# ------------------------------------------------------------------------- the probes
# Each returns (value, reason): value None when the path must not be used. Exceptions count as
# "raises" (see _run). Inputs are tiny and fixed, so a probe costs a millisecond or so.


def _tiny(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(len(shape) * 7 + sum(shape))
    return torch.randn(*shape, generator=generator).to(dtype)


def _probe_onednn_linear() -> tuple[Any, str]:
    if not torch.backends.mkldnn.is_available():
        return None, "this PyTorch build has no oneDNN"
    op = find_op("mkldnn", "_linear_pointwise")
    if op is None:
        return None, "torch.ops.mkldnn._linear_pointwise is missing from this PyTorch"
    x, weight, bias = _tiny(3, 8), _tiny(5, 8), _tiny(5)
    if not torch.allclose(op(x, weight, bias, "none", [], ""), F.linear(x, weight, bias), rtol=1e-4, atol=1e-5):
        return None, "oneDNN's linear disagrees with F.linear"
    return op, "oneDNN linear runs float32 products"


def _probe_packed(dtype: torch.dtype) -> tuple[Any, str]:
    linear = get("onednn_linear")
    if linear is None:
        return None, "needs onednn_linear"
    reorder = find_op("mkldnn", "_reorder_linear_weight")
    if reorder is None:
        return None, "torch.ops.mkldnn._reorder_linear_weight is missing from this PyTorch"
    x, weight, bias = _tiny(3, 8, dtype=dtype), _tiny(5, 8, dtype=dtype), _tiny(5, dtype=dtype)
    got = linear(x, reorder(weight, 3), bias, "none", [], "")
    tolerance = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    if got.dtype != dtype or not torch.allclose(got.float(), F.linear(x, weight, bias).float(), **tolerance):
        return None, f"oneDNN's packed {dtype} weights disagree with F.linear"
    return reorder, f"oneDNN packs {str(dtype).removeprefix('torch.')} weights for decoding"


def _probe_fast_dropout() -> tuple[Any, str]:
    from seq2seq.kernels.fastops import dropout_noise

    noise = dropout_noise((257,), 0.25)
    kept = 65536 / (65536 - 16384)
    if not bool(((noise == 0) | (noise == kept)).all()) or not 0 < int((noise == 0).sum()) < 257:
        return None, "the 16-bit dropout noise is not 0 or 1/keep"
    return True, "dropout draws 16 random bits per element"


def _probe_fast_tanh() -> tuple[Any, str]:
    from seq2seq.kernels.fastops import sigmoid_tanh_

    x = torch.linspace(-9, 9, 97)
    if not torch.allclose(sigmoid_tanh_(x.clone()), torch.tanh(x), rtol=0, atol=1e-6):
        return None, "2 sigmoid(2x) - 1 disagrees with torch.tanh"
    return True, "tanh of big tensors as 2 sigmoid(2x) - 1"


def _probe_deferred_lstm() -> tuple[Any, str]:
    if get("onednn_linear") is None:
        return None, "needs onednn_linear"
    from seq2seq.kernels.lstm_step import matches_nn_lstm

    if not matches_nn_lstm():
        return None, "DeferredLSTM's gradients disagree with nn.LSTM's"
    return True, "LSTM decoder steps defer their weight gradients to one product"


def _probe_bf16() -> tuple[Any, str]:
    """Not a fast path: whether bf16 products run at all here (stock PyTorch), for the
    precision checks; the result does not depend on the mode."""
    x, weight = _tiny(3, 8), _tiny(5, 8)
    got = F.linear(x.bfloat16(), weight.bfloat16()).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = F.linear(x, weight).float()
    expected = F.linear(x, weight)
    if not (torch.allclose(got, expected, rtol=3e-2, atol=3e-2) and torch.allclose(autocast, expected, rtol=3e-2, atol=3e-2)):
        return None, "bf16 products disagree with float32 ones"
    return True, "bf16 products run"


PROBES: dict[str, Callable[[], tuple[Any, str]]] = {
    "onednn_linear": _probe_onednn_linear,
    "onednn_packed_fp32": lambda: _probe_packed(torch.float32),
    "onednn_packed_bf16": lambda: _probe_packed(torch.bfloat16),
    "fast_dropout": _probe_fast_dropout,
    "fast_tanh": _probe_fast_tanh,
    "deferred_lstm": _probe_deferred_lstm,
}


def _run(probe: Callable[[], tuple[Any, str]]) -> Decision:
    try:  # own RNG: probing must not shift the random numbers of the run (dropout, resume)
        with torch.random.fork_rng(devices=[]):
            value, reason = probe()
    except Exception as exc:  # noqa: BLE001 - any failure of the op means: do not use it
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return Decision(None, f"raises {type(exc).__name__}: {first_line[:160]}")
    return Decision(value, reason)


_bf16: Decision | None = None


def bf16_runs() -> Decision:
    """Whether bf16 products run on this CPU at all (stock PyTorch; any mode)."""
    global _bf16
    if _bf16 is None:
        _bf16 = _run(_probe_bf16)
    return _bf16
