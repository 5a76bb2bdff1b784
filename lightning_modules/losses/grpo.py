"""GRPO (docs/METHODS.md section 5): group-normalised advantages; and the GRPO variants of section 9,
GSPO's sequence-level clipped loss and DAPO's overlong penalty."""

from __future__ import annotations

import torch

from lightning_modules.losses.common import masked_mean


def grpo_advantages(rewards: torch.Tensor, scale: str = "group") -> torch.Tensor:
    """``[Q, G] -> [Q, G]``: ``r - mean_group(r)``, divided by ``std_group(r) + 1e-4`` (Bessel's
    correction) with ``scale="group"`` (GRPO) or not with ``"none"`` (Dr. GRPO). A group of equal
    rewards gets zero advantage; a group of one sample too."""
    centred = rewards - rewards.mean(dim=-1, keepdim=True)
    if scale == "none":
        return centred
    if scale != "group":
        raise ValueError(f"unknown advantage scale {scale!r}; expected group or none")
    std = rewards.std(dim=-1, keepdim=True, unbiased=True) if rewards.size(-1) > 1 else torch.zeros_like(rewards[:, :1])
    return centred / (std + 1e-4)


def gspo_loss(
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GSPO's sequence-level clipped objective (arXiv 2507.18071); ``[B, T], [B, T], [B], [B, T] -> ([], [])``.

    Per sequence ``s_i = exp(mean_m(logp - logp_old))`` (the length-normalised sequence ratio; the
    mean in float32 or wider, clamped to +-20), loss ``max(-A_i s_i, -A_i clip(s_i, 1-clip_low,
    1+clip_high))``, averaged over sequences. Also the share of sequences where the clipped term is
    the larger (``clip_frac``, detached). The gradient flows through ``s_i`` by autograd; a sequence
    with an empty mask has ``s_i = 1`` and no gradient."""
    wide = torch.promote_types(logp.dtype, torch.float32)
    log_ratio = masked_mean(logp.to(wide) - logp_old.to(wide), mask, dim=-1).clamp(-20.0, 20.0)
    ratio = torch.exp(log_ratio)
    advantages = advantages.to(wide)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped).mean()
    return loss, (clipped > unclipped).to(wide).mean().detach()


def overlong_penalty(lengths: torch.Tensor, max_new_tokens: int, buffer: int) -> torch.Tensor:
    """DAPO's soft overlong punishment (arXiv 2503.14476) for response lengths L; ``[B] -> [B]`` float:
    0 when ``L <= max_new_tokens - buffer``, ``(max_new_tokens - buffer - L) / buffer`` up to
    ``L = max_new_tokens`` (falling linearly to -1), and -1 beyond."""
    if buffer < 0 or buffer > max_new_tokens:
        raise ValueError(f"buffer must lie in [0, max_new_tokens={max_new_tokens}], got {buffer}")
    lengths = lengths.to(torch.promote_types(lengths.dtype, torch.float32))
    start = max_new_tokens - buffer
    soft = (start - lengths) / max(buffer, 1)  # buffer 0: the soft zone is empty and never used
    penalty = torch.where(lengths <= max_new_tokens, soft, torch.full_like(lengths, -1.0))
    return torch.where(lengths <= start, torch.zeros_like(lengths), penalty)
