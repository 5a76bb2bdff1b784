"""PPO with a value head, the ReFT baseline (docs/METHODS.md section 2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lightning_modules.config import require
from lightning_modules.distributed import all_reduce_sum
from lightning_modules.heads import build_head
from lightning_modules.losses import (
    explained_variance,
    gae,
    kl_k1,
    last_token_rewards,
    masked_mean,
    ppo_policy_loss,
    ppo_value_loss,
    whiten,
)
from lightning_modules.rewards import RuleReward
from lightning_modules.rl_base import RLConfig, RLModule
from lightning_modules.rollout import Rewards, Rollout, Rows


@dataclass
class PPOConfig(RLConfig):
    """PPO knobs; defaults are ReFT's (Luong et al. 2024), which CARFT keeps."""

    kl_coef: float = 0.05
    """beta of the per-token k1 KL penalty in the reward (ReFT: 0.05); 0 drops the reference policy."""
    gamma: float = 1.0
    """GAE discount (ReFT: 1.0)."""
    lam: float = 0.95
    """GAE lambda (ReFT: 0.95)."""
    clip_eps: float = 0.2
    """Ratio clip of the policy loss (ReFT: 0.2)."""
    value_clip: float = 0.2
    """Clip of the value prediction around the old value (ReFT: 0.2)."""
    vf_coef: float = 5.0
    """Weight of the value loss (ReFT: 5, tuned with value_loss_norm response)."""
    value_loss_norm: str = "response"
    """How the value loss averages its squared errors: response (each response's token mean, then the mean over responses; ReFT and the CARFT authors) or token (one masked mean over every response token)."""
    whiten_advantages: bool = True
    """Whiten advantages over the response tokens of the global batch (ReFT)."""

    def validate(self) -> None:
        super().validate()
        require(self.kl_coef >= 0, f"algo.kl_coef must be >= 0, got {self.kl_coef}")
        require(0 <= self.gamma <= 1, f"algo.gamma must lie in [0, 1], got {self.gamma}")
        require(0 <= self.lam <= 1, f"algo.lam must lie in [0, 1], got {self.lam}")
        require(self.clip_eps > 0, f"algo.clip_eps must be positive, got {self.clip_eps}")
        require(self.value_clip > 0, f"algo.value_clip must be positive, got {self.value_clip}")
        require(self.vf_coef >= 0, f"algo.vf_coef must be >= 0, got {self.vf_coef}")
        require(self.value_loss_norm in ("response", "token"), f"algo.value_loss_norm must be response or token, got {self.value_loss_norm!r}")


@dataclass
class PPOScores(Rows):
    """What PPO's scoring pass computed, one row per response."""

    logp_old: torch.Tensor
    """[N, T] log-probs of the sampled tokens under the policy that sampled them."""
    values_old: torch.Tensor
    """[N, T] the critic's values at sampling time."""
    advantages: torch.Tensor
    """[N, T] GAE advantages (whitened if ``whiten_advantages``)."""
    returns: torch.Tensor
    """[N, T] the critic's targets, advantages + values_old."""
    rewards: torch.Tensor
    """[N] the reward part's sequence rewards."""


class PPOModule(RLModule):
    name = "ppo"
    Config = PPOConfig
    head_key = "value"

    @property
    def uses_reference(self) -> bool:
        return self.config.algo.kl_coef > 0

    def build_heads(self) -> None:
        self.policy.heads[self.head_key] = build_head("value", self.policy.hidden_size)

    def named_reward(self, name: str):
        return RuleReward()

    def head(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(values [N, T], embeddings [N, T, d] | None)`` at the response positions."""
        values, embeddings = self.policy.heads[self.head_key](hidden)
        return values.float(), (embeddings.float() if embeddings is not None else None)

    def policy_pass(self, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One forward pass of the policy and its value head over the responses: ``(token log-probs
        [N, T], values [N, T], logits [N, T, V])``."""
        logits, hidden = self.forward_responses(self.policy, rollout, hidden=True)
        values, _ = self.head(hidden)
        return self.logprobs(logits, rollout.response_ids), values, logits

    # ---- scoring (no gradient) --------------------------------------------------------------
    def score(self, rollout: Rollout) -> tuple[PPOScores, dict[str, torch.Tensor]]:
        logp_old, values_old, logits = self.policy_pass(rollout)
        return self.ppo_scores(rollout, logits, logp_old, values_old, self.rewards(rollout))

    def ppo_scores(
        self, rollout: Rollout, logits: torch.Tensor, logp_old: torch.Tensor, values_old: torch.Tensor, rewards: Rewards
    ) -> tuple[PPOScores, dict[str, torch.Tensor]]:
        """ReFT's targets: the sequence reward on the last token minus ``kl_coef`` times the k1 KL
        to the reference on every token, then GAE and (global-batch) whitening."""
        mask = rollout.response_mask
        metrics = {**self.rollout_metrics(rollout, logits), **rewards.metrics}
        token_rewards = last_token_rewards(rewards.values, mask)
        if self.uses_reference:
            kl = kl_k1(logp_old, self.logprobs(self.reference_logits(rollout), rollout.response_ids))
            token_rewards = token_rewards - self.algo.kl_coef * kl * mask
            metrics["kl"] = masked_mean(kl, mask)
        advantages, returns = gae(token_rewards, values_old, mask, self.algo.gamma, self.algo.lam)
        if self.algo.whiten_advantages:
            advantages = whiten(advantages, mask, all_reduce=all_reduce_sum)
        metrics["reward"] = rewards.values.mean()
        metrics["explained_variance"] = explained_variance(values_old, returns, mask)
        return PPOScores(logp_old, values_old, advantages, returns, rewards.values), metrics

    # ---- loss (with gradient) -----------------------------------------------------------------
    def loss(self, rollout: Rollout, scores: PPOScores) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logp, values, _ = self.policy_pass(rollout)
        policy_loss, value_loss, metrics = self.ppo_terms(rollout, scores, logp, values)
        return policy_loss + self.algo.vf_coef * value_loss, metrics

    def ppo_terms(
        self, rollout: Rollout, scores: PPOScores, logp: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """The clipped policy loss and the clipped value loss, and their metrics."""
        mask = rollout.response_mask
        policy_loss, clip_frac = ppo_policy_loss(logp, scores.logp_old, scores.advantages, mask, self.algo.clip_eps)
        value_loss = ppo_value_loss(values, scores.values_old, scores.returns, mask, self.algo.value_clip, self.algo.value_loss_norm)
        metrics = {"policy_loss": policy_loss.detach(), "value_loss": value_loss.detach(), "clip_frac": clip_frac}
        return policy_loss, value_loss, metrics
