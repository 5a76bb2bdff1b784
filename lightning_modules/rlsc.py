"""RLSC (spec section 4): reinforcement learning via self-confidence, with no labels.

The training batches carry no answers (``unlabeled``): each question's K samples are scored by
the policy itself. The default loss maximises the chance that two samples agree,
``-(1/K) sum_k (sg(w_k) + alpha) s_k``; the seed's two reward modes (``confidence`` and
``majority``) turn self-confidence into a reward for a group-normalised policy gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lightning_modules.config import require
from lightning_modules.losses import (
    agreement_confidence,
    grpo_advantages,
    majority_agreement,
    reinforce_loss,
    rlsc_loss,
    sequence_logp,
    token_confidence,
)
from lightning_modules.rl_base import RLConfig, RLModule, Rollout


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
    is its group's majority answer, else 0; label-free, TTRL-style)."""
    format_bonus: float = 0.0
    """Seed option for the reward modes: + this if an answer can be extracted, - this if not (seed: alpha = 0.1)."""
    eval_samples: int | None = None
    """Samples per held-out question for val/pass@k and maj@k (null: K; 0: greedy evaluation only)."""

    def validate(self) -> None:
        super().validate()
        require(self.alpha >= 0, f"algo.alpha must be >= 0, got {self.alpha}")
        require(self.weighting in ("paper", "normalized"), f"algo.weighting must be paper or normalized, got {self.weighting!r}")
        require(self.reduction in ("mean", "sum"), f"algo.reduction must be mean or sum, got {self.reduction!r}")
        require(
            self.reward in ("self_confidence", "confidence", "majority"),
            f"algo.reward must be self_confidence, confidence or majority, got {self.reward!r}",
        )
        require(self.format_bonus >= 0, f"algo.format_bonus must be >= 0, got {self.format_bonus}")
        require(
            self.reward == "self_confidence" or self.samples_per_prompt >= 2,
            f"algo.reward {self.reward} normalises rewards over each question's samples, so algo.samples_per_prompt must be >= 2, got {self.samples_per_prompt}",
        )
        require(self.eval_samples is None or self.eval_samples >= 0, f"algo.eval_samples must be >= 0, got {self.eval_samples}")


class RLSCModule(RLModule):
    name = "rlsc"
    Config = RLSCConfig
    train_batches = "unlabeled"  # answers never reach the training step
    progress_metrics = ("train/seq_confidence", "train/majority_share")

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

    def confidence_logp(self, logits: torch.Tensor, response_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """s_k = sum of the response's token log-probs at the scoring temperature (divided by its
        length with ``length_normalize``); ``[N]``."""
        s = sequence_logp(logits, response_ids, mask, self.score_temperature)
        return s / mask.sum(-1).clamp(min=1) if self.algo.length_normalize else s

    # ---- scoring (no gradient) --------------------------------------------------------------
    def score(self, rollout: Rollout) -> None:
        response_ids, mask = rollout["response_ids"], rollout["response_mask"]
        k = self.algo.samples_per_prompt
        logits, _ = self.response_forward(self.policy, rollout["input_ids"], rollout["attention_mask"], response_ids.size(1))
        self.rollout_metrics(rollout, logits)
        s = self.confidence_logp(logits, response_ids, mask)
        confidence = s.exp()
        scaled = logits.float() / self.score_temperature
        rollout.metrics["seq_confidence"] = confidence.mean()
        rollout.metrics["token_confidence"] = token_confidence(scaled, mask).mean()
        rollout.metrics["agreement"] = torch.stack(
            [agreement_confidence(torch.softmax(scaled[i : i + k], -1), mask[i : i + k]) for i in range(0, len(rollout), k)]
        ).mean()
        agrees, shares = majority_agreement(rollout.predictions, k)
        rollout.metrics["majority_share"] = torch.tensor(shares).mean()
        if self.algo.reward == "self_confidence":
            return
        rewards = confidence.clone()
        if self.algo.reward == "majority":
            rewards = rewards * torch.tensor(agrees, device=self.device, dtype=rewards.dtype)
        if self.algo.format_bonus:
            parsed = torch.tensor([p is not None for p in rollout.predictions], device=self.device, dtype=rewards.dtype)
            rewards = rewards + self.algo.format_bonus * (2 * parsed - 1)
        rollout["advantages"] = grpo_advantages(rewards.view(-1, k), "group").view(-1)
        rollout.metrics["reward"] = rewards.mean()

    # ---- loss (with gradient) -----------------------------------------------------------------
    def loss(self, minibatch: Rollout) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        response_ids, mask = minibatch["response_ids"], minibatch["response_mask"]
        logits, _ = self.response_forward(self.policy, minibatch["input_ids"], minibatch["attention_mask"], response_ids.size(1))
        if self.algo.reward == "self_confidence":
            s = self.confidence_logp(logits, response_ids, mask).view(-1, self.algo.samples_per_prompt)
            return rlsc_loss(s, self.algo.alpha, self.algo.weighting, self.algo.reduction), {}
        return reinforce_loss(self.logprobs(logits, response_ids), minibatch["advantages"], mask), {}
