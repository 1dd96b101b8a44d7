"""Linear layers whose float32 matrix products run on oneDNN instead of MKL on the CPU.

PyTorch multiplies float32 matrices on the CPU with MKL, and MKL picks its fast AVX-512 code
only on Intel processors; oneDNN (bundled with PyTorch for its bf16 and RNN kernels) was much
faster on the same products on AMD's, in float32, with float32 rounding (figures in the README's
benchmark section). ``linear`` computes ``F.linear`` with oneDNN there, forward and backward;
bf16 (autocast or bf16 weights), other devices, and where the probe (``probe.py``) turned the
op down use ``F.linear`` as before.

Decoding multiplies the same weights by a few dozen rows at every step, and there oneDNN is
faster still with weights stored in its own blocked layout: ``packed_weights`` keeps such a copy
of every ``Linear`` weight for the duration of a translation, in the dtypes whose probe passed
(packed bf16 needs AVX-512 or AVX-NE-CONVERT).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from seq2seq.kernels import probe


@probe.register("onednn_linear")
def _probe_linear() -> tuple[object, str]:
    if not torch.backends.mkldnn.is_available():
        return None, "this PyTorch build has no oneDNN"
    op = probe.find_op("mkldnn", "_linear_pointwise")
    if op is None:
        return None, "torch.ops.mkldnn._linear_pointwise is missing from this PyTorch"
    x, weight, bias = probe.tiny(3, 8), probe.tiny(5, 8), probe.tiny(5)
    if not torch.allclose(op(x, weight, bias, "none", [], ""), F.linear(x, weight, bias), rtol=1e-4, atol=1e-5):
        return None, "oneDNN's linear disagrees with F.linear"
    return op, "oneDNN linear runs float32 products"


def _probe_packed(dtype: torch.dtype) -> tuple[object, str]:
    linear_op = probe.get("onednn_linear")
    if linear_op is None:
        return None, "needs onednn_linear"
    reorder = probe.find_op("mkldnn", "_reorder_linear_weight")
    if reorder is None:
        return None, "torch.ops.mkldnn._reorder_linear_weight is missing from this PyTorch"
    x, weight, bias = (probe.tiny(*shape, dtype=dtype) for shape in ((3, 8), (5, 8), (5,)))
    got = linear_op(x, reorder(weight, 3), bias, "none", [], "")
    tolerance = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    if got.dtype != dtype or not torch.allclose(got.float(), F.linear(x, weight, bias).float(), **tolerance):
        return None, f"oneDNN's packed {dtype} weights disagree with F.linear"
    return reorder, f"oneDNN packs {str(dtype).removeprefix('torch.')} weights for decoding"


probe.register("onednn_packed_fp32")(lambda: _probe_packed(torch.float32))
probe.register("onednn_packed_bf16")(lambda: _probe_packed(torch.bfloat16))

def uses_onednn(x: Tensor, weight: Tensor, dtypes: tuple[torch.dtype, ...] = (torch.float32,)) -> bool:
    """Whether ``linear(x, weight)`` runs on oneDNN (``dtypes``: those it is wanted for)."""
    return (x.device.type == "cpu" and x.dtype == weight.dtype and x.dtype in dtypes
            and not torch.is_autocast_enabled("cpu") and probe.get("onednn_linear") is not None)


def onednn_matmul_nt(a: Tensor, b: Tensor, bias: Tensor | None = None) -> Tensor:
    """a @ b.T (+ bias) with oneDNN: a [..., K], b [N, K] -> [..., N]. Float32 CPU tensors only."""
    return probe.get("onednn_linear")(_no_broadcast(a), _no_broadcast(b), bias, "none", [], "")


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
    would use it. oneDNN is fastest with the wider of N and K as its "weight" operand."""
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


# Packed in bf16 too (a bf16 copy of a model decodes with bf16 weights): the blocked layout is
# faster at decoding's row counts where oneDNN multiplies bf16 natively.
_PACKED = {torch.float32: "onednn_packed_fp32", torch.bfloat16: "onednn_packed_bf16"}


def _packing(x: Tensor, weight: Tensor):
    """oneDNN's weight reorder op where a no-gradient product of x and weight may use it, else None."""
    name = _PACKED.get(x.dtype)
    if name is None or torch.is_grad_enabled() or not uses_onednn(x, weight, tuple(_PACKED)):
        return None
    return probe.get(name)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state dict) computed by ``linear``; inside
    ``packed_weights``, without gradients, with a copy of its weight in oneDNN's layout."""

    packed_rows: int | None = None  # set inside packed_weights
    packed: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.packed_rows is not None and (reorder := _packing(x, self.weight)) is not None:
            if self.packed is None:  # at first use: layers the search never calls stay unpacked
                self.packed = reorder(self.weight.detach(), self.packed_rows)
            return probe.get("onednn_linear")(_no_broadcast(x), self.packed, self.bias, "none", [], "")
        return linear(x, self.weight, self.bias)


@contextlib.contextmanager
def packed_weights(model: nn.Module, rows: int) -> Iterator[None]:
    """Inside, ``model``'s Linear layers multiply (without gradients) by copies of their
    weights reordered for about ``rows`` input rows; the copies are freed on leaving, so weights
    that change afterwards (a model in training, validated now and then) are never stale.
    Only for a model on the CPU, and only where a packed dtype passed its probe."""
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    wanted = on_cpu and any(probe.get(name) is not None for name in _PACKED.values())
    layers = [m for m in model.modules() if isinstance(m, Linear)] if wanted else []
    for layer in layers:
        layer.packed_rows = rows
    try:
        yield
    finally:
        for layer in layers:
            layer.packed_rows = layer.packed = None
