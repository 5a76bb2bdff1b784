"""Collectives for the RL methods that work unchanged on one process.

``gather_rows`` keeps gradients across ranks, which CARFT's contrastive terms need: every
rank's loss scores every rank's representations, so each gradient must flow back to the
rank that produced the vector. ``torch.distributed.nn.all_gather`` would do it on NCCL, but
its backward needs all-to-all, which gloo (CPU) lacks; this one only needs all-reduce.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over ranks (``x`` itself on one process)."""
    if world_size() == 1:
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    return all_reduce_sum(x) / world_size()


_GATHER_GROUP: list = []


def gather_group():
    """A process group of its own for the gathers that carry gradients. Their backward is an
    all-reduce issued from inside the autograd graph, at a point that can differ between
    ranks relative to DDP's own gradient all-reduces on the default group; on a separate
    group the two streams of collectives never interleave out of order."""
    if not _GATHER_GROUP:
        _GATHER_GROUP.append(dist.new_group(backend=dist.get_backend()))
    return _GATHER_GROUP[0]


def _all_gather(x: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous(), group=gather_group())
    return torch.stack(parts)


class _AllGather(torch.autograd.Function):
    """All-gather of equal-shape tensors whose backward returns each rank the sum, over ranks,
    of the gradients with respect to its own slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank = dist.get_rank()
        return _all_gather(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=gather_group())
        return grad[ctx.rank]


def gather_rows(*parts: torch.Tensor) -> list[torch.Tensor]:
    """Rows of each part from every rank, this rank's first and in order, then the others by rank.

    All parts share their trailing shape and travel in one collective (so the backward is
    one collective too). Ranks may hold different numbers of rows. Gradients flow back to
    the owning rank. Every rank must call this the same number of times, and every rank's
    loss must depend on the result (add ``0 * gathered.sum()`` if need be): the backward of a
    gather that requires grad is a collective as well.
    """
    if world_size() == 1:
        return list(parts)
    rank, size = dist.get_rank(), dist.get_world_size()
    local = torch.cat(parts)
    count = torch.tensor([p.size(0) for p in parts], device=local.device)
    counts = [torch.zeros_like(count) for _ in range(size)]
    dist.all_gather(counts, count, group=gather_group())
    counts = [c.tolist() for c in counts]
    rows = max(1, max(sum(c) for c in counts))  # never gather empty tensors
    padded = torch.cat([local, local.new_zeros(rows - local.size(0), *local.shape[1:])])
    gathered = _AllGather.apply(padded) if padded.requires_grad else _all_gather(padded)
    out = []
    for index, part in enumerate(parts):
        pieces = [part]
        for other in range(size):
            if other != rank:
                start = sum(counts[other][:index])
                pieces.append(gathered[other, start : start + counts[other][index]])
        out.append(torch.cat(pieces))
    return out
