"""RLSC (docs/METHODS.md section 4): reinforcement learning via self-confidence, with no labels.

The training batches carry no answers (``unlabeled``): each question's K samples are scored by
the policy itself. The default loss maximises the chance that two samples agree,
``-(1/K) sum_k (sg(w_k) + alpha) s_k``; the seed's two reward modes (``confidence`` and
``majority``) turn self-confidence into a reward for a group-normalised policy gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from datamodules.answers import majority_agreement
from lightning_modules.config import require
from lightning_modules.losses import (
    agreement_confidence,
    grpo_advantages,
    reinforce_loss,
    rlsc_loss,
    sequence_logp,
    token_confidence,
)
from lightning_modules.rewards import ConfidenceReward
from lightning_modules.rl_base import RLConfig, RLModule
from lightning_modules.rollout import Rollout, Rows, Signals


@dataclass
class RLSCConfig(RLConfig):
    """RLSC knobs; defaults are the paper's (Li et al. 2025, "Confidence is all you need") unless noted."""

    samples_per_prompt: int = 16
    """K, responses per question (RLSC: 16)."""
    temperature: float = 0.5
    """Sampling temperature (RLSC: 0.5); the loss's log-probs use it too unless score_temperature is set."""
    ppo_epochs: int = 1
    """Updates per rollout (RLSC: one gradient step per sampled batch)."""
    alpha: float = 0.1
    """Smoothing added to every sample's weight (RLSC's L2 loss: 0.1; 0 is its L1)."""
    weighting: str = "paper"
    """paper: w_k = sg(exp(s_k)) (RLSC); normalized: sg(softmax over the K samples), usable when exp(s_k) underflows."""
    reduction: str = "mean"
    """mean over the K samples (RLSC's 1/K) or sum over them; both then average over questions."""
    length_normalize: bool = False
    """Divide s_k by the response length (off in RLSC)."""
    reward: str = "self_confidence"
    """self_confidence (the RLSC loss), confidence (the seed's trainer: reward = exp(s_k), normalised
    over the K samples, as a policy-gradient weight) or majority (exp(s_k) if the sample's answer
    is its group's majority answer, else 0; label-free, TTRL-style), or package.module:function (a
    reward from the rollout, which carries no answers here, for the same policy gradient)."""
    format_bonus: float = 0.0
    """Seed option for the reward modes: + this if an answer can be extracted, - this if not (seed: alpha = 0.1)."""
    eval_samples: int | None = None
    """Samples per held-out question for val/pass@k and maj@k (null: K; 0: greedy evaluation only)."""

    def validate(self) -> None:
        super().validate()
        require(self.alpha >= 0, f"algo.alpha must be >= 0, got {self.alpha}")
        require(self.weighting in ("paper", "normalized"), f"algo.weighting must be paper or normalized, got {self.weighting!r}")
        require(self.reduction in ("mean", "sum"), f"algo.reduction must be mean or sum, got {self.reduction!r}")
        require(self.format_bonus >= 0, f"algo.format_bonus must be >= 0, got {self.format_bonus}")
        require(
            self.reward == "self_confidence" or self.samples_per_prompt >= 2,
            f"algo.reward {self.reward} normalises rewards over each question's samples, so algo.samples_per_prompt must be >= 2, got {self.samples_per_prompt}",
        )
        require(self.eval_samples is None or self.eval_samples >= 0, f"algo.eval_samples must be >= 0, got {self.eval_samples}")


@dataclass
class RLSCScores(Rows):
    advantages: torch.Tensor | None = None
    """[N] group-normalised advantages of a reward part; None for the self-confidence loss, which needs nothing from scoring."""


class RLSCModule(RLModule):
    name = "rlsc"
    Config = RLSCConfig
    train_batches = "unlabeled"  # answers never reach the training step
    progress_metrics = ("train/seq_confidence", "train/majority_share")
    rewards_offered = ("self_confidence", "confidence", "majority")

    @property
    def eval_samples(self) -> int:
        samples = self.config.algo.eval_samples
        return self.config.algo.samples_per_prompt if samples is None else samples

    @property
    def eval_temperature(self) -> float:
        return self.config.algo.temperature

    @classmethod
    def group_rows(cls, config) -> int:
        return config.algo.samples_per_prompt  # the loss compares a question's K samples

    def named_reward(self, name: str):
        """None for ``self_confidence``: RLSC's own loss takes the place of a reward."""
        if name == "self_confidence":
            return None
        return ConfidenceReward(majority_only=name == "majority", format_bonus=self.algo.format_bonus)

    def confidence_logp(self, logits: torch.Tensor, response_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """s_k = sum of the response's token log-probs at the scoring temperature (divided by its
        length with ``length_normalize``); ``[N]``."""
        s = sequence_logp(logits, response_ids, mask, self.score_temperature)
        return s / mask.sum(-1).clamp(min=1) if self.algo.length_normalize else s

    # ---- scoring (no gradient) --------------------------------------------------------------
    def score(self, rollout: Rollout) -> tuple[RLSCScores, dict[str, torch.Tensor]]:
        mask, k = rollout.response_mask, rollout.group
        logits, _ = self.forward_responses(self.policy, rollout)
        metrics = self.rollout_metrics(rollout, logits)
        s = self.confidence_logp(logits, rollout.response_ids, mask)
        scaled = logits.float() / self.score_temperature
        metrics["seq_confidence"] = s.exp().mean()
        metrics["token_confidence"] = token_confidence(scaled, mask).mean()
        metrics["agreement"] = torch.stack(
            [agreement_confidence(torch.softmax(scaled[i : i + k], -1), mask[i : i + k]) for i in range(0, len(rollout), k)]
        ).mean()
        _, shares = majority_agreement(rollout.predictions, k)
        metrics["majority_share"] = torch.tensor(shares).mean()
        if self.reward is None:
            return RLSCScores(), metrics
        rewards = self.rewards(rollout, Signals(seq_logp=s))
        metrics |= rewards.metrics
        metrics["reward"] = rewards.values.mean()
        return RLSCScores(grpo_advantages(rewards.values.view(-1, k), "group").view(-1)), metrics

    # ---- loss (with gradient) -----------------------------------------------------------------
    def loss(self, rollout: Rollout, scores: RLSCScores) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        response_ids, mask = rollout.response_ids, rollout.response_mask
        logits, _ = self.forward_responses(self.policy, rollout)
        if scores.advantages is None:
            s = self.confidence_logp(logits, response_ids, mask).view(-1, rollout.group)
            return rlsc_loss(s, self.algo.alpha, self.algo.weighting, self.algo.reduction), {}
        return reinforce_loss(self.logprobs(logits, response_ids), scores.advantages, mask), {}
