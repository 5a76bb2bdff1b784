"""Label-free rewards from the policy's own next-token distributions (docs/METHODS.md section 9):
INTUITOR's self-certainty and RENT's / EM-RL's negative entropy.

Both are rewards, computed without gradient. A real vocabulary makes ``[B, T, V]`` logits large,
so neither function takes a float copy of the whole tensor: the masked positions are processed
``chunk_size`` at a time, each chunk cast to float32 on its own (at V = 152k and the default 256
positions a chunk's float32 copy is about 156 MB). Unmasked positions are never read, so padding
logits may hold anything, NaN included.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from lightning_modules.losses.common import masked_mean

DEFAULT_CHUNK_SIZE = 256


def per_position(
    logits: torch.Tensor, mask: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], chunk_size: int
) -> torch.Tensor:
    """``fn`` (float32 ``[n, V] -> [n]``) at every masked position, 0 elsewhere; ``[B, T, V] -> [B, T]`` float32."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    flat = logits.reshape(-1, logits.size(-1))
    positions = torch.nonzero(mask.reshape(-1) != 0).squeeze(-1)
    out = torch.zeros(flat.size(0), dtype=torch.float32, device=logits.device)
    for start in range(0, positions.numel(), chunk_size):
        index = positions[start : start + chunk_size]
        out[index] = fn(flat[index].float())
    return out.view(mask.shape)


def _kl_uniform(chunk: torch.Tensor) -> torch.Tensor:
    """KL(U || softmax(l)) = logsumexp_v(l) - mean_v(l) - log V, per row."""
    return torch.logsumexp(chunk, dim=-1) - chunk.mean(-1) - math.log(chunk.size(-1))


def _entropy(chunk: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(l), per row; a -inf logit (probability 0) adds 0, not NaN."""
    logp = torch.log_softmax(chunk, dim=-1)
    return -torch.where(logp > -math.inf, logp.exp() * logp, torch.zeros_like(logp)).sum(-1)


@torch.no_grad()
def self_certainty(logits: torch.Tensor, mask: torch.Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE) -> torch.Tensor:
    """INTUITOR's self-certainty (arXiv 2505.19590): per response, the mean over masked positions of
    ``KL(U || softmax(l_t)) = logsumexp_v(l_t) - mean_v(l_t) - log V``; ``[B, T, V], [B, T] -> [B]``.

    0 for a uniform distribution, larger for a more peaked one; an empty mask gives 0. The logits are
    used as given (any temperature already applied); a -inf logit makes the KL +inf."""
    return masked_mean(per_position(logits, mask, _kl_uniform, chunk_size), mask, dim=-1)


@torch.no_grad()
def token_entropy(logits: torch.Tensor, mask: torch.Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE) -> torch.Tensor:
    """Entropy of softmax(l_t) at every masked position, 0 elsewhere, without gradient and chunked;
    ``[B, T, V], [B, T] -> [B, T]`` float32 (the logged ``entropy``; the entropy bonus, which needs
    a gradient, is ``entropy_from_logits``)."""
    return per_position(logits, mask, _entropy, chunk_size)


@torch.no_grad()
def entropy_reward(
    logits: torch.Tensor, mask: torch.Tensor, reduction: str = "mean", chunk_size: int = DEFAULT_CHUNK_SIZE
) -> torch.Tensor:
    """Negative entropy of softmax(l_t) over each response's masked positions; ``[B, T, V], [B, T] -> [B]``.

    ``mean``: minus the mean entropy (RENT, arXiv 2505.22660); ``sum``: minus the summed entropy
    (EM-RL, arXiv 2505.15134). An empty mask gives 0."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"unknown reduction {reduction!r}; expected mean or sum")
    entropy = token_entropy(logits, mask, chunk_size)
    if reduction == "mean":
        return -masked_mean(entropy, mask, dim=-1)
    return -(entropy * mask.to(entropy.dtype)).sum(-1)
