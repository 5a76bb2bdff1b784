"""PPO as ReFT uses it (docs/METHODS.md section 2): rewards on the last token, GAE, whitening, the clipped policy and value losses."""

from __future__ import annotations

from collections.abc import Callable

import torch

from lightning_modules.losses.common import aggregate_loss, clipped_surrogate, masked_mean


def last_token_rewards(sequence_rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B], [B, T] -> [B, T]``: each reward on its response's last token (EOS, or the last
    token when the response was cut at the length limit), zero elsewhere."""
    last = (mask.long().cumsum(-1) == mask.long().sum(-1, keepdim=True)) & mask.bool()
    return last.to(sequence_rewards.dtype) * sequence_rewards[:, None]


@torch.no_grad()
def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded responses (ReFT: gamma 1, lambda 0.95).

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` with ``V`` zero after the last response token;
    ``A_t = sum_l (gamma * lam)^l delta_{t+l}``; returns ``R_t = A_t + V_t``. All ``[B, T]``,
    zero where ``mask`` is 0.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.size(1))):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = (delta + gamma * lam * next_advantage) * mask[:, t]
        next_value, next_advantage = values[:, t], advantages[:, t]
    return advantages, (advantages + values) * mask


def whiten(x: torch.Tensor, mask: torch.Tensor, all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Masked mean 0 and (population) std 1 over the tokens where ``mask`` is 1; 0 elsewhere.

    ``all_reduce`` sums a tensor over ranks, so that under DDP the statistics are those of the
    global batch (docs/METHODS.md section 2, step 4).
    """
    mask = mask.to(x.dtype)
    sums = torch.stack([(x * mask).sum(), (x * x * mask).sum(), mask.sum()])
    if all_reduce is not None:
        sums = all_reduce(sums)
    count = sums[2].clamp(min=1)
    mean = sums[0] / count
    var = (sums[1] / count - mean * mean).clamp(min=0)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


def ppo_policy_loss(
    logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip_eps: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped surrogate: per-token ``max(-A * ratio, -A * clip(ratio, 1-eps, 1+eps))``, a masked
    mean over each sequence's tokens, then a mean over sequences. Also the fraction of tokens
    where the clipped term is the larger (``clip_frac``)."""
    per_token, clipped = clipped_surrogate(logp, logp_old, advantages, clip_eps)
    return aggregate_loss(per_token, mask, "grpo"), masked_mean(clipped.to(logp.dtype), mask).detach()


def ppo_value_loss(
    values: torch.Tensor,
    values_old: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
    norm: str = "token",
) -> torch.Tensor:
    """``0.5 * max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2)`` averaged over the response
    tokens: ``norm="token"`` one masked mean over every token of the batch, so a long response
    weighs in proportion to its length; ``norm="response"`` each response's token mean, then the
    mean over responses (ReFT and the CARFT authors)."""
    clipped = values_old + torch.clamp(values - values_old, -clip, clip)
    squared_error = torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    if norm == "token":
        return 0.5 * masked_mean(squared_error, mask)
    if norm == "response":
        return 0.5 * masked_mean(squared_error, mask, dim=-1).mean()
    raise ValueError(f"unknown value-loss normalisation {norm!r}; expected token or response")


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``1 - Var(R - V) / Var(R)`` over masked tokens: 1 is a perfect critic, 0 a constant one."""
    var_returns = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    residual = returns - values
    var_residual = masked_mean((residual - masked_mean(residual, mask)) ** 2, mask)
    return 1.0 - var_residual / var_returns.clamp(min=1e-8)
