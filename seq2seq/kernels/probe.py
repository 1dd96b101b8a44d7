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
        found = _decisions[name] = run(PROBES[name])
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
# Each module of this package registers its paths' probes (``@register``). A probe returns
# (value, reason), value None when the path must not be used; an exception counts as "raises".
# Inputs are tiny and fixed, so a probe costs a millisecond or so.

PROBES: dict[str, Callable[[], tuple[Any, str]]] = {}


def register(name: str) -> Callable[[Callable[[], tuple[Any, str]]], Callable[[], tuple[Any, str]]]:
    def add(check: Callable[[], tuple[Any, str]]) -> Callable[[], tuple[Any, str]]:
        PROBES[name] = check
        return check
    return add


def tiny(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A fixed small random tensor for a probe."""
    generator = torch.Generator().manual_seed(len(shape) * 7 + sum(shape))
    return torch.randn(*shape, generator=generator).to(dtype)


def run(probe: Callable[[], tuple[Any, str]]) -> Decision:
    """``probe``'s verdict, any exception it raises counting as "raises"."""
    # Its own RNG (probing must not shift the run's random numbers: dropout, resume), and the
    # same grad and autocast modes whoever asks first: the decision is kept for the process.
    try:
        with (torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.enable_grad(),
              torch.autocast("cpu", enabled=False)):
            value, reason = probe()
    except Exception as exc:  # noqa: BLE001 - any failure of the op means: do not use it
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return Decision(None, f"raises {type(exc).__name__}: {first_line[:160]}")
    return Decision(value, reason)
