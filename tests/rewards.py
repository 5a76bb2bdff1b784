"""Reward functions that tests name on the command line (``--algo.reward tests.rewards:alternating``)."""

from __future__ import annotations

import torch

SEEN: dict = {}
"""The last rollout each function was called with."""


def alternating(rollout) -> torch.Tensor:
    """0, 1, 0, 1, ...: it differs within every question's samples, so the policy gradient is not
    zero on an untrained model (which earns the rule reward's 0 for no answer everywhere)."""
    SEEN["rollout"] = rollout
    return (torch.arange(len(rollout)) % 2).float()


def answer_length(rollout) -> tuple[list[float], dict]:
    """A reward from the text alone, with a metric of its own: minus the response's length / 100."""
    SEEN["rollout"] = rollout
    lengths = [len(text) for text in rollout.texts]
    return [-n / 100 for n in lengths], {"mean_chars": sum(lengths) / len(lengths)}


def odd_questions_differ(rollout) -> torch.Tensor:
    """Alternating 0, 1 within the samples of odd-numbered questions and all 0 for even ones: only
    odd questions' groups carry a signal, so dynamic sampling drops the others."""
    SEEN["rollout"] = rollout
    odd = (rollout.question % 2 == 1).float()
    return odd * (torch.arange(len(rollout)) % 2).float()
