"""PPO with a value head (spec section 2), the ReFT baseline."""

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
    rule_reward,
    whiten,
)
from lightning_modules.rl_base import RLConfig, RLModule, Rollout


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
    """Weight of the value loss (ReFT: 5)."""
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


class PPOModule(RLModule):
    name = "ppo"
    Config = PPOConfig
    head_key = "value"

    @property
    def uses_reference(self) -> bool:
        return self.config.algo.kl_coef > 0

    def build_heads(self) -> None:
        self.policy.heads[self.head_key] = build_head("value", self.policy.hidden_size)

    def head(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(values [N, T], embeddings [N, T, d] | None)`` at the response positions."""
        values, embeddings = self.policy.heads[self.head_key](hidden)
        return values.float(), (embeddings.float() if embeddings is not None else None)

    # ---- scoring (no gradient) --------------------------------------------------------------
    def score(self, rollout: Rollout) -> None:
        response_ids, mask = rollout["response_ids"], rollout["response_mask"]
        logits, hidden = self.response_forward(self.policy, rollout["input_ids"], rollout["attention_mask"], response_ids.size(1), hidden=True)
        rollout["logp_old"] = self.logprobs(logits, response_ids)
        rollout["values_old"], embeddings = self.head(hidden)
        self.rollout_metrics(rollout, logits)
        self.annotate(rollout, embeddings)

        rewards = self.sequence_rewards(rollout)
        token_rewards = last_token_rewards(rewards, mask)
        if self.uses_reference:
            logits_ref = self.reference_logits(rollout["input_ids"], rollout["attention_mask"], response_ids.size(1))
            kl = kl_k1(rollout["logp_old"], self.logprobs(logits_ref, response_ids))
            token_rewards = token_rewards - self.algo.kl_coef * kl * mask
            rollout.metrics["kl"] = masked_mean(kl, mask)
        advantages, returns = gae(token_rewards, rollout["values_old"], mask, self.algo.gamma, self.algo.lam)
        if self.algo.whiten_advantages:
            advantages = whiten(advantages, mask, all_reduce=all_reduce_sum)
        rollout["advantages"], rollout["returns"], rollout["rewards"] = advantages, returns, rewards
        rollout.metrics["reward"] = rewards.mean()
        rollout.metrics["explained_variance"] = explained_variance(rollout["values_old"], returns, mask)

    def annotate(self, rollout: Rollout, embeddings: torch.Tensor | None) -> None:
        """Hook for what a subclass computes from the scoring pass (CARFT's representations)."""

    def sequence_rewards(self, rollout: Rollout) -> torch.Tensor:
        """Rule reward per response (1 / 0.1 / 0, spec section 0)."""
        gold = rollout["answer"].tolist()
        return torch.tensor([rule_reward(p, g) for p, g in zip(rollout.predictions, gold)], device=self.device)

    # ---- loss (with gradient) -----------------------------------------------------------------
    def loss(self, minibatch: Rollout) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        response_ids = minibatch["response_ids"]
        logits, hidden = self.response_forward(self.policy, minibatch["input_ids"], minibatch["attention_mask"], response_ids.size(1), hidden=True)
        logp = self.logprobs(logits, response_ids)
        values, embeddings = self.head(hidden)
        loss, metrics = self.rl_loss(minibatch, logp, values)
        extra, extra_metrics = self.extra_loss(minibatch, values, embeddings)
        return loss + extra, {**metrics, **extra_metrics}

    def rl_loss(self, minibatch: Rollout, logp: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mask = minibatch["response_mask"]
        policy_loss, clip_frac = ppo_policy_loss(logp, minibatch["logp_old"], minibatch["advantages"], mask, self.algo.clip_eps)
        value_loss = ppo_value_loss(values, minibatch["values_old"], minibatch["returns"], mask, self.algo.value_clip)
        metrics = {"policy_loss": policy_loss.detach(), "value_loss": value_loss.detach(), "clip_frac": clip_frac}
        return policy_loss + self.algo.vf_coef * value_loss, metrics

    def extra_loss(self, minibatch: Rollout, values: torch.Tensor, embeddings: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Hook for terms a subclass adds to the PPO loss (CARFT's contrastive loss)."""
        return values.new_zeros(()), {}
