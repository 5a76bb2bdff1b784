"""Statistics that tell methods apart: paired bootstrap confidence intervals over questions.

Two runs evaluated on the same questions are compared question by question: the difference of
their per-question scores (a question's correctness, averaged over seeds when runs are pooled)
is resampled with replacement over questions, so the interval reflects which questions were
asked, and the pairing removes the questions' shared difficulty from the noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Interval:
    """A difference and its confidence interval, in the units of the scores (0-1 for accuracy)."""

    estimate: float
    low: float
    high: float
    level: float = 0.95

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def points(self) -> str:
        """As accuracy points: ``+2.4 [+0.6, +4.2]``."""
        return f"{100 * self.estimate:+.1f} [{100 * self.low:+.1f}, {100 * self.high:+.1f}]"


def paired_bootstrap(a: Sequence[float], b: Sequence[float], resamples: int = 10_000, level: float = 0.95, seed: int = 0) -> Interval:
    """Mean of ``a - b`` over questions, and its percentile bootstrap interval: ``resamples``
    means of the differences over questions drawn with replacement (Efron & Tibshirani 1993)."""
    if len(a) != len(b):
        raise ValueError(f"paired scores need the same questions, got {len(a)} and {len(b)}")
    if not a:
        raise ValueError("paired_bootstrap needs at least one question")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    differences = torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randint(len(differences), (resamples, len(differences)), generator=generator)
    means = differences[rows].mean(-1).sort().values
    tail = (1 - level) / 2
    return Interval(differences.mean().item(), quantile(means, tail), quantile(means, 1 - tail), level)


def quantile(sorted_values: torch.Tensor, q: float) -> float:
    """The ``q`` quantile of ascending values, linear between order statistics (numpy's default)."""
    position = q * (len(sorted_values) - 1)
    below, above = math.floor(position), math.ceil(position)
    weight = position - below
    return ((1 - weight) * sorted_values[below] + weight * sorted_values[above]).item()


def standard_error(accuracy: float, questions: int) -> float:
    """Binomial standard error of an accuracy measured on ``questions`` questions."""
    return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / questions)


def pooled_scores(per_seed: Sequence[Sequence[float]]) -> list[float]:
    """Per-question scores averaged over seeds (every seed on the same questions, in order)."""
    if len({len(s) for s in per_seed}) != 1:
        raise ValueError("every seed must be scored on the same questions")
    return [sum(values) / len(values) for values in zip(*per_seed)]


def ratio_interval(a: Sequence[float], b: Sequence[float], resamples: int = 10_000, level: float = 0.95, seed: int = 0) -> Interval:
    """``1 - mean(a) / mean(b)`` (a saving of a against b: 0.3 is 30% less) and its percentile
    bootstrap interval, each group resampled with replacement on its own (unpaired: runs of two
    methods share no unit, e.g. steps to an accuracy over seeds)."""
    if not a or not b:
        raise ValueError("ratio_interval needs at least one value in each group")
    if min(b) <= 0:
        raise ValueError("ratio_interval needs positive values in the reference group")
    generator = torch.Generator().manual_seed(seed)
    ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    ra = ta[torch.randint(len(ta), (resamples, len(ta)), generator=generator)].mean(-1)
    rb = tb[torch.randint(len(tb), (resamples, len(tb)), generator=generator)].mean(-1)
    savings = (1 - ra / rb).sort().values
    tail = (1 - level) / 2
    return Interval(1 - ta.mean().item() / tb.mean().item(), quantile(savings, tail), quantile(savings, 1 - tail), level)
