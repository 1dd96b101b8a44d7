"""Faster CPU versions of a few standard operations, used by every model (dropout, and
tanh on big tensors: see ``tanh_``).

Dropout. ``F.dropout`` on the CPU draws one Bernoulli number per element with a scalar
generator, as slow as dozens of elementwise multiplications (README, "Why the fast paths").
``dropout`` here draws 64 random bits per *four*
elements from the same default generator (so ``torch.manual_seed`` and the checkpointed RNG
state still make runs repeatable) and keeps an element when its 16 bits are at least the
threshold: the drop probability is round(p * 65536) / 65536, within 8e-6 of p, and the kept
elements are scaled by the exact inverse of the keep probability, so the expectation is
unchanged. On other devices, and where the probe turned it down, it is ``F.dropout`` itself.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from seq2seq.kernels import probe

_LEVELS = 1 << 16  # 16 random bits per element


def dropout_noise(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | None = None,
                  dtype: torch.dtype = torch.float32) -> Tensor:
    """0 (dropped) or 1 / keep_probability for every element of ``shape``."""
    numel = math.prod(shape)
    drop_levels = round(p * _LEVELS)
    bits = torch.empty((numel + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)
    noise = torch.empty(shape, dtype=dtype, device=device)
    # Comparing straight into a float tensor is one pass; a bool mask then torch.where is three.
    torch.ge(bits.view(torch.int16)[:numel].view(shape), drop_levels - _LEVELS // 2, out=noise)
    return noise.mul_(_LEVELS / (_LEVELS - drop_levels))


def _fast_path(x: Tensor, p: float) -> bool:
    """Whether the fast noise applies: float CPU tensors, and not inside torch.compile, whose
    graph breaks at random_ (F.dropout it compiles into the graph)."""
    return (x.device.type == "cpu" and p < 1.0 and x.is_floating_point() and not torch.compiler.is_compiling()
            and probe.get("fast_dropout") is not None)


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """``F.dropout(x, p, training)``, with the fast noise on the CPU (see the module docstring)."""
    if not training or p == 0.0:
        return x
    if not _fast_path(x, p):
        return F.dropout(x, p, training)
    return x * dropout_noise(x.shape, p, x.device, x.dtype)


def relu_dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """``dropout(relu(x), p, training)`` in one autograd node that saves only its output.
    It may overwrite x: call it on a fresh tensor that nothing else reads (a Linear's output).

    The output is what the next linear layer saves anyway, and it is > 0 exactly where the
    gradient passes (x > 0 and kept), with the one factor 1 / keep_probability; separately,
    ReLU would save its output and dropout its noise, two more tensors of the FFN's width.
    """
    if not training or p == 0.0:
        # In place where no gradient flows back (decoding): one FFN-wide tensor less, which for
        # a big batch is above glibc's ceiling for reuse and would be page-faulted in afresh.
        return torch.relu(x) if torch.is_grad_enabled() and x.requires_grad else x.relu_()
    if not _fast_path(x, p):
        return F.dropout(torch.relu(x), p, training)
    return _ReluDropout.apply(x, p)


class _ReluDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, p: float) -> Tensor:
        noise = dropout_noise(x.shape, p, x.device, x.dtype)
        # In place: x is a Linear's output, which its backward does not need (autograd's
        # version counter would object if anything did), so no FFN-wide tensor is added.
        ctx.mark_dirty(x)
        out = x.clamp_(min=0).mul_(noise)
        ctx.save_for_backward(out)
        ctx.scale = _LEVELS / (_LEVELS - round(p * _LEVELS))
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (out,) = ctx.saved_tensors
        passes = torch.gt(out, 0, out=torch.empty_like(grad))
        return passes.mul_(grad).mul_(ctx.scale), None


def tanh_(x: Tensor) -> Tensor:
    """tanh(x), in place where it can be: as 2 * sigmoid(2x) - 1, within 2e-7 of torch.tanh.

    torch.tanh on the CPU goes through MKL's vector math, which on AMD processors runs a generic
    code path, ten times slower than torch's own vectorised sigmoid; four in-place passes of the
    formula are several times faster (README, benchmarks). Used where tanh meets a big tensor
    (additive attention's [B,T,S,A] energies); its backward is tanh's, 1 - y^2. CPU only: on a
    GPU, and where the probe turned it down, this is torch.tanh (not in place).
    """
    if x.device.type != "cpu" or probe.get("fast_tanh") is None:
        return torch.tanh(x)
    if x.requires_grad:
        return _TanhInplace.apply(x)
    return sigmoid_tanh_(x)


def sigmoid_tanh_(x: Tensor) -> Tensor:
    """tanh(x) = 2 * sigmoid(2x) - 1, computed in place in x."""
    return x.mul_(2.0).sigmoid_().mul_(2.0).sub_(1.0)


class _TanhInplace(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.mark_dirty(x)
        y = sigmoid_tanh_(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:
        # In place on y, the tensor as big as the attention energies: its other reader (the
        # next layer's backward) has already run, and a fresh tensor per decoder step costs
        # page faults. A second backward fails loudly (version check).
        (y,) = ctx.saved_tensors
        return y.square_().neg_().add_(1.0).mul_(grad)


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same attributes, same state dict) with the fast CPU noise."""

    def forward(self, x: Tensor) -> Tensor:
        if self.inplace:
            return super().forward(x)
        return dropout(x, self.p, self.training)


class ReLUDropout(nn.Module):
    """ReLU then dropout (``relu_dropout``); no parameters."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return relu_dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


# ------------------------------------------------------------------------- probes (probe.py)


@probe.register("fast_dropout")
def _probe_dropout() -> tuple[object, str]:
    noise = dropout_noise((257,), 0.25)
    kept = _LEVELS / (_LEVELS - round(0.25 * _LEVELS))
    if not bool(((noise == 0) | (noise == kept)).all()) or not 0 < int((noise == 0).sum()) < 257:
        return None, "the 16-bit dropout noise is not 0 or 1/keep"
    return True, "dropout draws 16 random bits per element"


@probe.register("fast_tanh")
def _probe_tanh() -> tuple[object, str]:
    x = torch.linspace(-9, 9, 97)
    if not torch.allclose(sigmoid_tanh_(x.clone()), torch.tanh(x), rtol=0, atol=1e-6):
        return None, "2 sigmoid(2x) - 1 disagrees with torch.tanh"
    return True, "tanh of big tensors as 2 sigmoid(2x) - 1"
