"""Sampled-evaluation metrics: pass@k and maj@k over several responses per question."""

from __future__ import annotations

import math

from datamodules.answers import is_correct
from lightning_modules.losses import majority_answer


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased chance that at least one of k responses drawn from n (c of them correct) is
    correct: ``1 - C(n - c, k) / C(n, k)`` (Chen et al. 2021), as a stable product."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def majority_correct(predictions: list[float | None], gold: float) -> bool:
    """maj@k for one question: whether the most common extracted answer (ties to the first seen,
    unparsed responses never win) is correct."""
    majority, _ = majority_answer(predictions)
    return majority is not None and is_correct(majority, gold)
