"""Attention normalisers: scores -> weights that sum to 1 over the allowed positions.

    softmax    exp(z) / sum exp(z): every allowed position gets some weight
    sparsemax  the Euclidean projection of z onto the simplex (Martins and Astudillo 2016):
               p = max(z - tau, 0), so low scores get exactly 0
    entmax15   1.5-entmax (Peters, Niculae and Martins 2019): p = max(z/2 - tau, 0)^2, sparse
               like sparsemax but smoother; exact, by sorting

Each takes scores [..., S] and a boolean mask (True = may attend), computes in float32
whatever the scores' dtype (under autocast too), and gives masked positions exactly 0; a row
with no allowed position gets all zeros instead of NaN. Masking is truncation: a masked row
equals the same row cut to its allowed positions. sparsemax and entmax15 have closed-form
gradients (autograd functions below), checked against finite differences in the tests.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

NORMALIZERS = ("softmax", "sparsemax", "entmax15")


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the last dim where ``mask`` is True; masked positions get exactly 0.

    Every row must keep at least one True (a source always holds EOS, and a local window
    always holds its centre), otherwise the row is NaN.
    """
    return scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)


def masked_sparsemax(scores: Tensor, mask: Tensor) -> Tensor:
    return _masked(_Sparsemax.apply, scores, mask)


def masked_entmax15(scores: Tensor, mask: Tensor) -> Tensor:
    return _masked(_Entmax15.apply, scores, mask)


def normalizer(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    """The masked normaliser called ``name`` (one of NORMALIZERS)."""
    return {"softmax": masked_softmax, "sparsemax": masked_sparsemax, "entmax15": masked_entmax15}[name]


def _masked(apply: Callable[[Tensor], Tensor], scores: Tensor, mask: Tensor) -> Tensor:
    """``apply`` over the last dim in float32, masked positions pushed far below every allowed
    score (finite, so the sort-based thresholds stay finite) and zeroed afterwards."""
    mask = mask.expand_as(scores)
    z = scores.float()
    floor = z.detach().masked_fill(~mask, float("inf")).amin(dim=-1, keepdim=True)
    floor = torch.where(torch.isfinite(floor), floor, torch.zeros_like(floor))
    # 1e4 below the lowest allowed score: a masked position can never enter the support.
    z = torch.where(mask, z, floor - 1e4)
    return apply(z).masked_fill(~mask, 0.0)


def sparsemax_threshold(z: Tensor) -> Tensor:
    """tau with sum(max(z - tau, 0)) = 1, over the last dim: [..., 1]."""
    sorted_z, _ = z.sort(dim=-1, descending=True)
    k = torch.arange(1, z.size(-1) + 1, device=z.device, dtype=z.dtype)
    cumulative = sorted_z.cumsum(dim=-1) - 1
    support = (k * sorted_z > cumulative).sum(dim=-1, keepdim=True)  # the largest k that qualifies
    return cumulative.gather(-1, support - 1) / support.to(z.dtype)


def entmax15_threshold(z: Tensor) -> Tensor:
    """tau with sum(max(z - tau, 0)^2) = 1, over the last dim (z already halved): [..., 1].

    For the k largest scores the equation is quadratic in tau; its root is the mean minus
    sqrt((1 - k * variance) / k). The support is the largest k whose root lies below the k-th
    score (Peters et al. 2019, Algorithm 2).
    """
    sorted_z, _ = z.sort(dim=-1, descending=True)
    k = torch.arange(1, z.size(-1) + 1, device=z.device, dtype=z.dtype)
    mean = sorted_z.cumsum(dim=-1) / k
    mean_square = (sorted_z * sorted_z).cumsum(dim=-1) / k
    variance = mean_square - mean * mean
    tau = mean - torch.sqrt(torch.clamp((1 - k * variance) / k, min=0))
    support = (tau <= sorted_z).sum(dim=-1, keepdim=True)
    return tau.gather(-1, support - 1)


class _Sparsemax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor) -> Tensor:
        p = torch.clamp(z - sparsemax_threshold(z), min=0)
        ctx.save_for_backward(p)
        return p

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:
        # On the support the Jacobian is I - 1 1^T / |S|; elsewhere 0.
        (p,) = ctx.saved_tensors
        support = (p > 0).to(grad.dtype)
        mean = (grad * support).sum(dim=-1, keepdim=True) / support.sum(dim=-1, keepdim=True)
        return support * (grad - mean)


class _Entmax15(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor) -> Tensor:
        half = z / 2
        p = torch.clamp(half - entmax15_threshold(half), min=0) ** 2
        ctx.save_for_backward(p)
        return p

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:
        # With s = sqrt(p): dp/dz = diag(s) - s s^T / sum(s) (Peters et al. 2019).
        (p,) = ctx.saved_tensors
        s = p.sqrt()
        weighted = grad * s
        return weighted - s * weighted.sum(dim=-1, keepdim=True) / s.sum(dim=-1, keepdim=True)
