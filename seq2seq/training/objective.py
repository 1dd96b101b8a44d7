"""What one micro-batch optimises: the label-smoothed loss, and what some attention mechanisms
add to it.

    most models      the loss of the features of real target tokens (loss.py, projected a
                     chunk of rows at a time)
    coverage         + train.coverage_loss * sum_t sum_s min(a_ts, c_ts), c_t the attention
                     received before step t (See et al. 2017)
    hard, reinforce  + the REINFORCE surrogate -(R_t - b_t) log p(a_t) - entropy_bonus * H(p_t).
                     The return R_t = sum_{t' >= t} log p(y_t') counts every later word, since
                     the position read at step t reaches them through the decoder state; the
                     baseline b_t is the mean return of the batch's *other* sentences at step t,
                     independent of this sentence's draw, so the estimate stays unbiased.
    hard, exact      the loss of the marginal p(y_t) = sum_s p(s) p(y_t | s), a chunk of tokens
                     at a time, its [tokens, S, V] logits recomputed in the backward pass

The added terms are ``LossSums.penalty``: optimised, but left out of the reported loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from seq2seq.config import Config
from seq2seq.models.hard_attention import marginal_log_probs
from seq2seq.training.loss import CHUNK_ELEMENTS, LossSums, projected_smoothed_nll, smoothed_nll_per_token


def needs_terms(cfg: Config) -> bool:
    """Whether the model must return more than its features (RNNDecoder.forward's terms)."""
    m = cfg.model
    return cfg.train.coverage_loss > 0 or (m.attention == "hard" and m.hard_attention in ("reinforce", "exact"))


def batch_loss(model: nn.Module, output: nn.Linear, src: Tensor, tgt_in: Tensor, real: Tensor, target: Tensor,
               cfg: Config, host_lengths: Tensor | None = None) -> LossSums:
    """The sums of one micro-batch; ``real`` indexes its real target positions in the flattened
    [B*T] target, ``target`` holds their pieces."""
    smoothing = cfg.train.label_smoothing
    if not needs_terms(cfg):
        features = model(src, tgt_in, features_only=True, host_lengths=host_lengths)
        return projected_smoothed_nll(features.flatten(0, 1).index_select(0, real), output, target, smoothing)
    features, terms = model(src, tgt_in, features_only=True, host_lengths=host_lengths, objective_terms=True)
    shape = features.shape[:2]
    mask = torch.zeros(shape.numel(), dtype=torch.bool, device=features.device).index_fill_(0, real, True).view(shape)
    penalty = features.new_zeros((), dtype=torch.float32)
    if "candidates" in terms:
        sums = marginal_smoothed_nll(terms["candidates"].flatten(0, 1).index_select(0, real),
                                     terms["log_probs"].flatten(0, 1).index_select(0, real), output, target, smoothing)
    elif terms["log_probs"] is not None:  # REINFORCE: the per-token log-likelihoods are the rewards
        log_probs = F.log_softmax(output(features.flatten(0, 1).index_select(0, real)).float(), dim=-1)
        per_token, nll = smoothed_nll_per_token(log_probs, target, smoothing)
        sums = LossSums(per_token.sum(), nll.sum().detach(), (log_probs.argmax(dim=-1) == target).sum(),
                        torch.tensor(target.numel()))
        likelihood = torch.zeros(shape.numel(), device=nll.device).index_copy_(0, real, -nll.detach()).view(shape)
        penalty = penalty + reinforce_surrogate(terms["weights"], terms["log_probs"], likelihood, mask,
                                                cfg.train.entropy_bonus)
    else:
        sums = projected_smoothed_nll(features.flatten(0, 1).index_select(0, real), output, target, smoothing)
    if cfg.train.coverage_loss > 0:
        penalty = penalty + cfg.train.coverage_loss * coverage_penalty(terms["weights"], mask)
    sums.penalty = penalty
    return sums


def coverage_penalty(weights: Tensor, mask: Tensor) -> Tensor:
    """sum over real steps t of sum_s min(a_ts, c_ts), c_t = sum_{t' < t} a_t': [B,T,S], [B,T] -> []."""
    weights = weights.float()
    coverage = weights.cumsum(dim=1) - weights
    return (torch.minimum(weights, coverage).sum(dim=-1) * mask).sum()


def returns_to_go(rewards: Tensor, mask: Tensor) -> Tensor:
    """R_t = sum_{t' >= t} r_t' over real steps: [B,T] -> [B,T]."""
    rewards = rewards * mask
    return rewards.flip(1).cumsum(dim=1).flip(1)


def leave_one_out_baseline(returns: Tensor, mask: Tensor) -> Tensor:
    """At each step, the mean return of the other real rows (0 where a row is alone): [B,T] -> [B,T]."""
    total = (returns * mask).sum(dim=0, keepdim=True)
    others = mask.sum(dim=0, keepdim=True) - 1
    return torch.where(others > 0, (total - returns) / others.clamp(min=1), torch.zeros_like(returns))


def reinforce_surrogate(drawn: Tensor, log_probs: Tensor, rewards: Tensor, mask: Tensor,
                        entropy_bonus: float) -> Tensor:
    """A scalar whose gradient is the REINFORCE estimate of -grad E[return], minus the entropy
    bonus's gradient: ``drawn`` [B,T,S] one-hot draws, ``log_probs`` [B,T,S] log p (-inf where
    not allowed), ``rewards`` [B,T] per-step log-likelihoods, ``mask`` [B,T] real steps."""
    mask = mask.float()
    safe = torch.where(torch.isfinite(log_probs), log_probs, torch.zeros_like(log_probs))
    log_p_drawn = (drawn.float() * safe).sum(dim=-1)
    entropy = -(log_probs.exp() * safe).sum(dim=-1)
    returns = returns_to_go(rewards, mask)
    advantage = (returns - leave_one_out_baseline(returns, mask)).detach()
    return -(advantage * log_p_drawn * mask).sum() - entropy_bonus * (entropy * mask).sum()


def marginal_smoothed_nll(candidates: Tensor, log_probs: Tensor, output: nn.Linear, target: Tensor,
                          smoothing: float) -> LossSums:
    """The label-smoothed loss of p(y) = sum_s p(s) softmax(output(candidates_s))(y): ``candidates``
    [N,S,E], ``log_probs`` [N,S], ``target`` [N]. A chunk of tokens at a time, each chunk's
    [n,S,V] logits recomputed in the backward pass instead of kept."""
    positions, vocab = candidates.size(1), output.weight.size(0)
    rows = max(1, CHUNK_ELEMENTS // (positions * vocab))
    loss = nll = candidates.new_zeros((), dtype=torch.float32)
    correct = torch.zeros((), dtype=torch.long, device=candidates.device)
    for start in range(0, candidates.size(0), rows):
        end = start + rows
        chunk_loss, chunk_nll, chunk_correct = checkpoint(
            _marginal_chunk, candidates[start:end], log_probs[start:end], target[start:end], output.weight,
            output.bias, smoothing, use_reentrant=False)
        loss, nll, correct = loss + chunk_loss, nll + chunk_nll.detach(), correct + chunk_correct
    return LossSums(loss, nll, correct, torch.tensor(target.numel()))


def _marginal_chunk(candidates: Tensor, log_probs: Tensor, target: Tensor, weight: Tensor, bias: Tensor | None,
                    smoothing: float) -> tuple[Tensor, Tensor, Tensor]:
    marginal = marginal_log_probs(F.linear(candidates, weight, bias), log_probs)
    per_token, nll = smoothed_nll_per_token(marginal, target, smoothing)
    return per_token.sum(), nll.sum(), (marginal.argmax(dim=-1) == target).sum()
