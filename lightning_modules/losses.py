"""The math of every method as pure functions of tensors (no model, trainer or I/O).

Equations follow ``spec/METHODS.md``; each function is tested against hand-worked
numbers or a naive loop in ``tests/test_losses.py``.
"""

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


def sft_loss(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the annotated target tokens only (spec section 1), token mean.

    ``logits[:, t]`` predicts ``input_ids[:, t + 1]``; ``loss_mask`` marks target tokens of
    ``input_ids`` (the prompt and the padding are 0).
    """
    logp = token_logprobs(logits[:, :-1], input_ids[:, 1:])
    return -masked_mean(logp, loss_mask[:, 1:])
