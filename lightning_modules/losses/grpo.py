"""GRPO (docs/METHODS.md section 5): group-normalised advantages."""

from __future__ import annotations

import torch


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
