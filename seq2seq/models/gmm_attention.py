"""Gaussian-mixture attention (Graves 2013), content-free and moving forward only.

Each decoder step predicts, from its query alone, K Gaussian components over source positions:
mixture weights pi = softmax(.), forward steps delta = softplus(.) >= 0 and widths sigma =
softplus(.). The means move by those steps, mu_i = mu_{i-1} + delta_i, so attention can only
advance. The weight of source position s is the mixture's probability mass on the cell
[s - 1/2, s + 1/2]: a difference of normal CDFs (Battenberg et al. 2020 found the density
form less stable), which sums to 1 over the whole line and, well inside a long source, close
to 1 over the sentence. Padding gets 0; mass past the end is simply not attended.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seq2seq.kernels import Linear
from seq2seq.models.scores import Attended


def normal_cdf(x: Tensor) -> Tensor:
    return 0.5 * (1 + torch.erf(x / math.sqrt(2)))


def mixture_weights(means: Tensor, widths: Tensor, mixture: Tensor, length: int) -> Tensor:
    """sum_k pi_k P(s - 1/2 < X_k < s + 1/2), X_k ~ N(mu_k, sigma_k^2): [B,K] x 3 -> [B,length]."""
    positions = torch.arange(length, device=means.device, dtype=means.dtype).view(1, 1, -1)
    mu, sigma = means.unsqueeze(-1), widths.unsqueeze(-1)
    # (clamped: far in a tail the two CDFs round to a difference of -1e-8)
    mass = (normal_cdf((positions + 0.5 - mu) / sigma) - normal_cdf((positions - 0.5 - mu) / sigma)).clamp(min=0)
    return (mixture.unsqueeze(-1) * mass).sum(dim=1)


class GMMAttention(nn.Module):
    """K moving Gaussians over source positions (see the module docstring); state: the means."""

    independent_queries = False

    def __init__(self, query_dim: int, components: int):
        super().__init__()
        self.components = components
        self.parameters_from_query = Linear(query_dim, 3 * components)
        with torch.no_grad():  # start with steps and widths of about one position
            bias = self.parameters_from_query.bias.view(3, components)
            bias[1:].fill_(math.log(math.e - 1))  # softplus(x) = 1

    def initial_state(self, keys: Tensor, mask: Tensor) -> dict:
        return {"means": torch.zeros(mask.size(0), self.components, device=mask.device)}

    def precompute(self, keys: Tensor) -> Tensor:
        return keys

    def forward(
        self, queries: Tensor, keys: Tensor, values: Tensor, key_mask: Tensor, first_step: int = 0,
        state: dict | None = None,
    ) -> Attended:
        if queries.size(1) != 1:
            raise ValueError("Gaussian-mixture attention runs one decoder step at a time")
        raw = self.parameters_from_query(queries.squeeze(1)).float().view(-1, 3, self.components)
        mixture, steps, widths = raw[:, 0].softmax(dim=-1), F.softplus(raw[:, 1]), F.softplus(raw[:, 2]) + 1e-3
        means = state["means"] + steps
        weights = mixture_weights(means, widths, mixture, key_mask.size(1)).masked_fill(~key_mask, 0.0)
        weights = weights.unsqueeze(1).to(values.dtype)
        return Attended(weights @ values, weights, {"means": means})
