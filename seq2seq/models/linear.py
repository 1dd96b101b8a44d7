"""Linear layers whose float32 matrix products run on oneDNN instead of MKL on the CPU.

PyTorch multiplies float32 matrices on the CPU with MKL, and MKL picks its fast AVX-512 code
only on Intel processors: on the AMD EPYC (Zen 5) that attn is benchmarked on it ran at
160-180 GFLOP/s on 2 threads, where oneDNN (bundled with PyTorch for its bf16 and RNN kernels)
reached 360-400 GFLOP/s on the same products, in float32, with float32 rounding (no reduced
precision). ``linear`` computes ``F.linear`` with oneDNN there, forward and backward; bf16
(autocast or bf16 weights), other devices, and builds without oneDNN use ``F.linear`` as before.
``ONEDNN_LINEAR = False`` turns it off (for A/B measurements).

Decoding multiplies the same weights by a few dozen rows at every step, and there oneDNN is
faster still with weights stored in its own blocked layout: ``packed_weights`` keeps such a copy
of every ``Linear`` weight for the duration of a translation (measured on config T, 64 rows:
the 8,000-word output layer 1.09 -> 0.63 ms, greedy decoding of 640 sentences 5.6 -> 4.5 s).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable


def _onednn_linear_op():
    """torch.ops.mkldnn._linear_pointwise (x, weight [N,K], bias, ...) -> x @ weight.T + bias, or None."""
    try:
        if not torch.backends.mkldnn.is_available():
            return None
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None


# Two caches keep about 0.5 MB for every input shape they have seen, 1,024 shapes each by
# default: oneDNN's compiled kernels and PyTorch's (ideep's) LRU cache of prepared products.
# Training sees a new row count with nearly every batch, so config T's peak RSS grew step after
# step (2.5 GB after 135 steps, against 1.3 GB with both at 16); 16 made it no slower. But one
# training step of config R (an LSTM decoder run step by step, with attention) uses more than
# 16 kernels, which then evicted each other at every decoder step: 32 kernels made R 10-15 %
# faster (4,100-4,500 -> 4,500-5,100 tok/s) and T no slower, for 50 MB more; 64 was no faster
# than 32. Both are read when oneDNN first runs, so they are set before any model exists.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "32")
os.environ.setdefault("LRU_CACHE_CAPACITY", "16")
_LINEAR_POINTWISE = _onednn_linear_op()
ONEDNN_LINEAR = _LINEAR_POINTWISE is not None


def uses_onednn(x: Tensor, weight: Tensor, dtypes: tuple[torch.dtype, ...] = (torch.float32,)) -> bool:
    """Whether ``linear(x, weight)`` runs on oneDNN (``dtypes``: those it is wanted for)."""
    return (ONEDNN_LINEAR and x.device.type == "cpu" and x.dtype == weight.dtype and x.dtype in dtypes
            and not torch.is_autocast_enabled("cpu"))


def onednn_matmul_nt(a: Tensor, b: Tensor, bias: Tensor | None = None) -> Tensor:
    """a @ b.T (+ bias) with oneDNN: a [..., K], b [N, K] -> [..., N]. Float32 CPU tensors only."""
    return _LINEAR_POINTWISE(_no_broadcast(a), _no_broadcast(b), bias, "none", [], "")


def _no_broadcast(x: Tensor) -> Tensor:
    """x, copied if it repeats memory (a stride-0 dimension, as the gradient of a sum has):
    oneDNN takes a reference kernel for those, 600x slower."""
    return x.contiguous() if 0 in x.stride() else x


def matmul_nt(a: Tensor, b: Tensor) -> Tensor:
    """a @ b.T, on oneDNN where ``linear`` would use it."""
    return onednn_matmul_nt(a, b) if uses_onednn(a, b) else a @ b.t()


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``; float32 on the CPU through oneDNN (see the module docstring)."""
    if not uses_onednn(x, weight):
        return F.linear(x, weight, bias)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        # 2-D inside the autograd function, reshaped outside: an output that is a view made
        # inside a custom function may not be modified in place (ReLUDropout does).
        rows = _OneDNNLinear.apply(x.reshape(-1, x.size(-1)), weight, bias)
        return rows.view(*x.shape[:-1], weight.size(0))
    return onednn_matmul_nt(x, weight, bias)


def matmul_tn(a: Tensor, b: Tensor) -> Tensor:
    """a.T @ b for a [M,N] and b [M,K] -> [N,K] (a weight's gradient), on oneDNN where ``linear``
    would use it. oneDNN was fastest with the wider of N and K as its "weight" operand
    (measured: 260-360 against 190-240 GFLOP/s the other way round)."""
    if not uses_onednn(a, b):
        return a.t() @ b
    if a.size(1) >= b.size(1):
        return onednn_matmul_nt(b.t(), a.t()).t()
    return onednn_matmul_nt(a.t(), b.t())


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:  # x [M,K]
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return onednn_matmul_nt(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = onednn_matmul_nt(grad, weight.t())
        if ctx.needs_input_grad[1]:
            grad_weight = matmul_tn(grad, x).contiguous()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(dim=0)
        return grad_x, grad_weight, grad_bias


# bf16 too (a bf16 copy of a model decodes with bf16 weights): oneDNN multiplies bf16 in any
# case, and the blocked layout made it 10-25 % faster at decoding's row counts.
_PACKED_DTYPES = (torch.float32, torch.bfloat16)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state dict) computed by ``linear``; inside
    ``packed_weights``, without gradients, with a copy of its weight in oneDNN's layout."""

    packed_rows: int | None = None  # set inside packed_weights
    packed: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        if (self.packed_rows is not None and not torch.is_grad_enabled()
                and uses_onednn(x, self.weight, _PACKED_DTYPES)):
            if self.packed is None:  # at first use: layers the search never calls stay unpacked
                self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), self.packed_rows)
            return _LINEAR_POINTWISE(_no_broadcast(x), self.packed, self.bias, "none", [], "")
        return linear(x, self.weight, self.bias)


@contextlib.contextmanager
def packed_weights(model: nn.Module, rows: int) -> Iterator[None]:
    """Inside, ``model``'s Linear layers multiply (without gradients) by copies of their
    weights reordered for about ``rows`` input rows; the copies are freed on leaving, so weights
    that change afterwards (a model in training, validated now and then) are never stale."""
    layers = [m for m in model.modules() if isinstance(m, Linear)] if ONEDNN_LINEAR else []
    for layer in layers:
        layer.packed_rows = rows
    try:
        yield
    finally:
        for layer in layers:
            layer.packed_rows = layer.packed = None
