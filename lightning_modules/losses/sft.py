"""The SFT warm-up's loss (docs/METHODS.md section 1)."""

from __future__ import annotations

import torch

from lightning_modules.losses.common import masked_mean, token_logprobs


def sft_loss(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the annotated target tokens only (docs/METHODS.md section 1), token mean.

    ``logits[:, t]`` predicts ``input_ids[:, t + 1]``; ``loss_mask`` marks target tokens of
    ``input_ids`` (the prompt and the padding are 0).
    """
    logp = token_logprobs(logits[:, :-1], input_ids[:, 1:])
    return -masked_mean(logp, loss_mask[:, 1:])
