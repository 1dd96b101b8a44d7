"""Prototype of a cheaper ``seq2seq.training.loss.label_smoothed_nll`` (not used by attn itself).

``seq2seq/training/`` belongs to another developer, so this lives here, to measure what the
change would give: ``python -m bench.step_parts CONFIG --fused-loss`` swaps it in for the run.

Same contract and same numbers (LossSums of sums over real tokens; torch's
``cross_entropy(label_smoothing=eps)`` definition). The current loss builds its gradient
through autograd: log_softmax, gather, mean, where, sum -> in the backward pass an expanded
division, a zero-filled scatter for the gather, their sum and the log_softmax backward: about
six fresh [tokens x vocab] float tensors per micro-batch (130 MB each for config T), and on
this machine a fresh large tensor costs more in page faults than the arithmetic on it. The
gradient of the label-smoothed loss has a closed form,

    d loss / d logits = softmax - (1 - eps) * onehot(target) - eps / V   (real tokens; 0 on PAD)

so the backward pass can turn the saved log-probabilities into the gradient in place: one
[tokens x vocab] tensor besides the logits, forward and backward together.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from seq2seq.data.special import PAD_ID
from seq2seq.training.loss import LossSums


class _SmoothedNLL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, smoothing: float):
        real = target != PAD_ID
        log_probs = F.log_softmax(logits.float(), dim=-1)
        nll = -log_probs.gather(1, target.unsqueeze(1)).squeeze(1)
        uniform = -log_probs.mean(dim=-1)
        per_token = (1.0 - smoothing) * nll + smoothing * uniform
        zero = torch.zeros((), device=logits.device)
        loss = torch.where(real, per_token, zero).sum()
        nll_sum = torch.where(real, nll, zero).sum()
        correct = ((log_probs.argmax(dim=-1) == target) & real).sum()
        ctx.save_for_backward(log_probs, target, real)
        ctx.smoothing = smoothing
        ctx.logits_dtype = logits.dtype
        ctx.mark_non_differentiable(nll_sum, correct)
        return loss, nll_sum, correct

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, _grad_nll, _grad_correct):
        log_probs, target, real = ctx.saved_tensors
        eps = ctx.smoothing
        grad = log_probs.exp_()  # softmax, in the saved buffer (backward runs once)
        grad.sub_(eps / grad.size(-1))
        grad.scatter_add_(1, target.unsqueeze(1), grad.new_full((grad.size(0), 1), -(1.0 - eps)))
        grad.mul_((real.to(grad.dtype) * grad_loss).unsqueeze(1))
        return grad.to(ctx.logits_dtype), None, None


def label_smoothed_nll(logits: torch.Tensor, target: torch.Tensor, smoothing: float) -> LossSums:
    vocab = logits.size(-1)
    target = target.reshape(-1)
    loss, nll, correct = _SmoothedNLL.apply(logits.reshape(-1, vocab), target, smoothing)
    return LossSums(loss=loss, nll=nll, correct=correct, tokens=(target != PAD_ID).sum())
