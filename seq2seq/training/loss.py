"""Label-smoothed cross-entropy that never counts padding.

The loss is returned as a *sum* over real target tokens: the trainer divides by the number
of target tokens in the whole update, so k accumulated half-batches give exactly the same
gradient as one full batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from seq2seq.data.special import PAD_ID
from seq2seq.kernels import linear, matmul_nt


@dataclass
class LossSums:
    loss: torch.Tensor  # label-smoothed loss summed over real tokens (what we optimise)
    nll: torch.Tensor  # plain negative log-likelihood summed over real tokens (for perplexity)
    correct: torch.Tensor  # argmax hits on real tokens (for token accuracy)
    tokens: torch.Tensor  # number of real target tokens
    # What the objective adds and the figures leave out (an attention mechanism's own terms:
    # the REINFORCE surrogate, the coverage loss), summed over the same tokens; None if nothing.
    penalty: torch.Tensor | None = None

    @property
    def objective(self) -> torch.Tensor:
        """What the backward pass differentiates: the loss plus the penalty."""
        return self.loss if self.penalty is None else self.loss + self.penalty


def smoothed_nll_per_token(log_probs: torch.Tensor, target: torch.Tensor,
                           smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(1-eps)*nll + eps*mean_over_vocab(-log p)`` and the plain nll, per row: [N,V], [N] -> [N], [N].

    This is torch's ``cross_entropy(label_smoothing=eps)`` definition (eps spread uniformly
    over all V classes), written out so the NLL and accuracy come from the same log-softmax.
    """
    nll = -log_probs.gather(1, target.unsqueeze(1)).squeeze(1)
    uniform = -log_probs.mean(dim=-1)
    return (1.0 - smoothing) * nll + smoothing * uniform, nll


def label_smoothed_nll(logits: torch.Tensor, target: torch.Tensor, smoothing: float) -> LossSums:
    """Sums over non-pad positions of the label-smoothed loss (``smoothed_nll_per_token``)."""
    vocab = logits.size(-1)
    logits = logits.reshape(-1, vocab)
    target = target.reshape(-1)
    real = target != PAD_ID
    log_probs = F.log_softmax(logits.float(), dim=-1)
    per_token, nll = smoothed_nll_per_token(log_probs, target, smoothing)
    zero = torch.zeros((), device=logits.device)
    return LossSums(
        loss=torch.where(real, per_token, zero).sum(),
        nll=torch.where(real, nll, zero).sum(),
        correct=((log_probs.argmax(dim=-1) == target) & real).sum(),
        tokens=real.sum(),
    )


# ------------------------------------------------------------------ the training loss

# Rows of logits computed at a time on the CPU: 2**22 floats (16 MB) stay in the CPU's caches
# and in the allocator's reused memory, where a whole [tokens x vocabulary] tensor (130 MB for
# 4k tokens and 8k pieces) costs more in page faults and memory traffic than in arithmetic.
CHUNK_ELEMENTS = 2**22
GPU_CHUNK_ELEMENTS = 2**28


def chunk_rows(device: torch.device, rows: int, vocab: int) -> int:
    """How many rows of logits ``projected_smoothed_nll`` computes at a time.

    On a GPU as many as fit 2^28 logits (1 GiB in fp32; a typical batch's all of them): a GPU
    has no cache to fit, and every chunk costs its own launches of half a dozen kernels and
    smaller, slower products; the cap keeps a huge batch x vocabulary from running out of memory
    on a small GPU."""
    if device.type == "cuda":
        return max(1, min(rows, GPU_CHUNK_ELEMENTS // vocab))
    return max(1, CHUNK_ELEMENTS // vocab)


def projected_smoothed_nll(features: torch.Tensor, output: torch.nn.Linear, target: torch.Tensor,
                           smoothing: float) -> LossSums:
    """``label_smoothed_nll(output(features), target, smoothing)`` for real target tokens only,
    without ever holding the whole logits tensor.

    ``features`` [N, D] are the decoder's last hidden vectors of the N real (non-pad) target
    tokens and ``target`` [N] their pieces. The vocabulary projection, the loss and its gradient
    are computed a chunk of rows at a time; the gradient has a closed form,
    ``d loss / d logits = softmax - (1 - eps) * onehot(target) - eps / V``, so the forward pass
    turns each chunk of logits into its gradient in place and keeps only the gradients of the
    features, weight and bias for the backward pass.
    """
    # (Inside the autograd function's forward, grad mode is always off: decide here.)
    want_grad = torch.is_grad_enabled() and (features.requires_grad or output.weight.requires_grad)
    loss, nll, correct = _ProjectedSmoothedNLL.apply(features, output.weight, output.bias, target, smoothing,
                                                     want_grad)
    return LossSums(loss=loss, nll=nll, correct=correct, tokens=torch.tensor(target.numel()))


class _ProjectedSmoothedNLL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features, weight, bias, target, smoothing, want_grad):
        vocab = weight.size(0)
        on_gpu = features.device.type == "cuda"
        rows = chunk_rows(features.device, features.size(0), vocab)
        loss = torch.zeros((), device=features.device)
        nll = torch.zeros((), device=features.device)
        correct = torch.zeros((), device=features.device, dtype=torch.long)
        # In float32 whatever the features' type: backward multiplies it by the loss's gradient,
        # which under fp16 is the GradScaler's scale, 2**16 at first: already past fp16's largest
        # number (65504), so in fp16 the first scaled gradient would be all inf and NaN. (Autograd
        # casts the result to the features' type after the scaling.)
        grad_features = torch.empty_like(features, dtype=torch.float32) if want_grad else None
        grad_bias = torch.zeros_like(bias) if want_grad and bias is not None else None
        off_target = smoothing / vocab
        weight_sum = weight.sum(dim=0).to(features.dtype) if want_grad else None
        grad_weight_t = weight.new_zeros(weight.size(1), vocab) if want_grad else None
        products_dtype = features.dtype  # what the chunk's gradient is cast to for the products
        if on_gpu and torch.is_autocast_enabled("cuda"):
            # Cast once, and use that one copy in all three products: otherwise autocast casts
            # the weight for the logits, and the float32 W^T below once more in every chunk.
            products_dtype = torch.get_autocast_dtype("cuda")
            weight = weight.to(products_dtype)
        if not want_grad:
            weight_t = None
        elif on_gpu:
            weight_t = weight.t()  # cuBLAS reads a transposed operand at full speed: no copy
        else:
            # Both big products keep the vocabulary as the contiguous dimension: the features'
            # gradient reads W^T [D,V] (a contiguous copy, made once: oneDNN is slower through a
            # transposed view), and the weight's gradient accumulates as [D,V], transposed once at
            # the end instead of added through a strided view per chunk.
            weight_t = weight.t().to(features.dtype).contiguous()
        for start in range(0, features.size(0), rows):
            h, t = features[start:start + rows], target[start:start + rows]
            logits = linear(h, weight, bias)
            if logits.element_size() < 4:  # bf16/fp16 autocast: the softmax in fp32
                logits = logits.float()
            # logsumexp by hand, in place: torch.logsumexp writes a temporary as big as the chunk.
            top = logits.amax(dim=1, keepdim=True)
            mean_logit = logits.mean(dim=1)
            target_logit = logits.gather(1, t.unsqueeze(1)).squeeze(1)
            exp = logits.sub_(top).exp_()
            total = exp.sum(dim=1)
            log_z = top.squeeze(1) + total.log()
            chunk_nll = log_z - target_logit
            chunk_uniform = log_z - mean_logit  # -mean over the vocabulary of log p
            loss += ((1.0 - smoothing) * chunk_nll + smoothing * chunk_uniform).sum()
            nll += chunk_nll.sum()
            correct += (target_logit >= top.squeeze(1)).sum()  # the target's logit is the largest
            if not want_grad:
                continue
            # d loss / d logits = exp / total - (1 - eps) * onehot - eps / V. The row scaling
            # 1 / total and the constant -eps / V are applied on the small side of each matmul
            # (rows of h, or afterwards), so the big chunk is touched once more, by the scatter.
            exp.scatter_add_(1, t.unsqueeze(1), ((smoothing - 1.0) * total).unsqueeze(1))
            inv_total = total.reciprocal().unsqueeze(1)
            exp = exp.to(products_dtype)
            grad_features[start:start + rows] = matmul_nt(exp, weight_t) * inv_total - off_target * weight_sum
            scaled_h = (h * inv_total).to(h.dtype)
            # (under bf16/fp16 autocast, the fp32 weight gradient still accumulates in fp32)
            grad_weight_t += matmul_nt(scaled_h.t(), exp.t())
            if grad_bias is not None:
                grad_bias += (inv_total.t() @ exp.float()).squeeze(0)
        grad_weight = None
        if want_grad:
            grad_weight = grad_weight_t.t().contiguous()
            grad_weight -= off_target * features.sum(dim=0).to(grad_weight.dtype)
            if grad_bias is not None:
                grad_bias -= off_target * features.size(0)
        ctx.save_for_backward(grad_features, grad_weight, grad_bias)
        ctx.mark_non_differentiable(nll, correct)
        return loss, nll, correct

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, _grad_nll, _grad_correct):
        grad_features, grad_weight, grad_bias = ctx.saved_tensors
        scale = lambda g: None if g is None else g.mul_(grad_loss.to(g.dtype))  # noqa: E731  (backward runs once)
        return scale(grad_features), scale(grad_weight), scale(grad_bias), None, None, None
