"""Attention normalisers: scores -> weights that sum to 1 over the allowed positions.

    softmax    exp(z) / sum exp(z): every allowed position gets some weight
    sparsemax  the Euclidean projection of z onto the simplex (Martins and Astudillo 2016):
               p = max(z - tau, 0), so low scores get exactly 0
    entmax15   1.5-entmax (Peters, Niculae and Martins 2019): p = max(z/2 - tau, 0)^2, sparse
               like sparsemax but smoother; exact, by sorting
    entmax     alpha-entmax with alpha learned (Correia, Niculae and Martins 2019):
               p = max((alpha - 1) z - tau, 0)^(1 / (alpha - 1)), tau by bisection; alpha -> 1
               is softmax, 2 sparsemax. ``LearnedEntmax`` holds alpha = 1 + sigmoid(a), in (1, 2)

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

NORMALIZERS = ("softmax", "sparsemax", "entmax15", "entmax")


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


def masked_entmax(scores: Tensor, mask: Tensor, alpha: Tensor) -> Tensor:
    """alpha-entmax (``alpha`` in (1, 2], a 0-d tensor or one broadcasting against the scores,
    differentiable) where ``mask`` is True."""
    return _masked(lambda z: _EntmaxBisect.apply(z, alpha.float()), scores, mask)


def normalizer(name: str, alpha_shape: tuple[int, ...] = ()) -> Callable[[Tensor, Tensor], Tensor]:
    """The masked normaliser called ``name`` (one of NORMALIZERS); ``entmax`` is a module with
    its own learned alpha (``LearnedEntmax``), so each attention gets its own (one per head with
    ``alpha_shape`` (heads, 1, 1))."""
    if name == "entmax":
        return LearnedEntmax(alpha_shape)
    return {"softmax": masked_softmax, "sparsemax": masked_sparsemax, "entmax15": masked_entmax15}[name]


class LearnedEntmax(torch.nn.Module):
    """alpha-entmax whose alpha = 1 + sigmoid(a) is learned with the model, starting at 1.5;
    one alpha, or one per head (``shape`` broadcasting against the scores)."""

    def __init__(self, shape: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.alpha_logit = torch.nn.Parameter(torch.zeros(shape))

    @property
    def alpha(self) -> Tensor:
        return 1 + torch.sigmoid(self.alpha_logit)

    def forward(self, scores: Tensor, mask: Tensor) -> Tensor:
        return masked_entmax(scores, mask, self.alpha)


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


def _entmax_backward(grad: Tensor, g: Tensor) -> Tensor:
    """The gradient in the scores of every alpha-entmax (sparsemax is alpha = 2): with
    g = p^(2 - alpha) on the support and 0 elsewhere, dp/dz = diag(g) - g g^T / sum(g)
    (Peters, Niculae and Martins 2019)."""
    weighted = grad * g
    return weighted - g * weighted.sum(dim=-1, keepdim=True) / g.sum(dim=-1, keepdim=True)


class _Sparsemax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor) -> Tensor:
        p = torch.clamp(z - sparsemax_threshold(z), min=0)
        ctx.save_for_backward(p)
        return p

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:
        (p,) = ctx.saved_tensors
        return _entmax_backward(grad, (p > 0).to(grad.dtype))  # alpha = 2: g = 1 on the support


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
        (p,) = ctx.saved_tensors
        return _entmax_backward(grad, p.sqrt())  # alpha = 1.5: g = p^(1/2)


# Bisection halves the bracket of tau each time: 40 halvings leave it below float32's resolution.
BISECTION_STEPS = 40


def entmax_bisect(z: Tensor, alpha: Tensor) -> Tensor:
    """alpha-entmax over the last dim, by bisection on tau; rows renormalised to sum 1."""
    x = z * (alpha - 1)
    power = 1 / (alpha - 1)
    top = x.amax(dim=-1, keepdim=True)
    # At tau = top - 1 the top score alone reaches 1; at top - (1/n)^(alpha-1) all n together <= 1.
    low, high = top - 1, top - (1 / z.size(-1)) ** (alpha - 1)
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        total = torch.clamp(x - middle, min=0).pow(power).sum(dim=-1, keepdim=True)
        too_much = total >= 1
        low = torch.where(too_much, middle, low)
        high = torch.where(too_much, high, middle)
    p = torch.clamp(x - low, min=0).pow(power)
    return p / p.sum(dim=-1, keepdim=True)


class _EntmaxBisect(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor, alpha: Tensor) -> Tensor:
        p = entmax_bisect(z, alpha)
        ctx.save_for_backward(p, alpha)
        return p

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        # dp/dalpha from differentiating the optimality condition in alpha (Correia et al. 2019).
        p, alpha = ctx.saved_tensors
        support = p > 0
        g = torch.where(support, p.pow(2 - alpha), torch.zeros_like(p))
        grad_z = _entmax_backward(grad, g)
        p_log_p = torch.where(support, p * torch.log(torch.where(support, p, torch.ones_like(p))), torch.zeros_like(p))
        entropy_term = p_log_p.sum(dim=-1, keepdim=True)
        skewed = g / g.sum(dim=-1, keepdim=True)
        d_alpha = grad * (p - skewed) / (alpha - 1) ** 2 - grad * (p_log_p - skewed * entropy_term) / (alpha - 1)
        return grad_z, d_alpha.sum_to_size(alpha.shape)
