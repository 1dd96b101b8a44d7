"""FAVOR+ kernel attention (Choromanski et al. 2021, "Rethinking Attention with Performers").

Softmax attention weighs key j for query i by exp(q_i . k_j / sqrt(dh)), normalised over j.
That kernel is an expectation over Gaussian vectors w ~ N(0, I):

    exp(q . k)  =  E_w[ exp(w . q - |q|^2 / 2) exp(w . k - |k|^2 / 2) ]

so with m draws w_1..w_m (rows of ``features``) and phi(x) = exp(W x - |x|^2 / 2) / sqrt(m),
phi(q) . phi(k) is an unbiased estimate of exp(q . k). Scaling q and k by dh**-0.25 each
puts the 1/sqrt(dh) of the softmax inside. Attention then factorises,

    out_i  =  sum_j phi(q_i) . phi(k_j) v_j / sum_j phi(q_i) . phi(k_j)
           =  phi(q_i) (sum_j phi(k_j) v_j^T)  /  phi(q_i) . (sum_j phi(k_j))

and the two sums (``kv`` [m, dv] and ``k_sum`` [m]) are built once, in O(S m dv) instead of
the O(T S) score matrix. Why these choices:

    positive     exp(...) > 0, unlike the sin/cos random features of earlier work, so the
                 denominator never goes near 0 or negative and the estimate has small
                 variance exactly where softmax weights are small
    orthogonal   draws in blocks of dh mutually orthogonal directions, each rescaled to the
                 norm of a Gaussian vector (chi-distributed): every w is still marginally
                 N(0, I), so the estimate stays unbiased, but the draws cover the sphere more
                 evenly and the variance falls (Yu et al. 2016)
    causal       a decoder's query i may see keys j <= i only: the two sums become prefix
                 sums (cumsum over positions; in training, chunk by chunk), the same sums as...
    recurrent    ...carrying (kv, k_sum) as the state of step-by-step decoding and adding
                 phi(k_t) v_t^T and phi(k_t) at each step: O(m dv) per token whatever the
                 history's length, and an ordinary batch-first state for beam search

Everything is computed in float32 whatever the input dtype (under autocast too): the
features are exponentials, and bf16 sums of thousands of them lose the small ones.
"""

from __future__ import annotations

import torch
from torch import Tensor

State = dict[str, Tensor]  # {"kv": [B,h,m,dv], "k_sum": [B,h,m]}, float32, batch on dim 0


def orthogonal_features(count: int, dim: int, generator: torch.Generator) -> Tensor:
    """``count`` random directions [count, dim]: blocks of ``dim`` orthogonal rows (the last
    block cut short), rows scaled to the norms of Gaussian vectors; fixed by ``generator``."""
    device = generator.device
    blocks = []
    for _ in range(-(-count // dim)):
        gaussian = torch.randn(dim, dim, generator=generator, device=device)
        q, r = torch.linalg.qr(gaussian)
        # QR's sign convention is not random; flipping by sign(diag R) makes q uniform (Haar).
        blocks.append((q * torch.sign(torch.diagonal(r))).T)
    directions = torch.cat(blocks)[:count]
    norms = torch.randn(count, dim, generator=generator, device=device).norm(dim=-1, keepdim=True)
    return directions * norms


def feature_map(x: Tensor, features: Tensor, is_query: bool = False) -> Tensor:
    """phi(x) [..., m] in float32 for x [..., dh] and ``features`` [m, dh], so that
    phi(q) . phi(k) estimates exp(q . k / sqrt(dh)).

    For queries (``is_query``) each row's largest exponent is subtracted first, so nothing
    overflows: it scales phi(q_i) by a constant, which cancels between numerator and
    denominator. Keys get no such shift: one that varied across keys would not cancel, and
    a shift shared by all keys would depend on future keys and break causality.
    """
    with torch.autocast(x.device.type, enabled=False):
        x = x.float() * x.size(-1) ** -0.25
        exponent = x @ features.float().T - x.square().sum(dim=-1, keepdim=True) / 2
        if is_query:
            # detached: the shift cancels, so its gradient would only add rounding noise
            exponent = exponent - exponent.amax(dim=-1, keepdim=True).detach()
        return exponent.exp() * features.size(0) ** -0.5


def key_features(k: Tensor, features: Tensor, key_mask: Tensor | None = None) -> Tensor:
    """phi(k) for keys that are all known at once (an encoder's, the memory of cross-attention),
    shifted by one detached maximum over the real keys of each row and head: it scales every
    key's features alike, so it cancels between numerator and denominator, and keeps keys of
    large norm from overflowing exp. (A decoder's keys arrive one by one: ``feature_map``.)"""
    with torch.autocast(k.device.type, enabled=False):
        x = k.float() * k.size(-1) ** -0.25
        exponent = x @ features.float().T - x.square().sum(dim=-1, keepdim=True) / 2
        real = exponent if key_mask is None else exponent.masked_fill(
            ~key_mask.reshape(key_mask.size(0), 1, -1, 1), float("-inf"))
        shift = real.amax(dim=(-1, -2), keepdim=True).detach().clamp(min=-1e4)
        return (exponent - shift).exp() * features.size(0) ** -0.5


def summarise_keys(k_features: Tensor, v: Tensor, key_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(kv [B,h,m,dv], k_sum [B,h,m]) of k_features [B,h,S,m] and v [B,h,S,dv]: the whole
    of the keys that attention needs, so a fixed memory (the encoder's) is summarised once.

    ``key_mask`` [B,S] or [B,1,1,S], True = real key: padding is zeroed, features and values
    both, so that whatever a padded position holds (even inf or NaN) adds exactly nothing.
    """
    with torch.autocast(v.device.type, enabled=False):
        k_features, v = k_features.float(), v.float()
        if key_mask is not None:
            real = key_mask.reshape(key_mask.size(0), 1, -1, 1)
            k_features = k_features.masked_fill(~real, 0.0)
            v = v.masked_fill(~real, 0.0)
        return k_features.transpose(-1, -2) @ v, k_features.sum(dim=-2)


def attend_summary(q_features: Tensor, kv: Tensor, k_sum: Tensor) -> Tensor:
    """out [B,h,T,dv] = phi(Q) kv / (phi(Q) k_sum), float32."""
    with torch.autocast(kv.device.type, enabled=False):
        q_features = q_features.float()
        return _divide(q_features @ kv, (q_features @ k_sum.unsqueeze(-1)).squeeze(-1))


def linear_attention(q_features: Tensor, k_features: Tensor, v: Tensor, key_mask: Tensor | None = None) -> Tensor:
    """Non-causal attention [B,h,T,dv] of every query over every real key."""
    return attend_summary(q_features, *summarise_keys(k_features, v, key_mask))


def causal_linear_attention(q_features: Tensor, k_features: Tensor, v: Tensor, chunk: int = 64) -> Tensor:
    """Attention [B,h,T,dv] where query i sees keys j <= i (T == S): the prefix sums of
    ``recurrent_step``, taken a chunk of ``chunk`` positions at a time.

    Within a chunk, the weights phi(q_i) . phi(k_j) (j <= i) are formed as a small masked
    [chunk, chunk] matrix; what the chunks before contribute is one running state (kv, k_sum)
    per chunk, an exclusive prefix sum over chunks. The sums are the recurrence's, associated
    differently; the cost is linear in T, and only T / chunk states are held, not one per
    position (which would be T times a state's memory, and T tiny products).
    """
    with torch.autocast(v.device.type, enabled=False):
        q_features, k_features, v = q_features.float(), k_features.float(), v.float()
        batch, heads, length, _ = q_features.shape
        chunks = -(-length // chunk)
        pad = chunks * chunk - length  # zero features: padded keys add nothing, padded queries are cut

        def blocks(x: Tensor) -> Tensor:
            return torch.nn.functional.pad(x, (0, 0, 0, pad)).view(batch, heads, chunks, chunk, x.size(-1))

        q_c, k_c, v_c = blocks(q_features), blocks(k_features), blocks(v)
        kv = k_c.transpose(-1, -2) @ v_c  # [B,h,n,m,dv]: each chunk's own sums
        k_sum = k_c.sum(dim=-2)  # [B,h,n,m]
        kv_before = torch.nn.functional.pad(kv.cumsum(dim=2)[:, :, :-1], (0, 0, 0, 0, 1, 0))
        k_sum_before = torch.nn.functional.pad(k_sum.cumsum(dim=2)[:, :, :-1], (0, 0, 1, 0))
        causal = torch.ones(chunk, chunk, dtype=torch.bool, device=v.device).tril()
        weights = (q_c @ k_c.transpose(-1, -2)).masked_fill(~causal, 0.0)  # [B,h,n,C,C]
        numerator = weights @ v_c + q_c @ kv_before
        denominator = weights.sum(dim=-1) + (q_c @ k_sum_before.unsqueeze(-1)).squeeze(-1)
        out = _divide(numerator, denominator)
        return out.view(batch, heads, chunks * chunk, -1)[:, :, :length]


def feature_weights(q_features: Tensor, k_features: Tensor, allowed: Tensor) -> Tensor:
    """The weights [B,h,T,S] that attention by the features stands for (to be shown, never
    formed to compute it): phi(q_i) . phi(k_j) over the allowed keys, normalised, float32."""
    with torch.autocast(q_features.device.type, enabled=False):
        scores = (q_features.float() @ k_features.float().transpose(-1, -2)).masked_fill(~allowed, 0.0)
        return scores / scores.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)


def recurrent_step(q_features: Tensor, k_features: Tensor, v: Tensor, state: State | None) -> tuple[Tensor, State]:
    """One position of causal attention: q_features, k_features [B,h,1,m], v [B,h,1,dv] and
    the state of the positions before (None: there are none) -> (out [B,h,1,dv], new state).

    The state is the prefix sums of ``causal_linear_attention`` up to this position, plain
    batch-first tensors: beam search reorders it with index_select on dim 0 like any other.
    """
    kv, k_sum = summarise_keys(k_features, v)
    if state is not None:
        kv, k_sum = state["kv"] + kv, state["k_sum"] + k_sum
    return attend_summary(q_features, kv, k_sum), {"kv": kv, "k_sum": k_sum}


def _divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    # The denominator is a sum of positive terms; the clamp only acts where every one
    # underflowed (or all keys were masked), turning 0/0 into 0 instead of NaN.
    return numerator / denominator.clamp_min(torch.finfo(torch.float32).tiny).unsqueeze(-1)
