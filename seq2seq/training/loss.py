"""Label-smoothed cross-entropy that never counts padding.

The loss is returned as a *sum* over real target tokens: the trainer divides by the number
of target tokens in the whole update, so k accumulated half-batches give exactly the same
gradient as one full batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from seq2seq.data.special import PAD_ID


@dataclass
class LossSums:
    loss: torch.Tensor  # label-smoothed loss summed over real tokens (what we optimise)
    nll: torch.Tensor  # plain negative log-likelihood summed over real tokens (for perplexity)
    correct: torch.Tensor  # argmax hits on real tokens (for token accuracy)
    tokens: torch.Tensor  # number of real target tokens


def label_smoothed_nll(logits: torch.Tensor, target: torch.Tensor, smoothing: float) -> LossSums:
    """Sums over non-pad positions of ``(1-eps)*nll + eps*mean_over_vocab(-log p)``.

    This is torch's ``cross_entropy(label_smoothing=eps)`` definition (eps spread uniformly
    over all V classes), written out so the NLL and accuracy come from the same log-softmax.
    """
    vocab = logits.size(-1)
    logits = logits.reshape(-1, vocab)
    target = target.reshape(-1)
    real = target != PAD_ID
    log_probs = F.log_softmax(logits.float(), dim=-1)
    nll = -log_probs.gather(1, target.unsqueeze(1)).squeeze(1)
    uniform = -log_probs.mean(dim=-1)
    per_token = (1.0 - smoothing) * nll + smoothing * uniform
    zero = torch.zeros((), device=logits.device)
    return LossSums(
        loss=torch.where(real, per_token, zero).sum(),
        nll=torch.where(real, nll, zero).sum(),
        correct=((log_probs.argmax(dim=-1) == target) & real).sum(),
        tokens=real.sum(),
    )
