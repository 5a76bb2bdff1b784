"""RLSC (docs/METHODS.md section 4): the self-confidence loss and the confidence measures logged beside it."""

from __future__ import annotations

import torch

from lightning_modules.losses.common import masked_mean
from lightning_modules.losses.label_free import DEFAULT_CHUNK_SIZE, per_position


def rlsc_loss(seq_logp: torch.Tensor, alpha: float = 0.1, weighting: str = "paper", reduction: str = "mean") -> torch.Tensor:
    """RLSC's self-confidence loss on ``[Q, K]`` sequence log-probs: ``-(w_k + alpha) * s_k`` with
    ``w = sg(exp(s))`` (``paper``) or ``sg(softmax_k(s))`` (``normalized``, which stays meaningful
    when exp(s) underflows for long responses). ``mean``: averaged over all Q*K entries;
    ``sum``: summed over K, averaged over Q. Its gradient in s_k is ``-(w_k + alpha)`` / (Q*K or Q)."""
    if weighting == "paper":
        weights = torch.exp(seq_logp.detach())  # s <= 0, so this never overflows; it may underflow to 0
    elif weighting == "normalized":
        weights = torch.softmax(seq_logp.detach(), dim=-1)
    else:
        raise ValueError(f"unknown weighting {weighting!r}; expected paper or normalized")
    per_sample = -(weights + alpha) * seq_logp
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum(-1).mean()
    raise ValueError(f"unknown reduction {reduction!r}; expected mean or sum")


@torch.no_grad()
def token_confidence(logits: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean over masked positions of the largest next-token probability under ``logits / temperature``,
    ``exp(max_v l - logsumexp_v l)``; ``[B, T, V] -> [B]``. Chunked over positions like the label-free
    rewards, the temperature applied per chunk: no float copy of the whole tensor."""
    fn = _top_probability if temperature == 1.0 else (lambda chunk: _top_probability(chunk / temperature))
    return masked_mean(per_position(logits, mask, fn, DEFAULT_CHUNK_SIZE), mask, dim=-1)


def _top_probability(chunk: torch.Tensor) -> torch.Tensor:
    return (chunk.amax(-1) - torch.logsumexp(chunk, dim=-1)).exp()


@torch.no_grad()
def agreement_confidence(probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """How much K samples' next-token distributions agree: at each position, ``sum_v mean_k(p_k(v))^2``
    over the samples that reach it, averaged over positions any sample reaches; ``[K, T, V], [K, T] -> []``."""
    weights = mask.to(probs.dtype)
    reached = weights.sum(0)  # [T]
    mean_probs = (probs * weights.unsqueeze(-1)).sum(0) / reached.clamp(min=1).unsqueeze(-1)
    per_position = (mean_probs**2).sum(-1)
    return masked_mean(per_position, reached > 0)
