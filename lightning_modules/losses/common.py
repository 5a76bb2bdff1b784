"""Shared pieces of every RL loss: masked means, log-probs at a temperature, entropy, KL estimators, the clipped surrogate (with DAPO's clip-higher) and its token aggregations (docs/METHODS.md sections 0, 2, 5 and 9)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is 1; 0 where the mask is empty (no NaN)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(tokens[:, t]) under ``logits[:, t] / temperature``; ``[B, T, V], [B, T] -> [B, T]``.

    Aligned inputs: the caller has already shifted so ``logits[:, t]`` scores ``tokens[:, t]``.
    ``cross_entropy`` computes the gathered log-softmax without keeping a second
    full-vocabulary float copy of the logits alive.
    """
    if temperature != 1.0:
        logits = logits / temperature
    flat = -F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), tokens.reshape(-1), reduction="none")
    return flat.view(tokens.shape)


def sequence_logp(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``s = sum_t log p(tokens[:, t])`` over positions where ``mask`` is 1; aligned inputs
    (``logits[:, t]`` scores ``tokens[:, t]``); ``[B, T, V], [B, T], [B, T] -> [B]``."""
    return (token_logprobs(logits, tokens, temperature) * mask.to(torch.float32)).sum(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each position's next-token distribution; ``[B, T, V] -> [B, T]``."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def kl_k1(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """Per-token k1 estimator of KL(pi || pi_ref) on sampled tokens: ``logp - logp_ref``."""
    return logp - logp_ref


def kl_k2(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """Per-token k2 estimator ``0.5 * (logp - logp_ref)^2`` (>= 0, biased, low variance; Schulman 2020)."""
    return 0.5 * (logp - logp_ref) ** 2


def kl_k3(logp: torch.Tensor, logp_ref: torch.Tensor, clamp: float = 20.0) -> torch.Tensor:
    """Per-token k3 estimator ``exp(ref - logp) - (ref - logp) - 1`` (>= 0, unbiased for
    KL(pi || pi_ref) on samples of pi), with the log-ratio in float32 (or wider) clamped to +-``clamp`` (docs/METHODS.md section 5)."""
    wide = torch.promote_types(logp.dtype, torch.float32)
    log_ratio = torch.clamp(logp_ref.to(wide) - logp.to(wide), -clamp, clamp)
    return torch.exp(log_ratio) - log_ratio - 1.0


def clipped_surrogate(
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token ``max(-A * ratio, -A * clip(ratio, 1-eps, 1+eps_high))`` with ``ratio = exp(logp - logp_old)``,
    and where the clipped term is the larger (bool). ``eps_high`` is ``clip_eps_high`` when given (DAPO's
    clip-higher, arXiv 2503.14476), else ``clip_eps``. The log-ratio is taken in float32 (or wider) and
    clamped to +-20, so a stale or corrupted log-prob cannot overflow the ratio to inf."""
    wide = torch.promote_types(logp.dtype, torch.float32)
    ratio = torch.exp((logp.to(wide) - logp_old.to(wide)).clamp(-20.0, 20.0))
    upper = 1.0 + (clip_eps if clip_eps_high is None else clip_eps_high)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, upper)
    return torch.maximum(unclipped, clipped), clipped > unclipped


def aggregate_loss(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "grpo",
    max_new_tokens: int | None = None,
    num_tokens: float | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss ``[B, T]`` over response tokens (docs/METHODS.md section 5):
    ``grpo`` mean over sequences of each sequence's token mean; ``dr_grpo`` sum / (B * max_new_tokens);
    ``dapo`` sum / ``num_tokens``, by default the number of response tokens in ``mask``. To make
    DAPO's token mean over a whole rollout split into minibatches and ranks, pass the rollout's
    response tokens summed over ranks divided by the number of ranks (DDP averages the ranks'
    gradients)."""
    if mode == "grpo":
        return masked_mean(per_token, mask, dim=-1).mean()
    total = (per_token * mask.to(per_token.dtype)).sum()
    if mode == "dr_grpo":
        if max_new_tokens is None:
            raise ValueError("dr_grpo aggregation needs max_new_tokens")
        return total / (per_token.size(0) * max_new_tokens)
    if mode == "dapo":
        if num_tokens is None:
            return total / mask.sum().clamp(min=1)
        return total / num_tokens if num_tokens > 0 else total  # no token anywhere: total is 0
    raise ValueError(f"unknown loss aggregation {mode!r}; expected grpo, dr_grpo or dapo")


def reinforce_loss(logp: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The seed's simpler policy gradient: ``-(log-prob x reward)`` averaged over each
    response's tokens, then over responses; ``[B, T], [B], [B, T] -> []``."""
    return -masked_mean(logp * rewards[:, None].to(logp.dtype), mask, dim=-1).mean()
